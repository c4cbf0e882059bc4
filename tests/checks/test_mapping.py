"""grader/checks/mapping.py on its own, in milliseconds: no sandbox, no torch.

Recipes are judged by what they compute: a student's forward pass written in numpy, fed the recipe's
weights, must give the reference's output (and a wrong placement must not). Then mapping by execution:
roles read off a trace of parameter use, and keyword synonyms.
"""

from __future__ import annotations

import numpy as np
import pytest

from grader.checks.context import keyword_renames
from grader.checks.mapping import (
    MappingError,
    Param,
    Recipe,
    Unit,
    assign_roles,
    attention_recipes,
    find_modules,
    fnn_recipes,
    place,
    trace_layout,
    traced_layer_recipes,
    traced_vit,
    weight_units,
)
from grader.spec import ALTERNATIVE, DEFAULT, ViTConfig

D, F = ALTERNATIVE.dim_hidden, ALTERNATIVE.dim_feedforward


def linear(name: str, out: int, inp: int, bias: bool = True) -> list[Param]:
    return [Param(f"{name}.weight", (out, inp), "Linear")] + ([Param(f"{name}.bias", (out,), "Linear")] if bias else [])


def norm(name: str) -> list[Param]:
    return [Param(f"{name}.weight", (D,), "LayerNorm"), Param(f"{name}.bias", (D,), "LayerNorm")]


def layer_trace(prefix: str, eps: float = 1e-5) -> tuple[list[Param], list[dict]]:
    """A pre-norm layer as a timm-style Block would run it: norm1, qkv, proj, norm2, fc1, fc2."""
    params = (norm(f"{prefix}norm1") + linear(f"{prefix}attn.qkv", 3 * D, D, bias=False) + linear(f"{prefix}attn.proj", D, D)
              + norm(f"{prefix}norm2") + linear(f"{prefix}mlp.fc1", F, D) + linear(f"{prefix}mlp.fc2", D, F))
    events = [
        {"op": "layer_norm", "params": [f"{prefix}norm1.weight", f"{prefix}norm1.bias"], "eps": eps},
        {"op": "linear", "params": [f"{prefix}attn.qkv.weight"]},
        {"op": "linear", "params": [f"{prefix}attn.proj.weight", f"{prefix}attn.proj.bias"]},
        {"op": "layer_norm", "params": [f"{prefix}norm2.weight", f"{prefix}norm2.bias"], "eps": eps},
        {"op": "linear", "params": [f"{prefix}mlp.fc1.weight", f"{prefix}mlp.fc1.bias"]},
        {"op": "linear", "params": [f"{prefix}mlp.fc2.weight", f"{prefix}mlp.fc2.bias"]},
    ]
    return params, events


def test_layer_roles_come_from_the_order_of_use_not_the_declaration_order():
    params, events = layer_trace("")
    recipes = traced_layer_recipes(events, list(reversed(params)), ALTERNATIVE)
    parts = recipes[0].parts
    assert (parts["attention"], parts["fnn"], parts["norm1"], parts["norm2"]) == ("attn", "mlp", "norm1", "norm2")
    assert parts["extra_bias"] == "" and parts["missing_bias"] == ""


def test_functional_layer_norm_reads_weight_and_bias_by_argument_position():
    params = [Param("g1", (D,), "Layer"), Param("b1", (D,), "Layer")]
    layout = trace_layout([{"op": "layer_norm", "params": ["g1", "b1"], "eps": 1e-5}], params)
    assert layout.norms[0].weight.name == "g1" and layout.norms[0].bias.name == "b1"


def test_hand_written_norm_module_pairs_its_gain_and_shift():
    params = [Param("ln.gamma", (D,), "LayerNorm"), Param("ln.beta", (D,), "LayerNorm")]
    layout = trace_layout([{"op": "mul", "params": ["ln.gamma"]}, {"op": "add", "params": ["ln.beta"]}], params)
    assert [(n.weight.name, n.bias.name) for n in layout.norms] == [("ln.gamma", "ln.beta")]


def test_extra_norm_in_a_layer_is_named():
    params, events = layer_trace("")
    params += norm("mlp.inner")
    events.insert(4, {"op": "layer_norm", "params": ["mlp.inner.weight", "mlp.inner.bias"], "eps": 1e-5})
    with pytest.raises(MappingError, match="3 LayerNorms .*extra LayerNorms"):
        traced_layer_recipes(events, params, ALTERNATIVE)


def vit_trace(layers: int, shared: bool = False) -> tuple[list[Param], list[dict]]:
    n = ALTERNATIVE.num_patches + 1
    params = linear("patch", D, ALTERNATIVE.dim_patch) + [Param("cls", (1, 1, D), "ViT"), Param("pos", (1, n, D), "ViT")]
    events = [{"op": "linear", "params": ["patch.weight", "patch.bias"]}, {"op": "expand", "params": ["cls"]},
              {"op": "__add__", "params": ["pos"]}]
    for i in range(layers):
        layer_params, layer_events = layer_trace("blocks.0." if shared else f"blocks.{i}.")
        if i == 0 or not shared:
            params += layer_params
        events += layer_events
    params += norm("norm") + linear("head", ALTERNATIVE.num_classes, D)
    events += [{"op": "layer_norm", "params": ["norm.weight", "norm.bias"], "eps": 1e-5},
               {"op": "linear", "params": ["head.weight", "head.bias"]}]
    return params, events


def test_vit_roles_and_layer_modules_from_a_trace():
    params, events = vit_trace(ALTERNATIVE.num_layers)
    traced = traced_vit(events, params, ALTERNATIVE)
    assert [g.prefix for g in traced.layers] == ["blocks.0", "blocks.1"]
    assert traced.patch.weight.name == "patch.weight" and traced.head.weight.name == "head.weight"
    assert [r.parts["columns"] for r in traced.recipes] == ["c, y, x", "y, x, c"]


def test_one_layer_applied_num_layers_times_is_named():
    params, events = vit_trace(ALTERNATIVE.num_layers, shared=True)
    with pytest.raises(MappingError, match="share their weights"):
        traced_vit(events, params, ALTERNATIVE)


def test_a_vit_without_class_token_is_named():
    params, events = vit_trace(ALTERNATIVE.num_layers)
    events = [e for e in events if e["params"] != ["cls"]]
    with pytest.raises(MappingError, match="no class token"):
        traced_vit(events, params, ALTERNATIVE)


def test_keyword_synonyms_rename_only_unambiguous_missing_keywords():
    assert keyword_renames(["num_classes", "dim_embed", "num_heads"]) == {"dim_hidden": "dim_embed"}
    assert keyword_renames(["dim_hidden", "dim"]) == {}
    assert keyword_renames(["dim", "embed_dim"]) == {}  # two candidates: ambiguous, left to fail loudly
    assert DEFAULT.dim_hidden == DEFAULT.dim_feedforward  # why the alternative configuration is needed



# -- recipes judged by what they compute ------------------------------------------------------------
SMALL = ViTConfig(dim_hidden=8, num_heads=2, dim_feedforward=12)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, SMALL.dim_hidden))  # five tokens


def p(name: str, *shape: int, owner: str = "Linear") -> Param:
    return Param(name, shape, owner)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def reference_fnn_state() -> dict[str, np.ndarray]:
    d, f = SMALL.dim_hidden, SMALL.dim_feedforward
    return {"linear1.weight": RNG.normal(size=(f, d)), "linear1.bias": RNG.normal(size=f),
            "linear2.weight": RNG.normal(size=(d, f)), "linear2.bias": RNG.normal(size=d)}


def reference_fnn(ref: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return relu(x @ ref["linear1.weight"].T + ref["linear1.bias"]) @ ref["linear2.weight"].T + ref["linear2.bias"]


def reference_attention_state() -> dict[str, np.ndarray]:
    d = SMALL.dim_hidden
    return {"proj_in.weight": RNG.normal(size=(3 * d, d)), "proj_out.weight": RNG.normal(size=(d, d)),
            "proj_out.bias": RNG.normal(size=d)}


def softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def heads_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(heads, n, dh) each -> (n, heads * dh), heads concatenated in order."""
    out = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])) @ v
    return out.transpose(1, 0, 2).reshape(q.shape[1], -1)


def reference_attention(ref: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The handout's SelfAttention: one fused projection, rows ordered (q/k/v, head, head dim)."""
    h, n = SMALL.num_heads, x.shape[0]
    qkv = (x @ ref["proj_in.weight"].T).reshape(n, 3, h, -1).transpose(1, 2, 0, 3)
    return heads_attention(*qkv) @ ref["proj_out.weight"].T + ref["proj_out.bias"]


def computing(recipes: list[Recipe], ref: dict, student, reference) -> list[str]:
    """The descriptions of the recipes whose weights make the student's forward give the reference's output."""
    expected = reference(ref, X)
    found = []
    for recipe in recipes:
        try:
            got = student(recipe.make(ref), X)
        except (KeyError, ValueError):  # a recipe that leaves a parameter the student uses unset, or misshapes it
            continue
        if np.allclose(got, expected, rtol=1e-10, atol=1e-12):
            found.append(recipe.description)
    return found


def test_weight_units_pair_each_matrix_with_its_bias_and_skip_norms():
    params = [p("fc.weight", 4, 3), p("fc.bias", 4), p("ln.weight", 3, owner="LayerNorm"),
              p("blk.W_o", 3, 3, owner="Attn"), p("blk.b_o", 3, owner="Attn"), p("blk.w1", 3, 4, owner="Attn"),
              p("blk.b1", 4, owner="Attn"), p("blk.b2", 3, owner="Attn"), p("cls", 1, 3, owner="ViT")]
    pairs = {u.weight.name: u.bias and u.bias.name for u in weight_units(params)}
    # cls is a matrix too (raw, no bias); which role it plays is decided by the shapes and the trace.
    assert pairs == {"fc.weight": "fc.bias", "blk.W_o": "blk.b_o", "blk.w1": "blk.b1", "cls": None}


def test_place_fits_linear_and_raw_layouts_and_refuses_the_rest():
    matrix = np.arange(12.0).reshape(4, 3)  # (out, in)
    linear = Unit(p("l.weight", 4, 3), None, 0)
    assert place(matrix, linear, "out_in") is matrix
    assert place(matrix, Unit(p("l.weight", 3, 4), None, 0), "out_in") is None  # nn.Linear is never (in, out)
    raw = Unit(p("w", 3, 4, owner="Mine"), None, 0)
    np.testing.assert_array_equal(place(matrix, raw, "in_out"), matrix.T)  # used as x @ w
    split = Unit(p("w", 3, 2, 2, owner="Mine"), None, 0)  # (in, heads, head dim)
    np.testing.assert_array_equal(place(matrix, split, "in_out"), matrix.T.reshape(3, 2, 2))
    assert place(matrix, Unit(p("w", 5, 3, owner="Mine"), None, 0), "in_out") is None


def test_roles_follow_name_hints_before_declaration_order():
    d, f = SMALL.dim_hidden, SMALL.dim_feedforward
    # Declared down-projection first; square shapes would allow either order, the names decide.
    units = weight_units([p("down.weight", d, d), p("up.weight", d, d)])
    best = assign_roles(units, {"linear1": (d, d), "linear2": (d, d)})[0]
    assert (best["linear1"].weight.name, best["linear2"].weight.name) == ("up.weight", "down.weight")
    unhinted = weight_units([p("a.weight", d, d), p("b.weight", d, d)])
    assert assign_roles(unhinted, {"linear1": (d, d), "linear2": (d, d)})[0]["linear1"].weight.name == "a.weight"
    assert assign_roles(weight_units([p("a.weight", f, f)]), {"linear1": (f, d)}) == []


def test_fnn_of_raw_matrices_used_as_x_at_w_gets_the_reference_weights():
    d, f = SMALL.dim_hidden, SMALL.dim_feedforward
    params = [p("W2", f, d, owner="FNN"), p("b2", d, owner="FNN"), p("W1", d, f, owner="FNN"), p("b1", f, owner="FNN")]

    def student(w, x):
        return relu(x @ w["W1"] + w["b1"]) @ w["W2"] + w["b2"]

    found = computing(fnn_recipes(params, SMALL), reference_fnn_state(), student, reference_fnn)
    assert found and found[0] == "linear1=W1, linear2=W2 (in, out)"


def test_fnn_without_a_bias_is_named_and_a_non_fnn_is_refused():
    d, f = SMALL.dim_hidden, SMALL.dim_feedforward
    recipes = fnn_recipes([p("fc1.weight", f, d), p("fc1.bias", f), p("fc2.weight", d, f)], SMALL)
    assert recipes[0].parts["missing_bias"] == "FNN: linear2 (fc2) has no bias; the handout's nn.Linear has one"
    with pytest.raises(MappingError, match=r"two linear layers .*: fc1.weight \[8, 8\]"):
        fnn_recipes([p("fc1.weight", d, d)], SMALL)


def test_separate_query_key_value_layers_declared_in_any_order():
    d = SMALL.dim_hidden
    names = ["out", "value", "query", "key"]  # declared out of order: the names give the roles
    params = [q for name in names for q in (p(f"{name}.weight", d, d), *([p("out.bias", d)] if name == "out" else []))]

    def student(w, x):
        split = [(x @ w[f"{role}.weight"].T).reshape(len(x), SMALL.num_heads, -1).transpose(1, 0, 2)
                 for role in ("query", "key", "value")]
        return heads_attention(*split) @ w["out.weight"].T + w["out.bias"]

    found = computing(attention_recipes(params, SMALL), reference_attention_state(), student, reference_attention)
    assert found and found[0] == "separate q/k/v projections: q=query, k=key, v=value, out=out"


@pytest.mark.parametrize("layout", ["shd", "hsd", "hds"], ids=["handout", "head-major", "head-major-dim-first"])
def test_fused_projection_with_any_order_of_its_row_axes(layout):
    d, h = SMALL.dim_hidden, SMALL.num_heads
    params = [p("qkv.weight", 3 * d, d), p("proj.weight", d, d), p("proj.bias", d)]
    sizes = {"s": 3, "h": h, "d": d // h}

    def student(w, x):
        rows = (x @ w["qkv.weight"].T).reshape(len(x), *(sizes[a] for a in layout))
        qkv = rows.transpose(0, *(1 + layout.index(a) for a in "shd"))  # (n, s, h, d)
        return heads_attention(*qkv.transpose(1, 2, 0, 3)) @ w["proj.weight"].T + w["proj.bias"]

    found = computing(attention_recipes(params, SMALL), reference_attention_state(), student, reference_attention)
    names = {"s": "q/k/v", "h": "head", "d": "head dim"}
    assert found == [f"fused projection, rows ordered ({', '.join(names[a] for a in layout)}): qkv=qkv, out=proj"]


def test_one_projection_per_head_and_role_by_their_names():
    d, h = SMALL.dim_hidden, SMALL.num_heads
    dh = d // h
    params = [p(f"heads.{i}.{role}.weight", dh, d) for i in range(h) for role in "qkv"]
    params += [p("o.weight", d, d), p("o.bias", d)]

    def student(w, x):
        heads = [[x @ w[f"heads.{i}.{role}.weight"].T for i in range(h)] for role in "qkv"]
        return heads_attention(*(np.stack(r) for r in heads)) @ w["o.weight"].T + w["o.bias"]

    found = computing(attention_recipes(params, SMALL), reference_attention_state(), student, reference_attention)
    assert found and found[0] == "one projection per head and role (by names), out=o"


def test_a_student_computing_something_else_matches_no_recipe():
    d = SMALL.dim_hidden
    params = [p("qkv.weight", 3 * d, d), p("proj.weight", d, d), p("proj.bias", d)]

    def keys_for_values(w, x):  # the weights times the keys, not the values
        q, k, _ = (x @ w["qkv.weight"].T).reshape(len(x), 3, SMALL.num_heads, -1).transpose(1, 2, 0, 3)
        return heads_attention(q, k, k) @ w["proj.weight"].T + w["proj.bias"]

    recipes = attention_recipes(params, SMALL)
    assert len(recipes) == 6  # the six orders of the fused rows' axes, all tried
    assert computing(recipes, reference_attention_state(), keys_for_values, reference_attention) == []


def test_find_modules_keeps_the_outermost_of_a_class():
    modules = [{"name": "blocks", "type": "ModuleList"}, {"name": "blocks.0", "type": "Block"},
               {"name": "blocks.0.inner", "type": "Block"}, {"name": "blocks.1", "type": "Block"}]
    assert find_modules(modules, "Block") == ["blocks.0", "blocks.1"]
