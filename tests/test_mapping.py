"""Mapping by execution: roles read off a trace of parameter use, keyword synonyms, and the worker's trace."""

from __future__ import annotations

import pytest

from grader.checks.context import keyword_renames
from grader.checks.mapping import MappingError, Param, trace_layout, traced_layer_recipes, traced_vit
from grader.spec import ALTERNATIVE, DEFAULT

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


def test_worker_trace_records_parameter_use_in_order_and_materialises_lazy_layers():
    import numpy as np

    from grader.sandbox import Sandbox

    code = ("import torch.nn as nn\n"
            "class FNN(nn.Module):\n"
            "    def __init__(self, d, f):\n"
            "        super().__init__()\n"
            "        self.b = nn.LazyLinear(d)\n"
            "        self.a = nn.LazyLinear(f)\n"
            "        self.norm = nn.LayerNorm(d, eps=1e-6)\n"
            "    def forward(self, x):\n"
            "        return self.b(nn.functional.gelu(self.a(self.norm(x))))\n")
    with Sandbox(code) as sandbox:
        reply = sandbox.request("build", {"handle": "f", "class": "FNN", "args": [8, 12], "kwargs": {},
                                          "probe_shape": [1, 5, 8]}, timeout=60)
        shapes = {p["name"]: p["shape"] for p in reply.header["params"]}
        events = sandbox.request("trace", {"handle": "f"}, {"x": np.zeros((2, 5, 8))}, timeout=60).header["events"]
    assert shapes["a.weight"] == [12, 8] and shapes["b.weight"] == [8, 12]
    assert [e["op"] for e in events] == ["layer_norm", "linear", "linear"]
    assert events[0]["eps"] == pytest.approx(1e-6)
    assert [e["params"][0] for e in events] == ["norm.weight", "a.weight", "b.weight"]
