"""shapes.*: every stage of the handout's shape table, for several batch sizes and configurations."""

from __future__ import annotations

from grader.checks.context import CheckFailed, GradingContext, Outcome
from grader.checks.mapping import LINEAR_OWNERS, find_modules
from grader.spec import ALTERNATIVE, DEFAULT, ViTConfig, component_args, random_input

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


def expected_stages(config: ViTConfig, batch: int) -> dict[str, tuple[int, ...]]:
    """The handout's shape table for a configuration."""
    n, d = config.num_patches, config.dim_hidden
    return {
        "patch split": (batch, n, config.dim_patch),
        "patch embedding": (batch, n, d),
        "class token + position embedding": (batch, n + 1, d),
        "transformer encoder": (batch, n + 1, d),
        "class token read-out": (batch, d),
        "linear head": (batch, config.num_classes),
    }


def observed_stages(calls: list[dict], modules: list[dict], layer_class: str, output) -> dict[str, tuple | None]:
    """Read each stage's shape off the module calls recorded by forward hooks."""
    layers = find_modules(modules, layer_class)
    outside = [c for c in calls if not any(c["name"] == name or c["name"].startswith(f"{name}.") for name in layers)]
    layer_calls = [c for c in calls if c["name"] in layers]
    embed = next((c for c in outside if c["type"] in LINEAR_OWNERS | {"Conv2d"}), None)
    head = next((c for c in reversed(outside) if c["type"] in LINEAR_OWNERS), None)
    stages: dict[str, tuple | None] = {
        "patch split": _shape(embed["in"]) if embed and embed["type"] != "Conv2d" else None,
        "patch embedding": _shape(embed["out"]) if embed and embed["type"] != "Conv2d" else None,
        "class token + position embedding": _shape(layer_calls[0]["in"]) if layer_calls else None,
        "transformer encoder": _shape(layer_calls[-1]["out"]) if layer_calls else None,
        "class token read-out": _shape(head["in"]) if head and head is not embed else None,
        "linear head": tuple(output.shape),
    }
    return stages


def _vit(ctx: GradingContext, config: ViTConfig, batches: tuple[int, ...]) -> Outcome:
    built = ctx.shared("ViT", kwargs=config.kwargs())
    table = []
    for batch in batches:
        x = random_input("ViT", config, batch=batch)
        reply = ctx.forward(built, x, f"ViT(**{config.kwargs()}) on {x.shape}", trace=True)
        seen = observed_stages(reply.header["calls"], built.modules, "TransformerEncoderLayer", reply.arrays["y"])
        for stage, expected in expected_stages(config, batch).items():
            got = seen[stage]
            table.append({"batch": batch, "stage": stage, "expected": list(expected),
                          "received": list(got) if got is not None else "not observable"})
            if got is not None and got != expected:
                raise CheckFailed(f"{stage} {got} != expected {expected} (input {x.shape}, config {config.kwargs()})")
    unobservable = sorted({row["stage"] for row in table if row["received"] == "not observable"})
    note = f"; not observable in this design: {', '.join(unobservable)}" if unobservable else ""
    return Outcome.passed(f"every stage has the expected shape for batch sizes {batches}{note}", stages=table)


def check_vit(ctx: GradingContext) -> Outcome:
    return _vit(ctx, DEFAULT, BATCHES)


def check_vit_config(ctx: GradingContext) -> Outcome:
    return _vit(ctx, ALTERNATIVE, (2,))

