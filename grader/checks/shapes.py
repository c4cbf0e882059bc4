"""shapes.*: every stage of the handout's shape table, for several batch sizes and configurations."""

from __future__ import annotations

import numpy as np

from grader.checks.context import CheckFailed, GradingContext, Outcome
from grader.checks.mapping import LINEAR_OWNERS, find_modules
from grader.spec import ALTERNATIVE, DEFAULT, ViTConfig, component_args, random_input, stage_shapes

BATCHES = (1, 2)


def _shape(values) -> tuple[int, ...] | None:
    return None if values is None else tuple(values)


def _component(ctx: GradingContext, kind: str, attention: bool = False) -> Outcome:
    rows = []
    for config in (DEFAULT, ALTERNATIVE):
        args = component_args(kind, config)
        built = ctx.shared(kind, args)
        for batch in BATCHES:
            x = random_input(kind, config, batch=batch)
            call = f"{kind}({', '.join(map(str, args))}) on {x.shape}"
            reply = ctx.forward(built, x, call, attrs=["attn_weights"] if attention else [])
            got = reply.arrays["y"].shape
            if got != x.shape:
                raise CheckFailed(f"{call}: output {got} != expected {x.shape}")
            if attention and "attr:attn_weights" in reply.arrays:
                n = x.shape[1]
                expected = (batch, config.num_heads, n, n)
                weights = ctx.attention_layout(reply.arrays["attr:attn_weights"], batch, config.num_heads).shape
                if weights != expected:
                    raise CheckFailed(f"{call}: attn_weights {weights} != expected {expected} (B, heads, N, N)")
            rows.append({"call": call, "output": list(got)})
    return Outcome.passed(f"output shapes correct for {len(rows)} cases (2 configurations, batch sizes {BATCHES})",
                          cases=rows)


def check_fnn(ctx: GradingContext) -> Outcome:
    return _component(ctx, "FNN")


def check_self_attention(ctx: GradingContext) -> Outcome:
    return _component(ctx, "SelfAttention", attention=True)


def check_encoder_layer(ctx: GradingContext) -> Outcome:
    return _component(ctx, "TransformerEncoderLayer")


# The stages of the handout's shape table (spec.stage_shapes) that a ViT's module calls show, by the names
# this check's messages and details give them.
OBSERVED_STAGES = {
    "patch split": "patches",
    "patch embedding": "patch_embedding",
    "class token + position embedding": "position_embedding",
    "transformer encoder": "encoder",
    "class token read-out": "class_vector",
    "linear head": "logits",
}


def expected_stages(config: ViTConfig, batch: int) -> dict[str, tuple[int, ...]]:
    """The observed stages' shapes for a configuration and batch size."""
    table = stage_shapes(config, batch)
    return {label: table[stage] for label, stage in OBSERVED_STAGES.items()}


def observed_stages(calls: list[dict], modules: list[dict], layer_class: str, output,
                    params: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple | None]:
    """Read each stage's shape off the module calls recorded by forward hooks (None: not observed).

    Hooks fire when a module returns, so a block's inner calls come before the block's own. The
    encoder's stages come from the TransformerEncoderLayer calls where the design has them, else
    from the first 3-D input after the patch embedding and the last 3-D output before the head.
    """
    layers = find_modules(modules, layer_class)
    outside = [c for c in calls if not any(c["name"] == name or c["name"].startswith(f"{name}.") for name in layers)]
    layer_calls = [c for c in calls if c["name"] in layers]
    embed = next((c for c in outside if c["type"] in LINEAR_OWNERS | {"Conv2d"}), None)
    head = next((c for c in reversed(outside) if c["type"] in LINEAR_OWNERS), None)
    head = head if head is not embed else None
    patch_split = patch_embedding = None
    if embed and embed["type"] == "Conv2d" and embed["out"] and len(embed["out"]) == 4:
        b, d, h, w = embed["out"]  # a patch embedding by convolution: (B, D, h, w) is (B, h*w, D)
        weight = (params or {}).get(f"{embed['name']}.weight")
        patch_embedding = (b, h * w, d)
        patch_split = (b, h * w, weight[1] * weight[2] * weight[3]) if weight and len(weight) == 4 else None
    elif embed:
        patch_split, patch_embedding = _shape(embed["in"]), _shape(embed["out"])
    tokens = encoded = None
    if layer_calls:
        tokens, encoded = _shape(layer_calls[0]["in"]), _shape(layer_calls[-1]["out"])
    elif embed:
        after = calls[calls.index(embed) + 1:]
        inside = [c for c in after if not c["name"].startswith(f"{embed['name']}.") and c is not head]
        before_head = inside[: inside.index(head)] if head in inside else inside
        first = next((c for c in before_head if c["in"] and len(c["in"]) == 3), None)
        last = next((c for c in reversed(before_head) if c["out"] and len(c["out"]) == 3), None)
        tokens, encoded = (_shape(first["in"]) if first else None), (_shape(last["out"]) if last else None)
    return {
        "patch split": patch_split,
        "patch embedding": patch_embedding,
        "class token + position embedding": tokens,
        "transformer encoder": encoded,
        "class token read-out": _shape(head["in"]) if head else None,
        "linear head": tuple(output.shape),
    }


def _vit(ctx: GradingContext, config: ViTConfig, batches: tuple[int, ...]) -> Outcome:
    """Every stage must be seen with its shape: a stage the grader cannot observe is not a pass (a ViT that
    returns a right-shaped output after its real forward failed must not pass)."""
    built = ctx.shared("ViT", kwargs=config.kwargs())
    params = {p.name: tuple(p.shape) for p in built.params}
    layers = find_modules(built.modules, "TransformerEncoderLayer")
    table = []
    for batch in batches:
        x = random_input("ViT", config, batch=batch)
        reply = ctx.forward(built, x, f"ViT(**{config.kwargs()}) on {x.shape}", trace=True)
        calls, y = reply.header.get("calls", []), reply.arrays["y"]
        where = f"(input {x.shape}, config {config.kwargs()})"
        if layers and not any(c["name"] in layers for c in calls):
            raise CheckFailed(f"the {len(layers)} TransformerEncoderLayer modules were never called {where}: the "
                              "forward returned without running the encoder")
        if not np.all(np.isfinite(y)):
            raise CheckFailed(f"the output contains NaN or infinity {where}")
        if batch > 1 and y.shape[:1] == (batch,) and ctx.compare(y[1:], np.repeat(y[:1], batch - 1, axis=0)).close:
            raise CheckFailed(f"every image gets the same output {where}: the output does not depend on the input")
        seen = observed_stages(calls, built.modules, "TransformerEncoderLayer", y, params)
        for stage, expected in expected_stages(config, batch).items():
            got = seen[stage]
            table.append({"batch": batch, "stage": stage, "expected": list(expected),
                          "received": list(got) if got is not None else "not observed"})
            if got is None:
                raise CheckFailed(f"the {stage} stage could not be observed {where}: no module call shows it, and "
                                  "a stage the grader cannot see is not a pass")
            if got != expected:
                raise CheckFailed(f"{stage} {got} != expected {expected} {where}")
    return Outcome.passed(f"every stage has the expected shape for batch sizes {batches}", stages=table)


def check_vit(ctx: GradingContext) -> Outcome:
    return _vit(ctx, DEFAULT, BATCHES)


def check_vit_config(ctx: GradingContext) -> Outcome:
    return _vit(ctx, ALTERNATIVE, (2,))

