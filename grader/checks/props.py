"""props.*: properties any correct implementation has, whatever its weights."""

from __future__ import annotations

import numpy as np

from grader.checks.context import Built, CheckFailed, GradingContext, Outcome
from grader.spec import DEFAULT, component_args, random_input

SOFTMAX_ATOL = {"float64": 1e-9, "float32": 1e-5}


def _randomized(ctx: GradingContext, kind: str, config, seed: int = 3) -> Built:
    """A student module with seeded random weights (so zero-initialised parameters matter too)."""
    built = ctx.shared(kind, component_args(kind, config), config.kwargs() if kind == "ViT" else {})
    ctx.randomize(built, seed)
    return built


def _require_shape(y: np.ndarray, expected: tuple[int, ...], what: str) -> None:
    """Comparisons of empty or NaN arrays hold vacuously: a property is only tested on a well-formed output."""
    if y.shape != tuple(expected):
        raise CheckFailed(f"{what} {y.shape} != expected {tuple(expected)}")
    if not np.all(np.isfinite(y)):
        raise CheckFailed(f"{what} contains NaN or infinity")


def check_attention_softmax(ctx: GradingContext) -> Outcome:
    config = DEFAULT
    built = _randomized(ctx, "SelfAttention", config)
    x = random_input("SelfAttention", config, batch=2) * 3.0  # larger scores make a missing softmax obvious
    reply = ctx.forward(built, x, "SelfAttention forward", attrs=["attn_weights"])
    weights = ctx.attention_layout(reply.arrays.get("attr:attn_weights"), x.shape[0], DEFAULT.num_heads)
    if weights is None:
        raise CheckFailed("SelfAttention does not store `self.attn_weights` after forward (the handout's heatmap "
                          "reads it)")
    b, n = x.shape[0], x.shape[1]
    expected = (b, config.num_heads, n, n)
    if weights.shape != expected:
        raise CheckFailed(f"attn_weights {weights.shape} != expected {expected} (B, heads, N, N)")
    atol = SOFTMAX_ATOL[ctx.precision]
    if not np.all(np.isfinite(weights)):  # NaN compares false with everything: test it first
        raise CheckFailed(f"attn_weights contains {int(np.sum(~np.isfinite(weights)))} NaN or infinite entries: "
                          "a softmax gives finite weights")
    if weights.min() < -atol:
        raise CheckFailed(f"attn_weights has negative entries (min {weights.min():.3g}): the softmax is missing or "
                          "the weights are stored before it")
    row_sums = weights.sum(axis=-1)
    worst = float(np.abs(row_sums - 1).max())
    if worst > atol * n:
        col_worst = float(np.abs(weights.sum(axis=-2) - 1).max())
        hint = " (columns sum to 1: softmax over the wrong axis)" if col_worst <= atol * n else ""
        raise CheckFailed(f"rows of attn_weights do not sum to 1 over the keys (worst row sum {1 + worst:.6g}){hint}")
    return Outcome.passed("attn_weights is (B, heads, N, N), non-negative, and each row sums to 1",
                          max_row_sum_error=worst)


def check_permutation_equivariance(ctx: GradingContext) -> Outcome:
    config = DEFAULT
    built = _randomized(ctx, "SelfAttention", config)
    x = random_input("SelfAttention", config, batch=2)
    perm = np.random.default_rng(7).permutation(x.shape[1])
    y = ctx.forward(built, x, "SelfAttention forward").arrays["y"]
    _require_shape(y, x.shape, "SelfAttention output")
    y_perm = ctx.forward(built, x[:, perm], "SelfAttention forward").arrays["y"]
    comparison = ctx.compare(y_perm, y[:, perm])
    if not comparison.close:
        raise CheckFailed("permuting the input tokens does not permute the output the same way "
                          f"(max error {comparison.max_abs:.3g}): tokens are mixed by position, not only by attention",
                          )
    return Outcome.passed("SelfAttention(x[:, p]) == SelfAttention(x)[:, p]", **comparison.as_details())


def check_batch_independence(ctx: GradingContext) -> Outcome:
    config = DEFAULT
    built = _randomized(ctx, "ViT", config)
    x = random_input("ViT", config, batch=2)
    together = ctx.forward(built, x, "ViT forward").arrays["y"]
    _require_shape(together, (2, config.num_classes), "ViT output")
    alone = ctx.forward(built, x[:1], "ViT forward on one image").arrays["y"]
    comparison = ctx.compare(together[:1], alone)
    if not comparison.close:
        raise CheckFailed("an image's output depends on the other images in the batch "
                          f"(max difference {comparison.max_abs:.3g}): something mixes across the batch axis")
    return Outcome.passed("an image's output is the same alone and in a batch of 2")


def check_determinism(ctx: GradingContext) -> Outcome:
    config = DEFAULT
    built = _randomized(ctx, "ViT", config)
    x = random_input("ViT", config, batch=1)
    first = ctx.forward(built, x, "ViT forward (eval mode)").arrays["y"]
    _require_shape(first, (1, config.num_classes), "ViT output")
    second = ctx.forward(built, x, "ViT forward (eval mode)").arrays["y"]
    if not np.array_equal(first, second):
        raise CheckFailed(f"two eval-mode forwards of the same input differ (max {np.abs(first - second).max():.3g}): "
                          "randomness (dropout?) is active in eval mode")
    return Outcome.passed("eval-mode output is identical across two runs")
