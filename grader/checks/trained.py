"""The trained model, judged in the parent: map its trained weights onto the reference and recompute accuracy.

The child returns the trained parameters as raw arrays. Where the student's ViT maps onto the
reference (the weight mappings of `grader.checks.mapping`, confirmed by running the student's own
class with the trained weights on test images), the parent loads the weights into the reference
implementation and computes the test accuracy itself: nothing the child claims about its
predictions enters the verdict.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from grader.checks.mapping import (
    MappingError,
    Param,
    Recipe,
    State,
    attention_recipes,
    find_modules,
    fnn_recipes,
    layer_recipes,
    vit_recipe,
)
from grader.spec import KINDS, ViTConfig

CLASSES = {name: name for name in KINDS}
MAX_MAPPINGS = 256  # candidate weight mappings tried in the parent (each is one small reference forward)


@dataclass
class Mapped:
    """A weight mapping under which the student's trained model computes the reference function."""

    recipe: Recipe
    state: State  # the trained weights as the reference's state dict
    max_error: float


def _inside(params: list[Param], modules: list[dict], prefix: str) -> tuple[list[Param], list[dict]]:
    """The parameters and modules under `prefix`, named relative to it."""
    start = f"{prefix}."
    return ([Param(p.name[len(start):], p.shape, p.owner) for p in params if p.name.startswith(start)],
            [{**m, "name": m["name"][len(start):]} for m in modules if m["name"].startswith(start)])


def vit_recipes(params: list[Param], modules: list[dict], config: ViTConfig) -> list[Recipe]:
    """Candidate mappings of the reference ViT's weights into a student ViT of `config`, most plausible first.

    Built from the component mappings of `grader.checks.mapping`, on the first encoder layer's own
    parameters (every layer has the same structure). Raises MappingError when none can hold them.
    """
    layers = find_modules(modules, CLASSES["TransformerEncoderLayer"])
    if not layers:
        raise MappingError("ViT holds no TransformerEncoderLayer")
    layer_params, layer_modules = _inside(params, modules, layers[0])
    attention_names = find_modules(layer_modules, CLASSES["SelfAttention"])
    fnn_names = find_modules(layer_modules, CLASSES["FNN"])
    if len(attention_names) != 1 or len(fnn_names) != 1:
        raise MappingError(f"expected one SelfAttention and one FNN in each encoder layer, found "
                           f"{len(attention_names)} and {len(fnn_names)}")
    attentions = attention_recipes(_inside(layer_params, layer_modules, attention_names[0])[0], config)
    fnns = fnn_recipes(_inside(layer_params, layer_modules, fnn_names[0])[0], config)
    found = []
    for attention, fnn in itertools.product(attentions, fnns):
        for layer in layer_recipes(layer_params, layer_modules, config, attention, fnn, CLASSES):
            found.append(vit_recipe(params, modules, config, layer, CLASSES))
            if len(found) >= MAX_MAPPINGS:
                return found
    return found


def invert(recipe: Recipe, reference_shapes: dict[str, tuple[int, ...]], trained: State) -> State | None:
    """The reference state dict that `recipe` turns into `trained`, or None when there is none.

    Recipes only move, reshape and transpose values, so each is inverted by probing: give every
    reference value a distinct index, see where each index lands among the student's parameters,
    and read the trained values back from there. Reference values the student does not hold (a
    bias the student's layer lacks) are zero, which is what the student computes. The round trip
    must give back every trained parameter exactly, or the student's model holds something the
    reference cannot express (extra parameters, tied or duplicated weights).
    """
    sizes = [int(np.prod(shape)) for shape in reference_shapes.values()]
    offsets = np.cumsum([0, *sizes])
    probe = {name: np.arange(offsets[i], offsets[i + 1], dtype=np.float64).reshape(shape) + 1
             for i, (name, shape) in enumerate(reference_shapes.items())}
    try:
        landed = recipe.make(probe)
    except (KeyError, ValueError, IndexError):
        return None
    if set(landed) != set(trained):
        return None
    flat = np.zeros(int(offsets[-1]), dtype=np.float64)
    for name, where in landed.items():
        value = np.asarray(trained[name], dtype=np.float64)
        if value.shape != where.shape:
            return None
        index = where.astype(np.int64).ravel()
        held = index > 0
        flat[index[held] - 1] = value.ravel()[held]
    state = {name: flat[offsets[i] : offsets[i + 1]].reshape(shape)
             for i, (name, shape) in enumerate(reference_shapes.items())}
    back = recipe.make(state)
    if any(not np.array_equal(back[name], np.asarray(trained[name], dtype=np.float64)) for name in trained):
        return None
    return state


def find_mapping(recipes: list[Recipe], reference_shapes: dict[str, tuple[int, ...]], trained: State,
                 reference_forward: Callable[[State], np.ndarray], student_output: np.ndarray,
                 close: Callable[[np.ndarray, np.ndarray], tuple[bool, float]]) -> tuple[Mapped | None, float]:
    """The first mapping under which the reference, given the trained weights, computes what the
    student's model computed (`student_output`); else (None, the smallest error seen)."""
    best = float("inf")
    for recipe in recipes:
        state = invert(recipe, reference_shapes, trained)
        if state is None:
            continue
        ok, error = close(reference_forward(state), student_output)
        if ok:
            return Mapped(recipe, state, error), error
        best = min(best, error)
    return None, best
