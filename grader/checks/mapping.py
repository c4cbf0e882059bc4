"""Map reference weights into a student's modules, whatever the student named or split them.

A *recipe* turns the reference state dict of one component into values for the student's own
parameters. For each component we list candidate recipes, most plausible first (names as in the
handout, then role hints in the names, then declaration order); the equivalence check tries them
until one reproduces the reference output, and reports which one did.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from grader.spec import ViTConfig

State = dict[str, np.ndarray]
MAX_CANDIDATES = 64
LINEAR_OWNERS = {"Linear", "LazyLinear", "NonDynamicallyQuantizableLinear"}
ROLE_TOKENS = {
    "q": {"q", "query", "queries", "wq", "toq"},
    "k": {"k", "key", "keys", "wk", "tok"},
    "v": {"v", "value", "values", "wv", "tov"},
    "out": {"out", "o", "wo", "output", "proj", "projection"},
    "qkv": {"qkv", "in", "inproj", "wqkv", "toqkv"},
    "linear1": {"1", "fc1", "linear1", "up", "w1", "hidden", "l1"},
    "linear2": {"2", "fc2", "linear2", "down", "w2", "l2"},
}


class MappingError(Exception):
    """The student's parameters cannot hold the reference weights; the message says why."""


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]
    owner: str  # class name of the module that holds the parameter

    @property
    def prefix(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass
class Recipe:
    description: str
    make: Callable[[State], State]
    parts: dict[str, str] = field(default_factory=dict)  # role -> student module name, where known


@dataclass(frozen=True)
class Unit:
    """A weight matrix (Linear or raw parameter) and its bias, if any."""

    weight: Param
    bias: Param | None
    order: int

    @property
    def is_linear(self) -> bool:
        return self.weight.owner in LINEAR_OWNERS

    @property
    def tokens(self) -> set[str]:
        words = re.split(r"[._\-]+", self.weight.name.lower())
        words = [w for w in words if w not in ("weight", "bias", "")]
        return set(words) | {re.sub(r"\d+", "", w) for w in words} | {w.replace("_", "") for w in words}


def parse_params(raw: list[dict]) -> list[Param]:
    return [Param(p["name"], tuple(p["shape"]), p.get("owner", "")) for p in raw]


def _stem(name: str, drop: set[str]) -> str:
    words = re.split(r"[._]+", name.lower())
    if len(words) == 1:  # `w1` / `b1`: the role letter glued to a number
        words = re.findall(r"[a-z]+|\d+", words[0])
    return "_".join(w for w in words if w and w not in drop)


def _raw_bias(weight: Param, params: list[Param]) -> Param | None:
    """For a raw weight such as `W_o`, the raw 1-D parameter named like it (`b_o`, `bias_o`)."""
    stem = _stem(weight.leaf, {"w", "weight", "weights"})
    found = [p for p in params if len(p.shape) == 1 and p.prefix == weight.prefix and p.owner == weight.owner
             and _stem(p.leaf, {"b", "bias", "biases"}) == stem and p.leaf != weight.leaf]
    return found[0] if len(found) == 1 else None


def weight_units(params: list[Param]) -> list[Unit]:
    """Pair each weight of dimension >= 2 with the bias of the same module (or its raw twin)."""
    by_name = {p.name: p for p in params}
    units = []
    for order, p in enumerate(params):
        if len(p.shape) < 2 or p.owner in ("LayerNorm", "Conv2d"):
            continue
        bias = by_name.get(f"{p.prefix}.bias") if p.prefix and p.leaf == "weight" else None
        if bias is None and p.owner not in LINEAR_OWNERS:
            bias = _raw_bias(p, params)
        units.append(Unit(p, bias, order))
    return units


def place(matrix: np.ndarray, unit: Unit, orientation: str) -> np.ndarray | None:
    """Fit an (out, in) reference matrix into the unit's weight shape, or None if it cannot hold it."""
    shape = unit.weight.shape
    out_dim, in_dim = matrix.shape
    if unit.is_linear or orientation == "out_in":
        if shape == (out_dim, in_dim):
            return matrix
        if not unit.is_linear and shape[-1] == in_dim and math.prod(shape[:-1]) == out_dim:
            return matrix.reshape(shape)
        return None
    # raw parameter used as x @ W: (in, out), possibly with the out axis split (e.g. (D, heads, Dh))
    if shape[0] == in_dim and math.prod(shape[1:]) == out_dim:
        return np.ascontiguousarray(matrix.T).reshape(shape)
    return None


def _fill(unit: Unit, matrix: np.ndarray, bias: np.ndarray | None, orientation: str, out: State) -> bool:
    placed = place(matrix, unit, orientation)
    if placed is None:
        return False
    out[unit.weight.name] = placed
    if unit.bias is not None:
        value = bias if bias is not None else np.zeros(matrix.shape[0])
        if value.size != math.prod(unit.bias.shape):
            return False
        out[unit.bias.name] = value.reshape(unit.bias.shape)
    return True


def _hint_score(assignment: dict[str, Unit]) -> int:
    return sum(role in ("q", "k", "v", "out", "qkv", "linear1", "linear2") and bool(unit.tokens & ROLE_TOKENS[role])
               for role, unit in assignment.items())


def _inversions(assignment: dict[str, Unit], role_order: list[str]) -> int:
    orders = [assignment[r].order for r in role_order if r in assignment]
    return sum(a > b for a, b in itertools.combinations(orders, 2))


def assign_roles(units: list[Unit], roles: dict[str, tuple[int, int]]) -> list[dict[str, Unit]]:
    """Injective role -> unit assignments consistent with shapes, most plausible first."""
    role_names = list(roles)
    options = {}
    for role, (out_dim, in_dim) in roles.items():
        probe = np.zeros((out_dim, in_dim))
        options[role] = [u for u in units if any(place(probe, u, o) is not None for o in ("out_in", "in_out"))]
    found = []
    for combo in itertools.product(*(options[r] for r in role_names)):
        if len({id(u) for u in combo}) == len(combo):
            found.append(dict(zip(role_names, combo, strict=True)))
        if len(found) > 5000:
            break
    found.sort(key=lambda a: (-_hint_score(a), _inversions(a, role_names)))
    return found


def _orientations(units: list[Unit]) -> list[str]:
    """Raw parameters may be stored (out, in) or (in, out); Linear weights are always (out, in)."""
    return ["out_in"] if all(u.is_linear for u in units) else ["out_in", "in_out"]


def _describe(assignment: dict[str, Unit]) -> str:
    return ", ".join(f"{role}={unit.weight.prefix or unit.weight.name}" for role, unit in assignment.items())


# -- FNN ------------------------------------------------------------------------------------
def fnn_recipes(params: list[Param], config: ViTConfig) -> list[Recipe]:
    d, f = config.dim_hidden, config.dim_feedforward
    units = weight_units(params)
    recipes = []
    for assignment in assign_roles(units, {"linear1": (f, d), "linear2": (d, f)}):
        for orientation in _orientations(list(assignment.values())):
            def make(ref: State, a=assignment, o=orientation) -> State:
                out: State = {}
                _fill(a["linear1"], ref["linear1.weight"], ref["linear1.bias"], o, out)
                _fill(a["linear2"], ref["linear2.weight"], ref["linear2.bias"], o, out)
                return out
            recipes.append(Recipe(f"{_describe(assignment)} ({orientation.replace('_', ', ')})", make,
                                  {"missing_bias": _missing_bias(assignment, ("linear1", "linear2"), "FNN")}))
    return _finish(recipes, params, "two linear layers (dim_hidden -> dim_feedforward -> dim_hidden)")


def _missing_bias(assignment: dict[str, Unit], roles: tuple[str, ...], where: str) -> str:
    missing = [f"{role} ({assignment[role].weight.prefix or assignment[role].weight.name})" for role in roles
               if role in assignment and assignment[role].bias is None]
    return f"{where}: {', '.join(missing)} has no bias; the handout's nn.Linear has one" if missing else ""


def _extra_bias(units: list[Unit]) -> str:
    found = [u.bias.name for u in units if u.bias is not None]
    return (f"the q/k/v projection has a bias ({', '.join(found[:3])}); the handout's proj_in has none "
            "(bias=False)") if found else ""


def _attention_parts(qkv_units: list[Unit], out: dict[str, Unit], layout: str) -> dict[str, str]:
    missing = _missing_bias(out, ("out",), "SelfAttention")
    return {"layout": layout, "extra_bias": _extra_bias(qkv_units),
            "missing_bias": missing.replace("out (", "the output projection (")}


# -- SelfAttention ----------------------------------------------------------------------------
AXES = {"s": "q/k/v", "h": "head", "d": "head dim"}


def _qkv_blocks(ref: State, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = ref["proj_in.weight"]  # (3D, D), rows ordered (q/k/v, head, head dim)
    return w[:d], w[d : 2 * d], w[2 * d :]


def attention_recipes(params: list[Param], config: ViTConfig) -> list[Recipe]:
    d, h = config.dim_hidden, config.num_heads
    dh = d // h
    units = weight_units(params)
    recipes: list[Recipe] = []

    # 1. One fused projection: the handout's layout or another order of its (q/k/v, head, dim) axes.
    for assignment in assign_roles(units, {"qkv": (3 * d, d), "out": (d, d)}):
        for layout in itertools.permutations("shd"):
            for orientation in _orientations(list(assignment.values())):
                def make(ref: State, a=assignment, lay=layout, o=orientation) -> State:
                    w = ref["proj_in.weight"].reshape(3, h, dh, d)
                    w = w.transpose(*("shd".index(axis) for axis in lay), 3).reshape(3 * d, d)
                    out: State = {}
                    _fill(a["qkv"], w, None, o, out)
                    _fill(a["out"], ref["proj_out.weight"], ref["proj_out.bias"], o, out)
                    return out
                label = "fused projection, rows ordered (" + ", ".join(AXES[x] for x in layout) + ")"
                recipes.append(Recipe(f"{label}: {_describe(assignment)}", make,
                                      _attention_parts([assignment["qkv"]], assignment, label)))

    # 2. Separate Q, K, V projections of the full width.
    for assignment in assign_roles(units, {"q": (d, d), "k": (d, d), "v": (d, d), "out": (d, d)})[:24]:
        for orientation in _orientations(list(assignment.values())):
            def make(ref: State, a=assignment, o=orientation) -> State:
                q, k, v = _qkv_blocks(ref, d)
                out: State = {}
                for role, matrix in (("q", q), ("k", k), ("v", v)):
                    _fill(a[role], matrix, None, o, out)
                _fill(a["out"], ref["proj_out.weight"], ref["proj_out.bias"], o, out)
                return out
            recipes.append(Recipe(f"separate q/k/v projections: {_describe(assignment)}", make,
                                  _attention_parts([assignment[r] for r in "qkv"], assignment,
                                                   "separate q/k/v projections")))

    # 3. One projection per head and role (a Python loop over heads).
    head_units = [u for u in units if any(place(np.zeros((dh, d)), u, o) is not None for o in ("out_in", "in_out"))]
    out_units = [u for u in units if u not in head_units and any(
        place(np.zeros((d, d)), u, o) is not None for o in ("out_in", "in_out"))]
    if len(head_units) == 3 * h and out_units:
        for ordering, roles in _per_head_orderings(head_units, h):
            def make(ref: State, roles=roles, o_unit=out_units[-1]) -> State:
                q, k, v = _qkv_blocks(ref, d)
                blocks = {"q": q, "k": k, "v": v}
                out: State = {}
                for unit, (role, head) in roles.items():
                    _fill(unit, blocks[role][head * dh : (head + 1) * dh], None, "out_in", out)
                _fill(o_unit, ref["proj_out.weight"], ref["proj_out.bias"], "out_in", out)
                return out
            recipes.append(Recipe(f"one projection per head and role ({ordering}), out={out_units[-1].weight.prefix}",
                                  make, _attention_parts(head_units, {"out": out_units[-1]},
                                                         f"one projection per head and role ({ordering})")))
    return _finish(recipes, params, "Q/K/V projections and an output projection")


def _per_head_orderings(units: list[Unit], heads: int) -> list[tuple[str, dict[Unit, tuple[str, int]]]]:
    orderings = []
    hinted = {}
    for u in units:
        roles = [r for r in ("q", "k", "v") if u.tokens & ROLE_TOKENS[r]]
        numbers = re.findall(r"\d+", u.weight.name)
        if len(roles) == 1 and numbers:
            hinted[u] = (roles[0], int(numbers[-1]))
    if len(hinted) == len(units) and len(set(hinted.values())) == len(units):
        orderings.append(("by names", hinted))
    ordered = sorted(units, key=lambda u: u.order)
    orderings.append(("role-major order", {u: ("qkv"[i // heads], i % heads) for i, u in enumerate(ordered)}))
    orderings.append(("head-major order", {u: ("qkv"[i % 3], i // 3) for i, u in enumerate(ordered)}))
    return orderings


# -- TransformerEncoderLayer ----------------------------------------------------------------
def _sub_state(ref: State, prefix: str) -> State:
    start = f"{prefix}."
    return {k[len(start):]: v for k, v in ref.items() if k.startswith(start)}


def _prefixed(state: State, prefix: str) -> State:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def find_modules(modules: list[dict], type_name: str) -> list[str]:
    """Names of the outermost submodules of a given class, in registration order."""
    names = [m["name"] for m in modules if m["type"] == type_name]
    return [n for n in names if not any(n.startswith(f"{o}.") for o in names if o != n)]


def layer_recipes(params: list[Param], modules: list[dict], config: ViTConfig,
                  attention: Recipe, fnn: Recipe, classes: dict[str, str]) -> list[Recipe]:
    attn_names = find_modules(modules, classes["SelfAttention"])
    fnn_names = find_modules(modules, classes["FNN"])
    if len(attn_names) != 1 or len(fnn_names) != 1:
        raise MappingError(
            f"expected TransformerEncoderLayer to hold one {classes['SelfAttention']} and one {classes['FNN']}, "
            f"found {len(attn_names)} and {len(fnn_names)}")
    attn_prefix, fnn_prefix = attn_names[0], fnn_names[0]
    norms = [p for p in params if p.owner == "LayerNorm" and p.leaf == "weight"
             and not p.name.startswith((f"{attn_prefix}.", f"{fnn_prefix}."))]
    if len(norms) != 2:
        raise MappingError(f"expected two LayerNorms in TransformerEncoderLayer, found {len(norms)}")
    recipes = []
    for first, second in (norms, norms[::-1]):
        def make(ref: State, n1=first, n2=second) -> State:
            out = _prefixed(attention.make(_sub_state(ref, "attention")), attn_prefix)
            out |= _prefixed(fnn.make(_sub_state(ref, "fnn")), fnn_prefix)
            for norm, ref_name in ((n1, "norm1"), (n2, "norm2")):
                out[norm.name] = ref[f"{ref_name}.weight"]
                out[f"{norm.prefix}.bias"] = ref[f"{ref_name}.bias"]
            return out
        recipes.append(Recipe(f"attention={attn_prefix}, fnn={fnn_prefix}, norm1={first.prefix}, norm2={second.prefix}",
                              make, {"norm1": first.prefix, "norm2": second.prefix, "layout": layout_key(attention),
                                     **_bias_parts(attention, fnn)}))
    return _finish(recipes, params, "attention, FNN and two LayerNorms")


# -- ViT --------------------------------------------------------------------------------------
def vit_recipe(params: list[Param], modules: list[dict], config: ViTConfig, layer: Recipe,
               classes: dict[str, str]) -> Recipe:
    d, p_size, n = config.dim_hidden, config.patch_size, config.num_patches + 1
    layer_names = find_modules(modules, classes["TransformerEncoderLayer"])
    if len(layer_names) != config.num_layers:
        raise MappingError(f"found {len(layer_names)} {classes['TransformerEncoderLayer']} modules in ViT, "
                           f"expected num_layers = {config.num_layers}")
    outside = [p for p in params if not p.name.startswith(tuple(f"{name}." for name in layer_names))]
    by_name = {p.name: p for p in outside}

    def pick(description: str, condition: Callable[[Param], bool], hint: set[str] | None = None) -> Param:
        found = [p for p in outside if condition(p)]
        if hint and len(found) > 1:
            found = [p for p in found if set(re.split(r"[._]", p.name.lower())) & hint] or found
        if len(found) != 1:
            raise MappingError(f"cannot identify the {description} ({len(found)} candidates)")
        return found[0]

    patch = pick(f"patch embedding (a Linear {3 * p_size**2} -> {d} or a Conv2d)",
                 lambda p: p.leaf == "weight" and (p.shape == (d, 3 * p_size**2) and p.owner in LINEAR_OWNERS
                                                   or p.shape == (d, 3, p_size, p_size)))
    head = pick(f"classification head (a Linear {d} -> {config.num_classes})",
                lambda p: p.leaf == "weight" and p.owner in LINEAR_OWNERS and p.shape == (config.num_classes, d))
    norm = pick("final LayerNorm", lambda p: p.owner == "LayerNorm" and p.leaf == "weight")
    pos = pick(f"position embedding ({n} x {d} values)",
               lambda p: p.owner not in LINEAR_OWNERS | {"LayerNorm"} and math.prod(p.shape) == n * d)
    cls = pick(f"class token ({d} values)",
               lambda p: p.owner not in LINEAR_OWNERS | {"LayerNorm", "Conv2d"} and math.prod(p.shape) == d,
               hint={"cls", "class", "token", "class_token", "cls_token"})

    def make(ref: State) -> State:
        out: State = {}
        for i, name in enumerate(layer_names):
            out |= _prefixed(layer.make(_sub_state(ref, f"layers.{i}")), name)
        out[patch.name] = ref["patch_embed.weight"].reshape(patch.shape)  # Conv2d: (D, 3, P, P) = (D, c*y*x)
        for student, reference in ((patch, "patch_embed"), (head, "linear"), (norm, "norm")):
            if f"{student.prefix}.bias" in by_name:
                out[f"{student.prefix}.bias"] = ref[f"{reference}.bias"]
        out[head.name] = ref["linear.weight"]
        out[norm.name] = ref["norm.weight"]
        out[pos.name] = ref["pos_embed"].reshape(pos.shape)
        out[cls.name] = ref["class_token"].reshape(cls.shape)
        return out

    recipe = Recipe(f"layers={','.join(layer_names)}; patch={patch.prefix}, class token={cls.name}, "
                    f"position={pos.name}, norm={norm.prefix}, head={head.prefix}", make,
                    parts={"patch": patch.prefix, "head": head.prefix, "norm": norm.prefix})
    return _finish([recipe], params, "ViT parameters")[0]


def _finish(recipes: list[Recipe], params: list[Param], what: str) -> list[Recipe]:
    if not recipes:
        shapes = ", ".join(f"{p.name} {list(p.shape)}" for p in params) or "no parameters"
        raise MappingError(f"no way found to hold the reference's {what} in these parameters: {shapes}")
    return recipes[:MAX_CANDIDATES]


# -- mapping by execution ----------------------------------------------------------------------
# Where names and classes do not say which parameter plays which role, the order in which one
# forward pass uses them does: patch projection, class token, position embedding, then per layer
# norm, attention projections, norm, two MLP layers; final norm, head. The worker records every
# torch call that touches a parameter (op_trace); these functions read the roles off that record.
HANDOUT_EPS = 1e-5


@dataclass(frozen=True)
class Norm:
    weight: Param | None
    bias: Param | None
    eps: float | None

    @property
    def params(self) -> list[Param]:
        return [p for p in (self.weight, self.bias) if p is not None]


@dataclass
class LayerGroup:
    """One encoder layer's parameters, by role, as the forward pass used them."""

    norms: list[Norm]
    attention: list[Unit]
    mlp: list[Unit]
    prefix: str  # the module that holds them all ("" when none does)

    @property
    def attention_params(self) -> list[Param]:
        return [p for u in self.attention for p in (u.weight, u.bias) if p is not None]

    @property
    def mlp_params(self) -> list[Param]:
        return [p for u in self.mlp for p in (u.weight, u.bias) if p is not None]


@dataclass
class TraceLayout:
    order: list[Param]  # parameters by first use
    uses: dict[str, int]  # how many calls used each parameter
    norms: list[Norm]
    units: list[Unit]  # weight matrices (Linear, raw, Conv2d) by first use
    others: list[Param]  # neither norm nor matrix: class token, position embedding, stray biases


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    prefix: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return ".".join(prefix) if parts and all(len(p) >= len(prefix) for p in parts) else ""


def trace_layout(events: list[dict], params: list[Param], embedding: Callable[[Param], bool] = lambda p: False
                 ) -> TraceLayout:
    """Sort a module's parameters into norms, weight matrices and the rest (`embedding` ones among them),
    in order of first use."""
    by_name = {p.name: p for p in params}
    order: list[Param] = []
    uses: dict[str, int] = {}
    norms: list[Norm] = []
    in_norm: set[str] = set()
    for event in events:
        names = [n for n in event["params"] if n in by_name]
        for n in names:
            uses[n] = uses.get(n, 0) + 1
            if by_name[n] not in order:
                order.append(by_name[n])
        if event["op"] == "layer_norm" and not set(names) & in_norm:
            if len(names) == 2:  # layer_norm(x, shape, weight, bias, eps): the parameters in argument order
                weight, bias = by_name[names[0]], by_name[names[1]]
            else:
                weight = next((by_name[n] for n in names if by_name[n].leaf != "bias"), None)
                bias = next((by_name[n] for n in names if by_name[n].leaf == "bias"), None)
            norms.append(Norm(weight, bias, event.get("eps")))
            in_norm |= set(names)
    # Norms written by hand (a class of its own with 1-D gain and shift) are recognised by class name.
    for p in order:
        if p.name in in_norm or "norm" not in p.owner.lower() or len(p.shape) != 1:
            continue
        pair = [q for q in params if q.prefix == p.prefix and len(q.shape) == 1 and q.name not in in_norm]
        shifts = [q for q in pair if re.fullmatch(r"(bias|beta|shift|b|b_?\d*)", q.leaf.lower())]
        bias = shifts[0] if len(shifts) == 1 else (pair[1] if len(pair) == 2 else None)
        weight = next((q for q in pair if q is not bias), None)
        norms.append(Norm(weight, bias, None))
        in_norm |= {q.name for q in (weight, bias) if q is not None}
    norms.sort(key=lambda nm: order.index(nm.params[0]) if nm.params else 0)
    rest = [p for p in order if p.name not in in_norm]
    units = [u for u in weight_units([p for p in rest if not embedding(p)]) if u.weight.owner != "Conv2d"]
    units += [Unit(p, by_name.get(f"{p.prefix}.bias"), rest.index(p)) for p in rest if p.owner == "Conv2d"
              and p.leaf == "weight"]
    units.sort(key=lambda u: order.index(u.weight))
    taken = {p.name for u in units for p in (u.weight, u.bias) if p is not None}
    others = [p for p in rest if p.name not in taken]
    return TraceLayout(order, uses, norms, units, others)


def _norm_words(count: int, expected: int) -> str:
    return f"{count} LayerNorm{'s' if count != 1 else ''} (the handout has {expected})"


def layer_group(norms: list[Norm], units: list[Unit], config: ViTConfig, where: str) -> LayerGroup:
    """One encoder layer's roles: the last two matrices are the MLP, the ones before them the attention."""
    if len(norms) != 2:
        extra = "extra LayerNorms" if len(norms) > 2 else "missing LayerNorms"
        raise MappingError(f"{where} uses {_norm_words(len(norms), 2)}: {extra}; the handout normalises the "
                           "attention's input (norm1) and the FNN's input (norm2) only")
    if len(units) < 3:
        raise MappingError(f"{where} uses {len(units)} weight matrices; expected the attention's projections and "
                           "the FNN's two linear layers")
    names = [p.name for u in units for p in (u.weight, u.bias) if p is not None]
    names += [p.name for n in norms for p in n.params]
    return LayerGroup(norms, units[:-2], units[-2:], _common_prefix(names))


def layout_key(recipe: Recipe) -> str:
    return recipe.parts.get("layout", recipe.description.split(":")[0])


def group_recipes(group: LayerGroup, config: ViTConfig, prefer: str = "") -> list[Recipe]:
    """Recipes for one traced layer from the reference layer's state (attention.*, fnn.*, norm1/2.*)."""
    attention = attention_recipes(group.attention_params, config)
    fnn = fnn_recipes(group.mlp_params, config)
    attention.sort(key=lambda r: layout_key(r) != prefer)
    recipes = []
    for a, f in itertools.islice(itertools.product(attention, fnn), 24):
        def make(ref: State, a=a, f=f) -> State:
            out = a.make(_sub_state(ref, "attention")) | f.make(_sub_state(ref, "fnn"))
            for norm, ref_name in zip(group.norms, ("norm1", "norm2"), strict=True):
                if norm.weight is not None:
                    out[norm.weight.name] = ref[f"{ref_name}.weight"].reshape(norm.weight.shape)
                if norm.bias is not None:
                    out[norm.bias.name] = ref[f"{ref_name}.bias"].reshape(norm.bias.shape)
            return out
        parts = {"layout": layout_key(a), "attention": _common_prefix([p.name for p in group.attention_params]),
                 "fnn": _common_prefix([p.name for p in group.mlp_params]), **_bias_parts(a, f),
                 **{key: _norm_module(norm) for key, norm in zip(("norm1", "norm2"), group.norms, strict=True)}}
        recipes.append(Recipe(f"by execution order: attention ({a.description}), fnn ({f.description}), "
                              f"norm1={group.norms[0].params[0].name}, norm2={group.norms[1].params[0].name}",
                              make, parts))
    return recipes


def _norm_module(norm: Norm) -> str:
    """The module a norm's forward hook can observe: a LayerNorm module, not raw parameters used in F.layer_norm."""
    weight = norm.weight
    return weight.prefix if weight is not None and weight.owner == "LayerNorm" and weight.leaf == "weight" else ""


def _bias_parts(*recipes: Recipe) -> dict[str, str]:
    return {key: "; ".join(r.parts[key] for r in recipes if r.parts.get(key))
            for key in ("extra_bias", "missing_bias")}


def traced_layer_recipes(events: list[dict], params: list[Param], config: ViTConfig, prefer: str = "") -> list[Recipe]:
    layout = trace_layout(events, params)
    return group_recipes(layer_group(layout.norms, layout.units, config, "TransformerEncoderLayer"), config, prefer)


def norm_eps(events: list[dict]) -> list[float]:
    """The eps of every layer_norm call the forward made."""
    return [e["eps"] for e in events if e["op"] == "layer_norm" and e.get("eps") is not None]


@dataclass
class TracedViT:
    recipes: list[Recipe]
    layers: list[LayerGroup]
    patch: Unit
    head: Unit


def traced_vit(events: list[dict], params: list[Param], config: ViTConfig, prefer: str = "") -> TracedViT:
    """Map the reference ViT onto a student's ViT by the order in which its forward used the parameters."""
    d, p, n, layers = config.dim_hidden, config.patch_size, config.num_patches + 1, config.num_layers
    sizes = {n * d, (n - 1) * d, d}
    layout = trace_layout(events, params, lambda q: q.owner not in LINEAR_OWNERS | {"Conv2d"}
                          and math.prod(q.shape) in sizes)
    units = layout.units
    if len(units) < 2:
        raise MappingError(f"the forward used {len(units)} weight matrices; expected a patch embedding, the "
                           "layers' projections and a head")
    patch, head = units[0], units[-1]
    if math.prod(patch.weight.shape) != d * config.dim_patch:
        raise MappingError(f"the first weight the forward uses, {patch.weight.name} {list(patch.weight.shape)}, is "
                           f"not a patch embedding ({config.dim_patch} -> {d})")
    if math.prod(head.weight.shape) != d * config.num_classes:
        raise MappingError(f"the last weight the forward uses, {head.weight.name} {list(head.weight.shape)}, is "
                           f"not a classification head ({d} -> {config.num_classes})")
    inner = units[1:-1]
    # A correct ViT uses each layer weight once per forward; one layer applied num_layers times uses it repeatedly.
    if layers > 1 and inner and all(layout.uses.get(u.weight.name, 0) >= 2 for u in inner):
        per_use = layout.uses[inner[0].weight.name]
        raise MappingError(f"the encoder layers share their weights: the same parameters ({inner[0].weight.name}, ...) "
                           f"are used {per_use} times in one forward; the handout builds num_layers = {layers} "
                           "separate layers, each with its own weights")
    cls = [q for q in layout.others if math.prod(q.shape) == d and q.leaf != "bias"]
    pos = [q for q in layout.others if math.prod(q.shape) == n * d]
    if not pos:
        near = [q for q in layout.others if math.prod(q.shape) == (n - 1) * d]
        raise MappingError(
            f"no learned position embedding ({n} x {d} values) is used"
            + (f"; {near[0].name} has {n - 1} x {d} (no position for the class token)" if near else
               ": the position embedding is fixed (e.g. sin-cos) or missing; the handout learns it as an nn.Parameter"))
    if not cls:
        raise MappingError(f"no class token ({d} values) is used: the handout prepends a learned class token and the "
                           "head reads it")
    cls_param = _prefer(cls, {"cls", "class", "token"})
    pos_param = pos[0]
    if len(layout.norms) != 2 * layers + 1:
        raise MappingError(f"the forward uses {_norm_words(len(layout.norms), 2 * layers + 1)}: "
                           f"{'extra' if len(layout.norms) > 2 * layers + 1 else 'missing'} LayerNorms; the handout "
                           f"has norm1 and norm2 in each of the {layers} layers and a final norm")
    if len(inner) % layers:
        raise MappingError(f"the layers use {len(inner)} weight matrices in all, not a multiple of num_layers = {layers}")
    per = len(inner) // layers
    groups = [layer_group(layout.norms[2 * i : 2 * i + 2], inner[i * per : (i + 1) * per], config, f"encoder layer {i}")
              for i in range(layers)]
    final = layout.norms[-1]
    per_layer = [group_recipes(g, config, prefer)[0] for g in groups]
    columns = {"c, y, x": None, "y, x, c": np.arange(3 * p * p).reshape(3, p, p).transpose(1, 2, 0).reshape(-1)}
    recipes = []
    for label, permutation in columns.items():
        if patch.weight.owner == "Conv2d" and permutation is not None:
            continue

        def make(ref: State, permutation=permutation) -> State:
            out: State = {}
            for i, r in enumerate(per_layer):
                out |= r.make(_sub_state(ref, f"layers.{i}"))
            w = ref["patch_embed.weight"] if permutation is None else ref["patch_embed.weight"][:, permutation]
            _fill_any(patch, w, ref["patch_embed.bias"], out)
            _fill_any(head, ref["linear.weight"], ref["linear.bias"], out)
            for param, key in ((final.weight, "norm.weight"), (final.bias, "norm.bias"),
                               (cls_param, "class_token"), (pos_param, "pos_embed")):
                if param is not None:
                    out[param.name] = ref[key].reshape(param.shape)
            return out
        parts = {"patch": _module_of(patch), "head": _module_of(head), "norm": final.params[0].prefix if final.params else "",
                 "columns": label, "layout": layout_key(per_layer[0]), **_bias_parts(*per_layer)}
        recipes.append(Recipe(f"by execution order: patch={patch.weight.name} (patch features {label}), class token="
                              f"{cls_param.name}, position={pos_param.name}, layers={','.join(g.prefix or '?' for g in groups)}, "
                              f"head={head.weight.name}", make, parts))
    return TracedViT(recipes, groups, patch, head)


def _module_of(unit: Unit) -> str:
    return unit.weight.prefix if unit.weight.leaf in ("weight",) else ""


def _prefer(found: list[Param], hint: set[str]) -> Param:
    hinted = [q for q in found if set(re.split(r"[._]", q.name.lower())) & hint]
    return (hinted or found)[0]


def _fill_any(unit: Unit, matrix: np.ndarray, bias: np.ndarray, out: State) -> None:
    """A patch embedding or head: Linear (out, in), Conv2d (out, c, y, x) or a raw (in, out) parameter."""
    shape = unit.weight.shape
    if unit.is_linear or unit.weight.owner == "Conv2d" or shape[0] == matrix.shape[0] and len(shape) > 2:
        out[unit.weight.name] = matrix.reshape(shape)
    elif not _fill(unit, matrix, bias, "in_out" if shape[0] == matrix.shape[1] else "out_in", out):
        raise MappingError(f"{unit.weight.name} {list(shape)} cannot hold a {matrix.shape[1]} -> {matrix.shape[0]} matrix")
    if unit.bias is not None:
        out[unit.bias.name] = bias.reshape(unit.bias.shape)
