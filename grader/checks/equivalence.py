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
from grader.checks.context import Built, CheckFailed, GradingContext, Outcome, Search, Trial
from grader.checks.mapping import (
    HANDOUT_EPS,
    MappingError,
    Recipe,
    attention_recipes,
    find_modules,
    fnn_recipes,
    layer_recipes,
    layout_key,
    norm_eps,
    traced_layer_recipes,
    traced_vit,
    vit_recipe,
)
from grader.sandbox import Reply
from grader.spec import ALTERNATIVE, DEFAULT, KINDS, component_args

CLASSES = {name: name for name in KINDS}


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
    if kind in ctx.equivalence.searches:
        return ctx.equivalence.searches[kind]
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
            stored = ctx.attention_layout(reply.arrays.get("attr:attn_weights"), x.shape[0], DEFAULT.num_heads)
            trial.weights = ctx.compare(stored, extras["attn_weights"]) if stored is not None else None
        trials.append(trial)
        if trial.output.close:
            break
    if not trials:
        raise CheckFailed(f"{kind}: none of the {len(recipes)} weight mappings fits its parameters")
    ctx.equivalence.searches[kind] = Search(built, trials, state, x)
    return ctx.equivalence.searches[kind]


def _verdict(ctx: GradingContext, kind: str, search: Search) -> Outcome:
    tried = len(search.trials)
    if search.match and search.match.recipe.parts.get("extra_bias"):
        return Outcome.failed(f"{kind} computes another function family: {search.match.recipe.parts['extra_bias']} "
                              "(it matches the reference only with that bias set to zero)",
                              mapping=search.match.recipe.description, mappings_tried=tried)
    if search.match:
        problem = (fnn_width_problem(ctx) if kind == "FNN" else None) or alternative_problem(ctx, kind, search.match.recipe)
        if problem:
            return Outcome.failed(problem if kind == "FNN" and problem.startswith("FNN(") else f"{kind}: {problem}",
                                  mapping=search.match.recipe.description)
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
    missing_bias = best.recipe.parts.get("missing_bias")
    reason = f"likely bug: {likely}" if likely else f"likely bug: {missing_bias}" if missing_bias else \
        best.output.message or f"max error {best.output.max_abs:.3g}"
    return Outcome.failed(f"{kind} output differs from the reference ({reason}); {tried} weight mapping(s) tried, "
                          f"closest: {best.recipe.description}",
                          mapping=best.recipe.description, mappings_tried=tried, diagnosis=likely,
                          precision=ctx.precision, **best.output.as_details())


def _sizes(kind: str) -> str:
    config = ALTERNATIVE
    names = {"FNN": ("dim_hidden", "dim_feedforward"), "SelfAttention": ("dim_hidden", "num_heads"),
             "TransformerEncoderLayer": ("dim_hidden", "num_heads", "dim_feedforward")}.get(kind, tuple(config.kwargs()))
    return ", ".join(f"{name}={getattr(config, name)}" for name in names)


def _alternative_recipes(ctx: GradingContext, kind: str, built: Built, x: np.ndarray, default: Recipe | None
                         ) -> list[Recipe]:
    """Candidate mappings at the ALTERNATIVE configuration, built as at the default one."""
    prefer = layout_key(default) if default is not None else ""
    if kind == "FNN":
        return fnn_recipes(built.params, ALTERNATIVE)
    if kind == "SelfAttention":
        return attention_recipes(built.params, ALTERNATIVE)
    if kind == "TransformerEncoderLayer":
        parts = []
        for part in ("SelfAttention", "FNN"):
            alternative_problem(ctx, part, search=None)
            parts.append(ctx.equivalence.alternative_recipes.get(part))
        try:
            if None in parts:
                raise MappingError("the components have no mapping at these sizes")
            return layer_recipes(built.params, built.modules, ALTERNATIVE, parts[0], parts[1], CLASSES)
        except MappingError:
            return traced_layer_recipes(ctx.trace(built, x, "TransformerEncoderLayer forward"), built.params,
                                        ALTERNATIVE, prefer)
    layer = ctx.equivalence.alternative_recipes.get("TransformerEncoderLayer")
    try:
        if layer is None:
            raise MappingError("no layer mapping")
        recipe = vit_recipe(built.params, built.modules, ALTERNATIVE, layer, CLASSES)
        return [recipe, channel_last(recipe, ALTERNATIVE)]
    except MappingError:
        return traced_vit(ctx.trace(built, x, "ViT forward"), built.params, ALTERNATIVE, prefer).recipes


def alternative_problem(ctx: GradingContext, kind: str, search: Recipe | None) -> str | None:
    """Run `kind` at the ALTERNATIVE configuration, where every size differs from every other, with the
    mapping that matched at the default one (rebuilt for these sizes). At the default configuration
    dim_feedforward == dim_hidden, so a swapped or ignored size argument can only show here.
    Returns None when it matches (or the expected values have nothing for it), else what differs."""
    problems = ctx.equivalence.alternative_problems
    if kind in problems:
        return problems[kind]
    problems[kind] = None
    expected, state = ctx.expected.alternative_output(kind), ctx.expected.alternative_weights(kind)
    if expected is None or state is None:
        return None
    x = ctx.expected.alternative_inputs(kind)
    built = (ctx.shared("ViT", kwargs=ALTERNATIVE.kwargs()) if kind == "ViT"
             else ctx.shared(kind, component_args(kind, ALTERNATIVE)))
    try:
        recipes = _alternative_recipes(ctx, kind, built, x, search)
    except MappingError as exc:
        problems[kind] = f"at {_sizes(kind)} (every size different) the weights cannot be mapped: {exc}"
        return problems[kind]
    if search is not None:
        recipes.sort(key=lambda r: r.description != search.description)
    best = None
    for recipe in recipes[:16]:
        _, reply = _try(ctx, built, recipe, state, x, f"{kind} forward at {_sizes(kind)}")
        if reply is None:
            continue
        output = ctx.compare(reply.arrays["y"], expected)
        if output.close:
            ctx.equivalence.alternative_recipes[kind] = recipe
            return None
        best = best if best is not None and best.max_abs <= output.max_abs else output
        ctx.equivalence.alternative_recipes.setdefault(kind, recipe)
    error = (best.message or f"max error {best.max_abs:.3g}") if best else "no mapping fits its parameters"
    problems[kind] = (f"it matches the reference at the default sizes but not at {_sizes(kind)}, where every size "
                      f"differs ({error}): a size argument is ignored, swapped or hard-coded")
    return problems[kind]


def _parts_differ(ctx: GradingContext, *kinds: str) -> bool:
    """Whether a part already fails at the ALTERNATIVE configuration (its own check charges for it)."""
    return any(ctx.equivalence.alternative_problems.get(kind) for kind in kinds)


def fnn_width_problem(ctx: GradingContext) -> str | None:
    """At the default configuration dim_feedforward == dim_hidden, so an FNN that ignores dim_feedforward
    matches there: its layers must also hold the reference's at a configuration where every size differs."""
    args = component_args("FNN", ALTERNATIVE)
    built = ctx.shared("FNN", args)
    try:
        fnn_recipes(built.params, ALTERNATIVE)
    except MappingError:
        shapes = ", ".join(f"{p.name} {list(p.shape)}" for p in built.params if len(p.shape) >= 2)
        return (f"FNN({args[0]}, {args[1]}) has weights {shapes}: the hidden layer's width is not dim_feedforward = "
                f"{args[1]} (dim_feedforward is ignored); the handout's FNN maps dim_hidden -> dim_feedforward -> "
                "dim_hidden")
    return None


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


def norm_placement(ctx: GradingContext, x, arrays: dict, parts: dict, y) -> str | None:
    """Post-norm (norm(x + branch(x))) read off the student's own LayerNorm modules: their first input is not
    the layer's input and the layer returns the second one's output."""
    n1, n2 = parts.get("norm1"), parts.get("norm2")
    first_in, last_out = arrays.get(f"in:{n1}"), arrays.get(f"out:{n2}")
    if first_in is None or last_out is None or _close(ctx, first_in, x):
        return None
    if _close(ctx, y, last_out):
        return ("post-norm: the LayerNorms are applied after each residual addition (x = norm(x + attention(x))); "
                "the handout is pre-norm: x + attention(norm1(x)), then x + fnn(norm2(x))")
    return None


def eps_problem(ctx: GradingContext, built: Built, x, what: str) -> str | None:
    """A LayerNorm eps other than the handout's default, read from one traced forward (asked only on failure)."""
    try:
        eps = sorted(set(norm_eps(ctx.trace(built, x, what))))
    except CheckFailed:
        return None
    other = [e for e in eps if not np.isclose(e, HANDOUT_EPS, rtol=1e-3)]
    return (f"LayerNorm eps={other[0]:g}; the handout's nn.LayerNorm uses the default eps=1e-05"
            if other else None)


def _component_status(ctx: GradingContext) -> tuple[Recipe, Recipe, list[str]]:
    attention, fnn = attention_search(ctx), fnn_search(ctx)
    differing = [name for name, s in (("SelfAttention", attention), ("FNN", fnn)) if s.match is None]
    return attention.recipe, fnn.recipe, differing


def layer_search(ctx: GradingContext) -> dict:
    if ctx.equivalence.layer is not None:
        return ctx.equivalence.layer
    attention, fnn, differing = _component_status(ctx)
    built = ctx.shared("TransformerEncoderLayer", component_args("TransformerEncoderLayer", DEFAULT))
    state, x = ctx.expected.weights("TransformerEncoderLayer"), ctx.expected.inputs("TransformerEncoderLayer")
    expected, _ = ctx.expected.output("TransformerEncoderLayer")
    try:  # fast path: the student's own SelfAttention and FNN inside, found by class
        recipes = layer_recipes(built.params, built.modules, DEFAULT, attention, fnn, CLASSES)
        attn_name = find_modules(built.modules, "SelfAttention")[0]
        fnn_name = find_modules(built.modules, "FNN")[0]
    except MappingError:  # otherwise by what the forward pass uses
        events = ctx.trace(built, x, "TransformerEncoderLayer forward")
        try:
            recipes = traced_layer_recipes(events, built.params, DEFAULT, prefer=layout_key(attention))
        except MappingError as exc:
            raise CheckFailed(f"TransformerEncoderLayer: {exc}") from None
        attn_name, fnn_name = recipes[0].parts["attention"], recipes[0].parts["fnn"]
    capture = [name for name in (attn_name, fnn_name, recipes[0].parts.get("norm1"), recipes[0].parts.get("norm2"))
               if name]
    results = []
    for recipe in recipes:
        values, reply = _try(ctx, built, recipe, state, x, "TransformerEncoderLayer forward", capture=capture)
        if reply is None:
            continue
        a = reply.arrays
        captured = {"a_in": a.get(f"in:{attn_name}"), "a_out": a.get(f"out:{attn_name}"),
                    "f_in": a.get(f"in:{fnn_name}"), "f_out": a.get(f"out:{fnn_name}")}
        norm1 = (state["norm1.weight"], state["norm1.bias"])
        norm2 = (state["norm2.weight"], state["norm2.bias"])
        wiring = layer_wiring(ctx, x, captured, reply.arrays["y"], norm1, norm2)
        placement = norm_placement(ctx, x, reply.arrays, recipe.parts, reply.arrays["y"])
        results.append({"recipe": recipe, "output": ctx.compare(reply.arrays["y"], expected), "wiring": wiring,
                        "placement": placement})
        if results[-1]["output"].close:
            break
    ctx.equivalence.layer = {"results": results, "differing": differing,
                             "placement": results[0]["placement"] if results else None}
    return ctx.equivalence.layer


def check_encoder_layer(ctx: GradingContext) -> Outcome:
    found = layer_search(ctx)
    results, differing = found["results"], found["differing"]
    if not results:
        raise CheckFailed("TransformerEncoderLayer: no weight mapping fits its parameters")
    for r in results:
        if r["output"].close and not _parts_differ(ctx, "SelfAttention", "FNN") and (
                problem := alternative_problem(ctx, "TransformerEncoderLayer", r["recipe"])):
            return Outcome.failed(f"TransformerEncoderLayer: {problem}", mapping=r["recipe"].description)
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
    reason = found.get("placement") or reason
    eps = eps_problem(ctx, ctx.shared("TransformerEncoderLayer", component_args("TransformerEncoderLayer", DEFAULT)),
                      ctx.expected.inputs("TransformerEncoderLayer"), "TransformerEncoderLayer forward")
    if eps:
        reason = f"{eps}; {reason}"
    return Outcome.failed(f"TransformerEncoderLayer differs from the reference: {reason}",
                          mapping=first["recipe"].description, wiring=first["wiring"], **first["output"].as_details())


# -- ViT ------------------------------------------------------------------------------------
@dataclass
class VitMapping:
    """How the reference ViT's weights go into the student's ViT, and where its stages can be observed."""

    recipes: list[Recipe]  # most plausible first
    layers: list[str]  # the encoder layers' module names ("" where no module holds a layer)
    traced: bool


def vit_mapping(ctx: GradingContext, built: Built, prefer: Recipe | None = None) -> VitMapping:
    """The candidate mappings of the reference ViT into `built` (a student ViT in the default configuration):
    by names and classes where they say it, else by the order in which one forward uses the parameters.
    Raises CheckFailed naming what was found where no mapping can hold the reference's weights."""
    try:
        recipe = vit_recipe(built.params, built.modules, DEFAULT, prefer, CLASSES) if prefer else None
    except MappingError:
        recipe = None
    if recipe is not None:
        return VitMapping([recipe, channel_last(recipe, DEFAULT)], find_modules(built.modules, "TransformerEncoderLayer"),
                          traced=False)
    events = ctx.trace(built, ctx.expected.inputs("ViT"), "ViT forward")
    try:
        traced = traced_vit(events, built.params, DEFAULT, prefer=layout_key(prefer) if prefer else "")
    except MappingError as exc:
        raise CheckFailed(f"ViT: {exc}") from None
    return VitMapping(traced.recipes, [g.prefix for g in traced.layers], traced=True)


def matching_vit_recipe(ctx: GradingContext) -> Recipe | None:
    """The mapping under which the student's default ViT computes the reference's logits, if any (cached).

    For checks that reuse the student's trained weights with the reference's function."""
    result = vit_search(ctx)
    return result["recipe"] if result["output"].close else None


def vit_search(ctx: GradingContext) -> dict:
    if ctx.equivalence.vit is not None:
        return ctx.equivalence.vit
    try:
        layer = layer_search(ctx)
    except CheckFailed:  # the layer class alone cannot be mapped: the ViT is mapped by its own trace
        layer = {"results": []}
    usable = [r for r in layer["results"] if r["output"].close or r["wiring"] is None] or layer["results"]
    layer_recipe = usable[0]["recipe"] if usable else None
    built = ctx.shared("ViT", kwargs=DEFAULT.kwargs())
    state, x = ctx.expected.weights("ViT"), ctx.expected.inputs("ViT")
    stages = ctx.expected.vit_stages()
    mapping = vit_mapping(ctx, built, layer_recipe)
    capture_layers = [name for name in mapping.layers if name]
    first = None
    for recipe in mapping.recipes:
        capture = [n for n in (recipe.parts.get("patch"), recipe.parts.get("head"), *capture_layers) if n]
        _, reply = _try(ctx, built, recipe, state, x, "ViT forward", capture=capture, trace=True)
        if reply is None:
            continue
        output = ctx.compare(reply.arrays["y"], stages.logits)
        found = {"recipe": recipe, "reply": reply, "output": output, "mapping": mapping,
                 "layer_matches": bool(usable) and usable[0]["output"].close}
        first = first or found
        if output.close:
            first = found
            break
    if first is None:
        raise CheckFailed("ViT: none of the weight mappings fits its parameters")
    ctx.equivalence.vit = first
    return first


def channel_last(recipe: Recipe, config) -> Recipe:
    """The same mapping for patches flattened (y, x, c): the patch embedding's input columns permuted."""
    p = config.patch_size
    columns = np.arange(3 * p * p).reshape(3, p, p).transpose(1, 2, 0).reshape(-1)

    def make(ref):
        return recipe.make({**ref, "patch_embed.weight": ref["patch_embed.weight"][:, columns]})
    return Recipe(f"{recipe.description} (patch features y, x, c)", make, {**recipe.parts, "columns": "y, x, c"})


def check_vit(ctx: GradingContext) -> Outcome:
    found = vit_search(ctx)
    recipe, reply, output, mapping = found["recipe"], found["reply"], found["output"], found["mapping"]
    details = {"mapping": recipe.description, "precision": ctx.precision, **output.as_details()}
    if output.close and not _parts_differ(ctx, "SelfAttention", "FNN", "TransformerEncoderLayer") and (
            problem := alternative_problem(ctx, "ViT", recipe)):
        return Outcome.failed(f"ViT: {problem}", **details)
    if output.close:
        note = ""
        if recipe.parts.get("columns") == "y, x, c":
            note = ("; note: your patches are flattened channel-last (y, x, c), the handout's (c, y, x): the same model "
                    "up to a permutation of the patch embedding's input columns, so it is correct")
        return Outcome.passed(f"matches the reference (max error {output.max_abs:.2g}){note}", **details)
    state, stages = ctx.expected.weights("ViT"), ctx.expected.vit_stages()
    reply = _observe_container_layers(ctx, found, state)
    stage, problem, verified = locate_divergence(ctx, reply, stages, state, recipe.parts.get("patch", ""),
                                                 recipe.parts.get("head", ""), mapping.layers)
    details["diverges_at"] = stage
    eps = eps_problem(ctx, ctx.shared("ViT", kwargs=DEFAULT.kwargs()), ctx.expected.inputs("ViT"), "ViT forward")
    if eps and not verified:
        problem = f"{eps}; {problem}"
    if stage == "encoder layers" and verified and not found["layer_matches"]:
        return Outcome.passed("wired as in the handout (patch split, class token, position embedding, layers in "
                              "order, final norm, class-token read-out and head, each checked on your own values); "
                              "the output differs only inside the encoder layers, reported by equiv.encoder_layer / "
                              "equiv.self_attention / equiv.fnn", **details)
    return Outcome.failed(f"ViT output differs from the reference; first divergence at {stage}: {problem}", **details)


def _observe_container_layers(ctx: GradingContext, found: dict, state) -> Reply:
    """Layers held in containers that are never called themselves (a ModuleList of [PreNorm(attention),
    PreNorm(mlp)]) have no forward hook to observe: a layer's input is then its first called submodule's
    input, and its output the next layer's input or, after the last layer, the final norm's input."""
    reply, layers, recipe = found["reply"], found["mapping"].layers, found["recipe"]
    calls = [c["name"] for c in reply.header.get("calls", [])]
    norm = recipe.parts.get("norm")
    if not layers or not all(layers) or not norm or any(name in calls for name in layers):
        return reply
    entries = [next((c for c in calls if c.startswith(f"{name}.")), None) for name in layers]
    if None in entries:
        return reply
    parts = layers[0].split(".")
    stack = next((".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1) if ".".join(parts[:k]) in calls), "")
    capture = [n for n in (recipe.parts.get("patch"), recipe.parts.get("head"), *entries, norm, stack) if n]
    built = ctx.shared("ViT", kwargs=DEFAULT.kwargs())
    _, again = _try(ctx, built, recipe, state, ctx.expected.inputs("ViT"), "ViT forward", capture=capture, trace=True)
    arrays = dict(again.arrays)
    # After the last layer: the final norm's input if it sees every token, else the stack's output.
    last = again.arrays.get(f"in:{norm}")
    if last is None or last.ndim != 3:
        last = again.arrays.get(f"out:{stack}") if stack else None
    for i, name in enumerate(layers):
        arrays[f"in:{name}"] = again.arrays.get(f"in:{entries[i]}")
        arrays[f"out:{name}"] = again.arrays.get(f"in:{entries[i + 1]}") if i + 1 < len(layers) else last
    if any(value is None for value in arrays.values()):
        return reply
    return Reply({**again.header, "calls": [*again.header["calls"], *({"name": n} for n in layers)]}, arrays)


def locate_divergence(ctx, reply, stages, state, patch_name, head_name, layers) -> tuple[str, str, bool]:
    """The first stage where the student's ViT leaves the reference's path, why, and whether every stage
    after a differing encoder layer was verified on the student's own values (so only the layers differ)."""
    a = reply.arrays
    tol = ctx.tolerance
    patch_in, patch_out = a.get(f"in:{patch_name}"), a.get(f"out:{patch_name}")
    if patch_in is not None and patch_in.ndim == 3 and not _close(ctx, patch_in, stages.patches):
        likely = diagnose.closest(patch_in, ctx.expected.variants("patches"), tol.rtol, tol.atol)
        if likely is None or "channel-last" not in likely:
            return "patch split", likely or f"patches {patch_in.shape} differ from the handout's (B, 64, 48) split", False
    if patch_out is not None and patch_out.ndim == 4:  # Conv2d: (B, D, h, w) -> (B, h*w, D)
        patch_out = patch_out.reshape(patch_out.shape[0], patch_out.shape[1], -1).transpose(0, 2, 1)
    if patch_out is not None and not _close(ctx, patch_out, stages.patch_embed):
        return "patch embedding", "the embedded patches differ from patch_embed(patches)", False
    if not layers or not all(layers):
        return "encoder layers", ("the output differs, and the encoder layers are not modules of their own, so the "
                                  "stage where it first differs cannot be observed"), False
    calls = [c["name"] for c in reply.header.get("calls", []) if c["name"] in layers]
    if not calls:
        return "encoder layers", ("the output differs, and the encoder layers' inputs and outputs cannot be observed "
                                  f"({', '.join(layers[:2])}, ... are never called as modules)"), False
    if calls != layers:
        return "layer order", f"layers were called in the order {calls}, expected each of {layers} once, in order", False
    tokens = a.get(f"in:{layers[0]}")
    if not _close(ctx, tokens, stages.tokens):
        embedded = patch_out if patch_out is not None else stages.patch_embed
        likely = diagnose.closest(tokens, diagnose.token_variants(state, embedded), tol.rtol, tol.atol) \
            if tokens is not None else None
        if tokens is not None and tokens.shape != stages.tokens.shape:
            likely = likely or f"shape {tokens.shape} != expected {stages.tokens.shape}"
        return "class token and position embedding", likely or "the first encoder layer's input differs from " \
            "cat(class_token, patch_embed(patches)) + pos_embed", False
    differing_layer = None
    for i, name in enumerate(layers):
        layer_in, layer_out = a.get(f"in:{name}"), a.get(f"out:{name}")
        if i > 0 and not _close(ctx, layer_in, a.get(f"out:{layers[i - 1]}")):
            return f"encoder layer {i}", f"layer {i} does not receive layer {i - 1}'s output", False
        if differing_layer is not None:
            continue  # off the reference's path: the rest is checked on the student's own values
        expected = ctx.expected.layer_output(i, layer_in)
        if expected is None:
            return f"encoder layer {i}", (f"layer {i}'s input differs from the reference's path, where the "
                                          f"{ctx.expected.source} have no values to compare with"), False
        if not _close(ctx, layer_out, expected):
            differing_layer = i
    last = a.get(f"out:{layers[-1]}")
    head_in = a.get(f"in:{head_name}") if head_name else None
    if head_in is None or last is None:
        return "final norm and class-token read-out", ("the output differs, and the head's input cannot be observed "
                                                       "(the head is not a module of its own)"), False
    expected_head_in = diagnose.layer_norm(last, state["norm.weight"], state["norm.bias"])[:, 0]
    if not _close(ctx, head_in, expected_head_in):
        likely = diagnose.closest(head_in, diagnose.readout_variants(last, state), tol.rtol, tol.atol)
        return "final norm and class-token read-out", likely or "the head's input is not norm(x)[:, 0]", False
    logits = head_in @ state["linear.weight"].T + state["linear.bias"]
    if not _close(ctx, reply.arrays["y"], logits):
        return "classification head", "the logits are not linear(norm(x)[:, 0])", False
    if differing_layer is not None:
        return "encoder layers", (f"layer {differing_layer} differs from a reference layer on the same input; if "
                                  "TransformerEncoderLayer alone matches, check the arguments ViT passes to it"), True
    return "classification head", "every stage matches, yet the logits differ", False
