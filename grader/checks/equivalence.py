"""equiv.*: with the reference's random weights mapped in, the student's modules compute its function.

Comparisons run in float64 (float32 when a submission cannot), in eval mode, with the rubric's
tolerances. Each component is judged on its own: the encoder layer's and the ViT's wiring is
checked with the student's own submodules as black boxes, so one bug costs the check it is in,
and a failure message names the stage and, where it recognises one, the mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grader.checks import diagnose
from grader.checks.context import Built, CheckFailed, Comparison, GradingContext, Outcome
from grader.checks.mapping import (
    MappingError,
    Recipe,
    attention_recipes,
    find_modules,
    fnn_recipes,
    layer_recipes,
    vit_recipe,
)
from grader.spec import DEFAULT, component_args

CLASSES = {name: name for name in ("FNN", "SelfAttention", "TransformerEncoderLayer", "ViT")}


@dataclass
class Trial:
    recipe: Recipe
    output: Comparison
    values: dict[str, np.ndarray]
    y: np.ndarray
    weights: Comparison | None = None


@dataclass
class Search:
    """The outcome of trying a component's recipes: the match, or the closest attempt."""

    built: Built
    trials: list[Trial]
    state: dict[str, np.ndarray]
    x: np.ndarray

    @property
    def match(self) -> Trial | None:
        return next((t for t in self.trials if t.output.close), None)

    @property
    def best(self) -> Trial:
        return self.match or min(self.trials, key=lambda t: t.output.max_abs)

    @property
    def recipe(self) -> Recipe:
        return self.best.recipe


def _try(ctx: GradingContext, built: Built, recipe: Recipe, state, x, what: str, **options):
    """Load one recipe's values into fresh random weights and run forward."""
    values = recipe.make(state)
    names = {p.name for p in built.params}
    if not set(values) <= names:
        return None, None
    if set(values) != names:  # parameters the recipe does not cover get fresh random values
        ctx.randomize(built, seed=99)
    ctx.set_params(built, values)
    return values, ctx.forward(built, x, what, **options)


def _search(ctx: GradingContext, kind: str, recipes_for) -> Search:
    """Try the candidate recipes for a component until one reproduces the reference (cached)."""
    key = f"search:{kind}"
    if key in ctx.notes:
        return ctx.notes[key]
    built = ctx.shared(kind, component_args(kind, DEFAULT))
    state, x = ctx.expected.weights(kind), ctx.expected.inputs(kind)
    expected, extras = ctx.expected.output(kind)
    try:
        recipes = recipes_for(built.params, DEFAULT)
    except MappingError as exc:
        raise CheckFailed(f"{kind}: {exc}") from None
    trials = []
    for recipe in recipes:
        values, reply = _try(ctx, built, recipe, state, x, f"{kind} forward",
                             attrs=["attn_weights"] if "attn_weights" in extras else [])
        if reply is None:
            continue
        trial = Trial(recipe, ctx.compare(reply.arrays["y"], expected), values, reply.arrays["y"])
        if "attn_weights" in extras:
            stored = reply.arrays.get("attr:attn_weights")
            trial.weights = ctx.compare(stored, extras["attn_weights"]) if stored is not None else None
        trials.append(trial)
        if trial.output.close:
            break
    if not trials:
        raise CheckFailed(f"{kind}: none of the {len(recipes)} weight mappings fits its parameters")
    ctx.notes[key] = Search(built, trials, state, x)
    return ctx.notes[key]


def _verdict(ctx: GradingContext, kind: str, search: Search) -> Outcome:
    tried = len(search.trials)
    if search.match:
        return Outcome.passed(f"matches the reference (max error {search.match.output.max_abs:.2g}) with mapping: "
                              f"{search.match.recipe.description}",
                              mapping=search.match.recipe.description, mappings_tried=tried,
                              precision=ctx.precision, **search.match.output.as_details())
    best = search.best
    tol = ctx.tolerance
    # The right mapping is not always the closest one when the function is wrong: ask every trial.
    known = ctx.expected.variants(kind)
    likely = next((hit for t in search.trials if (hit := diagnose.closest(t.y, known, tol.rtol, tol.atol))), None)
    reason = f"likely bug: {likely}" if likely else best.output.message or f"max error {best.output.max_abs:.3g}"
    return Outcome.failed(f"{kind} output differs from the reference ({reason}); {tried} weight mapping(s) tried, "
                          f"closest: {best.recipe.description}",
                          mapping=best.recipe.description, mappings_tried=tried, diagnosis=likely,
                          precision=ctx.precision, **best.output.as_details())


def fnn_search(ctx: GradingContext) -> Search:
    return _search(ctx, "FNN", fnn_recipes)


def attention_search(ctx: GradingContext) -> Search:
    return _search(ctx, "SelfAttention", attention_recipes)


def check_fnn(ctx: GradingContext) -> Outcome:
    return _verdict(ctx, "FNN", fnn_search(ctx))


def check_self_attention(ctx: GradingContext) -> Outcome:
    return _verdict(ctx, "SelfAttention", attention_search(ctx))


def check_attention_weights(ctx: GradingContext) -> Outcome:
    search = attention_search(ctx)
    with_weights = [t for t in search.trials if t.weights is not None]
    if not with_weights:
        raise CheckFailed("SelfAttention does not store `self.attn_weights` (B, heads, N, N) after forward")
    matching = next((t for t in with_weights if t.weights.close), None)
    if matching:
        return Outcome.passed(f"attn_weights match the reference's (max error {matching.weights.max_abs:.2g})",
                              mapping=matching.recipe.description, **matching.weights.as_details())
    best = min(with_weights, key=lambda t: t.weights.max_abs)
    return Outcome.failed(f"attn_weights differ from the reference's softmax(q k^T / sqrt(head dim)) "
                          f"({best.weights.message or f'max error {best.weights.max_abs:.3g}'})",
                          mapping=best.recipe.description, **best.weights.as_details())


# -- encoder layer ------------------------------------------------------------------------------
def _close(ctx: GradingContext, a: np.ndarray | None, b: np.ndarray) -> bool:
    return a is not None and ctx.compare(a, b).close


def layer_wiring(ctx: GradingContext, x, captured: dict, y, norm1: tuple, norm2: tuple) -> str | None:
    """Check y = h + fnn(norm2(h)) with h = x + attention(norm1(x)), using the student's own branches.

    Returns None when the wiring is right, else a sentence naming the mistake.
    """
    a_in, a_out, f_in, f_out = (captured.get(k) for k in ("a_in", "a_out", "f_in", "f_out"))
    if a_in is None or a_out is None or f_in is None or f_out is None:
        return "unobservable"
    ln1, ln2 = (lambda v: diagnose.layer_norm(v, *norm1)), (lambda v: diagnose.layer_norm(v, *norm2))
    if not _close(ctx, a_in, ln1(x)):
        if _close(ctx, a_in, x):
            return "the attention receives x itself; the handout applies norm1 first: attention(norm1(x))"
        return "the attention's input is not norm1(x)"
    h = x + a_out
    if not _close(ctx, f_in, ln2(h)):
        if _close(ctx, f_in, ln2(a_out)):
            return "there is no residual connection around the attention: expected x + attention(norm1(x))"
        if _close(ctx, f_in, ln2(ln1(x) + a_out)):
            return "the residual adds the normalised input: expected x + attention(norm1(x)), not norm1(x) + ..."
        if _close(ctx, f_in, h):
            return "the FNN receives x + attention(...) without norm2"
        if _close(ctx, f_in, ln2(x)):
            return "the FNN is fed from the layer's input instead of from x + attention(norm1(x))"
        return "the FNN's input is not norm2(x + attention(norm1(x)))"
    if not _close(ctx, y, h + f_out):
        if _close(ctx, y, f_out):
            return "there is no residual connection around the FNN: expected h + fnn(norm2(h))"
        if _close(ctx, y, ln2(h) + f_out):
            return "the residual around the FNN adds the normalised input norm2(h) instead of h"
        if _close(ctx, y, x + f_out):
            return "the attention branch is dropped from the output: expected h + fnn(norm2(h)) with h = x + attention(...)"
        return "the layer's output is not h + fnn(norm2(h)) with h = x + attention(norm1(x))"
    return None


def _component_status(ctx: GradingContext) -> tuple[Recipe, Recipe, list[str]]:
    attention, fnn = attention_search(ctx), fnn_search(ctx)
    differing = [name for name, s in (("SelfAttention", attention), ("FNN", fnn)) if s.match is None]
    return attention.recipe, fnn.recipe, differing


def layer_search(ctx: GradingContext) -> dict:
    if "layer" in ctx.notes:
        return ctx.notes["layer"]
    attention, fnn, differing = _component_status(ctx)
    built = ctx.shared("TransformerEncoderLayer", component_args("TransformerEncoderLayer", DEFAULT))
    state, x = ctx.expected.weights("TransformerEncoderLayer"), ctx.expected.inputs("TransformerEncoderLayer")
    expected, _ = ctx.expected.output("TransformerEncoderLayer")
    try:
        recipes = layer_recipes(built.params, built.modules, DEFAULT, attention, fnn, CLASSES)
    except MappingError as exc:
        raise CheckFailed(f"TransformerEncoderLayer: {exc}") from None
    attn_name = find_modules(built.modules, "SelfAttention")[0]
    fnn_name = find_modules(built.modules, "FNN")[0]
    results = []
    for recipe in recipes:
        values, reply = _try(ctx, built, recipe, state, x, "TransformerEncoderLayer forward",
                             capture=[attn_name, fnn_name])
        if reply is None:
            continue
        a = reply.arrays
        captured = {"a_in": a.get(f"in:{attn_name}"), "a_out": a.get(f"out:{attn_name}"),
                    "f_in": a.get(f"in:{fnn_name}"), "f_out": a.get(f"out:{fnn_name}")}
        norm1 = (state["norm1.weight"], state["norm1.bias"])
        norm2 = (state["norm2.weight"], state["norm2.bias"])
        wiring = layer_wiring(ctx, x, captured, reply.arrays["y"], norm1, norm2)
        results.append({"recipe": recipe, "output": ctx.compare(reply.arrays["y"], expected), "wiring": wiring})
        if results[-1]["output"].close:
            break
    ctx.notes["layer"] = {"results": results, "differing": differing}
    return ctx.notes["layer"]


def check_encoder_layer(ctx: GradingContext) -> Outcome:
    found = layer_search(ctx)
    results, differing = found["results"], found["differing"]
    if not results:
        raise CheckFailed("TransformerEncoderLayer: no weight mapping fits its parameters")
    for r in results:
        if r["output"].close:
            return Outcome.passed(f"matches the reference (max error {r['output'].max_abs:.2g}) with mapping: "
                                  f"{r['recipe'].description}", mapping=r["recipe"].description,
                                  **r["output"].as_details())
    for r in results:
        if r["wiring"] is None and differing:
            return Outcome.passed(
                f"wired as in the handout (checked with your own {' and '.join(differing)}, which differ from the "
                f"reference; see equiv.{'self_attention' if 'SelfAttention' in differing else 'fnn'})",
                mapping=r["recipe"].description, components_differ=differing)
    first = results[0]
    reason = first["wiring"] if first["wiring"] not in (None, "unobservable") else (
        f"max error {first['output'].max_abs:.3g}")
    return Outcome.failed(f"TransformerEncoderLayer differs from the reference: {reason}",
                          mapping=first["recipe"].description, wiring=first["wiring"], **first["output"].as_details())


# -- ViT ------------------------------------------------------------------------------------
def vit_mapping(ctx: GradingContext) -> tuple[Built, Recipe, bool]:
    """The student's default ViT, the mapping of the reference's weights into it, and whether the encoder
    layer matched the reference (raises CheckFailed when the weights cannot be mapped)."""
    layer = layer_search(ctx)
    usable = [r for r in layer["results"] if r["output"].close or r["wiring"] is None] or layer["results"]
    if not usable:
        raise CheckFailed("ViT: the encoder layer's weights could not be mapped (see equiv.encoder_layer)")
    layer_recipe, layer_matches = usable[0]["recipe"], usable[0]["output"].close
    built = ctx.shared("ViT", kwargs=DEFAULT.kwargs())
    try:
        recipe = vit_recipe(built.params, built.modules, DEFAULT, layer_recipe, CLASSES)
    except MappingError as exc:
        raise CheckFailed(f"ViT: {exc}") from None
    return built, recipe, layer_matches


def check_vit(ctx: GradingContext) -> Outcome:
    built, recipe, layer_matches = vit_mapping(ctx)
    state, x = ctx.expected.weights("ViT"), ctx.expected.inputs("ViT")
    stages = ctx.expected.vit_stages()
    layers = find_modules(built.modules, "TransformerEncoderLayer")
    patch_name, head_name = recipe.parts["patch"], recipe.parts["head"]
    _, reply = _try(ctx, built, recipe, state, x, "ViT forward", capture=[patch_name, head_name, *layers], trace=True)
    output = ctx.compare(reply.arrays["y"], stages.logits)
    details = {"mapping": recipe.description, "precision": ctx.precision, **output.as_details()}
    if output.close:
        return Outcome.passed(f"matches the reference (max error {output.max_abs:.2g})", **details)
    stage, problem = locate_divergence(ctx, reply, stages, state, patch_name, head_name, layers)
    details["diverges_at"] = stage
    if stage == "encoder layers" and not layer_matches:
        return Outcome.passed("wired as in the handout (patch split, class token, position embedding, layers in "
                              "order, final norm, class-token read-out); the output differs only inside the encoder "
                              "layers, reported by equiv.encoder_layer / equiv.self_attention / equiv.fnn", **details)
    return Outcome.failed(f"ViT output differs from the reference; first divergence at {stage}: {problem}", **details)


def locate_divergence(ctx, reply, stages, state, patch_name, head_name, layers) -> tuple[str, str]:
    """The first stage where the student's ViT leaves the reference's path, and why."""
    a = reply.arrays
    tol = ctx.tolerance
    patch_in, patch_out = a.get(f"in:{patch_name}"), a.get(f"out:{patch_name}")
    if patch_in is not None and patch_in.ndim == 3 and not _close(ctx, patch_in, stages.patches):
        likely = diagnose.closest(patch_in, ctx.expected.variants("patches"), tol.rtol, tol.atol)
        return "patch split", likely or f"patches {patch_in.shape} differ from the handout's (B, 64, 48) split"
    if patch_out is not None and patch_out.ndim == 4:  # Conv2d: (B, D, h, w) -> (B, h*w, D)
        patch_out = patch_out.reshape(patch_out.shape[0], patch_out.shape[1], -1).transpose(0, 2, 1)
    if patch_out is not None and not _close(ctx, patch_out, stages.patch_embed):
        return "patch embedding", "the embedded patches differ from patch_embed(patches)"
    calls = [c["name"] for c in reply.header.get("calls", []) if c["name"] in layers]
    if calls != layers:
        return "layer order", f"layers were called in the order {calls}, expected each of {layers} once, in order"
    tokens = a.get(f"in:{layers[0]}")
    if not _close(ctx, tokens, stages.tokens):
        embedded = patch_out if patch_out is not None else stages.patch_embed
        likely = diagnose.closest(tokens, diagnose.token_variants(state, embedded), tol.rtol, tol.atol)
        if tokens is not None and tokens.shape != stages.tokens.shape:
            likely = likely or f"shape {tokens.shape} != expected {stages.tokens.shape}"
        return "class token and position embedding", likely or "the first encoder layer's input differs from " \
            "cat(class_token, patch_embed(patches)) + pos_embed"
    for i, name in enumerate(layers):
        layer_in, layer_out = a.get(f"in:{name}"), a.get(f"out:{name}")
        if i > 0 and not _close(ctx, layer_in, a.get(f"out:{layers[i - 1]}")):
            return f"encoder layer {i}", f"layer {i} does not receive layer {i - 1}'s output"
        expected = ctx.expected.layer_output(i, layer_in)
        if expected is None:
            return f"encoder layer {i}", (f"layer {i}'s input differs from the reference's path, where the "
                                          f"{ctx.expected.source} have no values to compare with")
        if not _close(ctx, layer_out, expected):
            return "encoder layers", (f"layer {i} differs from a reference layer on the same input; if "
                                      "TransformerEncoderLayer alone matches, check the arguments ViT passes to it")
    last = a.get(f"out:{layers[-1]}")
    head_in = a.get(f"in:{head_name}")
    expected_head_in = diagnose.layer_norm(last, state["norm.weight"], state["norm.bias"])[:, 0]
    if not _close(ctx, head_in, expected_head_in):
        likely = diagnose.closest(head_in, diagnose.readout_variants(last, state), tol.rtol, tol.atol) \
            if head_in is not None else None
        return "final norm and class-token read-out", likely or "the head's input is not norm(x)[:, 0]"
    return "classification head", "the logits are not linear(norm(x)[:, 0])"
