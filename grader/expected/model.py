"""What a correct submission computes, from one of two sources: the reference solution, or test vectors.

The checks ask an `Expected` for the reference's weights, outputs, known-mistake outputs and the
ViT's stages on fixed inputs. The instructor's install computes them with `reference/`
(`grader.expected.reference`); the student bundle reads them from a test-vector file made from
the same computation (`vitgrade assign`), so it carries numbers, not the solution's code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from grader.spec import ALTERNATIVE, DEFAULT, KINDS, random_input

State = dict[str, np.ndarray]
# Seeds of the reference's random weights in the student bundle's test vectors; the inputs use
# seed + 100 and the gradient challenge seed + 200. Instructor grading draws fresh ones (fresh_seeds).
SEEDS = {"FNN": 11, "SelfAttention": 12, "TransformerEncoderLayer": 13, "ViT": 14}
# A test-vector file packaged inside the grader (the student bundle) makes it the default source.
PACKAGED_VECTORS = Path(__file__).resolve().parent.parent / "test_vectors.npz"
VECTORS_FORMAT = 2
GRADIENT_SAMPLES = 16  # coordinates of each reference parameter whose gradient the challenge checks
FIXED_CHALLENGE = "fixed (the student bundle's test vectors)"


class VectorsError(Exception):
    """The test-vector file is missing, unreadable, or made for other inputs."""


def inputs(kind: str, seeds: dict[str, int] = SEEDS) -> np.ndarray:
    """The input each equivalence check feeds to a component (float64, batch 2); fixed unless `seeds` are fresh."""
    return random_input(kind, DEFAULT, batch=2, seed=seeds[kind] + 100)


def fresh_seeds(secret: int) -> dict[str, int]:
    """Per-component seeds derived from a grading run's secret (weights and inputs nobody has seen)."""
    return {kind: int.from_bytes(hashlib.sha256(f"{secret}:{kind}".encode()).digest()[:7], "big") for kind in SEEDS}


def challenge_id(secret: int) -> str:
    """A name for a grading run's secret that can be shown (it does not reveal the secret)."""
    return "sha256:" + hashlib.sha256(f"vitgrade-challenge:{secret}".encode()).hexdigest()[:16]


@dataclass
class GradientChallenge:
    """The reference ViT's backward pass for the parent to check against: weights are `weights("ViT")`."""

    images: np.ndarray  # (1, 3, H, W)
    upstream: np.ndarray  # (1, num_classes): the gradient flowing into the logits
    logits: np.ndarray  # the reference's output on `images`
    samples: dict[str, np.ndarray]  # reference parameter -> flat indices checked
    gradients: dict[str, np.ndarray]  # reference parameter -> its gradient at those indices
    full: dict[str, np.ndarray] | None = None  # every gradient, where the reference is at hand (not recorded)


def alternative_inputs(kind: str, seeds: dict[str, int] = SEEDS) -> np.ndarray:
    """The input each equivalence check feeds at the ALTERNATIVE configuration, where every size differs."""
    return random_input(kind, ALTERNATIVE, batch=2, seed=seeds[kind] + 200)


@dataclass
class ViTStages:
    """The reference ViT's values at every stage on `inputs("ViT")`."""

    patches: np.ndarray  # (B, num_patches, dim_patch)
    patch_embed: np.ndarray  # (B, num_patches, D)
    tokens: np.ndarray  # (B, N+1, D) input of the first encoder layer
    layer_outputs: list[np.ndarray] = field(default_factory=list)  # (B, N+1, D) after each encoder layer
    normed: np.ndarray | None = None  # (B, N+1, D) after the final LayerNorm
    logits: np.ndarray | None = None  # (B, num_classes)


class Expected:
    """The interface the equivalence checks use; see ReferenceExpected and VectorExpected."""

    source = "unknown"
    # The accuracy check's pass mark comes from training the reference; only the reference source can.
    can_train_reference = False
    seeds: dict[str, int] = SEEDS
    # Which weights and inputs: FIXED_CHALLENGE, or the id of a grading run's secret seed.
    challenge = FIXED_CHALLENGE

    def inputs(self, kind: str) -> np.ndarray:
        return inputs(kind, self.seeds)

    def alternative_inputs(self, kind: str) -> np.ndarray:
        return alternative_inputs(kind, self.seeds)

    def weights(self, kind: str) -> State:
        shapes, gains = self.weight_layout(kind)
        return random_weights(shapes, gains, self.seeds[kind])

    def prefetch(self) -> None:
        """Start computing, in the background, values the checks will ask for (no-op where they are read)."""

    def gradient_challenge(self) -> GradientChallenge | None:
        """The reference's gradients for the ViT's weights, or None where this source has none."""
        return None

    def weight_layout(self, kind: str) -> tuple[dict[str, tuple[int, ...]], set[str]]:
        """The reference's parameter names and shapes, in order, and which are LayerNorm gains."""
        raise NotImplementedError

    def output(self, kind: str) -> tuple[np.ndarray, State]:
        """The reference output on inputs(kind), and extras (the attention weights for SelfAttention)."""
        raise NotImplementedError

    def variants(self, kind: str) -> dict[str, np.ndarray]:
        """{description of a known mistake: what it computes}: for FNN and SelfAttention on inputs(kind),
        and for "patches", the mistaken patch splits of inputs("ViT")."""
        raise NotImplementedError

    def vit_stages(self) -> ViTStages:
        raise NotImplementedError

    def layer_output(self, index: int, layer_in: np.ndarray) -> np.ndarray | None:
        """The reference ViT's encoder layer `index` applied to `layer_in`, or None where unknown."""
        raise NotImplementedError

    # At the ALTERNATIVE configuration (every size differs from every other, so an ignored or swapped
    # size argument shows): the weights come from their layout and seed as above; the outputs are
    # logits for "ViT". None where the source has no such values (test vectors of an older bundle).
    def alternative_weights(self, kind: str) -> State | None:
        layout = self.alternative_layout(kind)
        return None if layout is None else random_weights(*layout, self.seeds[kind])

    def alternative_layout(self, kind: str) -> tuple[dict[str, tuple[int, ...]], set[str]] | None:
        raise NotImplementedError

    def alternative_output(self, kind: str) -> np.ndarray | None:
        raise NotImplementedError


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def random_weights(shapes: dict[str, tuple[int, ...]], norm_gains: set[str], seed: int) -> State:
    """Random, non-zero float64 weights in parameter order; the same for the reference and the bundle,
    which stores only the names and shapes (the weights of the default ViT alone are 76 MB)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in shapes.items():
        noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float64)
        if name in norm_gains:
            noise = 1.0 + 0.2 * noise  # LayerNorm gains around 1
        elif len(shape) >= 2 and name not in ("pos_embed", "class_token"):
            noise = noise / math.sqrt(shape[-1])  # keeps activations of order 1
        else:
            noise = 0.5 * noise  # biases, LayerNorm shifts, class token, position embedding
        weights[name] = noise.numpy()
    return weights


# Which checks read each group of test vectors (a check reads its components' too: the encoder layer's
# search maps SelfAttention and FNN first, the ViT's maps the encoder layer). A group is left out of a
# bundle only when every check that reads it is left out (a hidden check's vectors stay with the instructor).
VECTOR_READERS: dict[str, set[str]] = {
    "FNN": {"equiv.fnn", "equiv.encoder_layer", "equiv.vit"},
    "SelfAttention": {"equiv.self_attention", "equiv.attention_weights", "equiv.encoder_layer", "equiv.vit"},
    "TransformerEncoderLayer": {"equiv.encoder_layer", "equiv.vit"},
    "patches": {"equiv.vit"},
    "ViT": {"equiv.vit", "props.gradients"},  # props.gradients maps the ViT through equiv.vit's search
}


def record(expected: Expected, path: Path, leave_out: set[str] | frozenset[str] = frozenset()) -> Path:
    """Write everything the checks ask of `expected` into a test-vector file (.npz, no pickles), except
    the vectors that only the checks in `leave_out` read."""
    def wanted(group: str) -> bool:
        return not VECTOR_READERS[group] <= set(leave_out)

    if expected.seeds != SEEDS:
        raise VectorsError("test vectors are recorded from the fixed seeds only (a grading run's are secret)")
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"format": VECTORS_FORMAT, "inputs": {}, "weights": {}, "variants": {}}
    for kind in KINDS:
        meta["inputs"][kind] = digest(inputs(kind))
        shapes, gains = expected.weight_layout(kind)
        meta["weights"][kind] = {"shapes": {k: list(v) for k, v in shapes.items()}, "norm_gains": sorted(gains)}
        if not all(np.array_equal(a, b) for a, b in zip(random_weights(shapes, gains, SEEDS[kind]).values(),
                                                         expected.weights(kind).values(), strict=True)):
            raise VectorsError(f"the {kind} weights are not reproducible from their layout and seed")
    for kind in filter(wanted, KINDS[:-1]):  # the components; the ViT's stages follow
        y, extras = expected.output(kind)
        arrays[f"{kind}/output"] = y
        for name, value in extras.items():
            arrays[f"{kind}/extra/{name}"] = value
    for kind in filter(wanted, ("FNN", "SelfAttention", "patches")):
        found = expected.variants(kind)
        meta["variants"][kind] = list(found)
        for i, value in enumerate(found.values()):
            arrays[f"{kind}/variant/{i}"] = value
    meta["alternative"] = {"inputs": {}, "weights": {}}
    for kind in KINDS:
        meta["alternative"]["inputs"][kind] = digest(alternative_inputs(kind))
        shapes, gains = expected.alternative_layout(kind)
        meta["alternative"]["weights"][kind] = {"shapes": {k: list(v) for k, v in shapes.items()},
                                                "norm_gains": sorted(gains)}
        if wanted(kind):
            arrays[f"alternative/{kind}/output"] = expected.alternative_output(kind)
    stages = expected.vit_stages() if wanted("ViT") else None
    for f in fields(ViTStages) if stages else ():
        value = getattr(stages, f.name)
        if f.name == "layer_outputs":
            for i, out in enumerate(value):
                arrays[f"ViT/stage/layer_outputs/{i}"] = out
        else:
            arrays[f"ViT/stage/{f.name}"] = value
    challenge = expected.gradient_challenge() if wanted("ViT") else None
    if challenge is not None:
        for name in ("images", "upstream", "logits"):
            arrays[f"ViT/gradient/{name}"] = getattr(challenge, name)
        for name in challenge.samples:
            arrays[f"ViT/gradient/index/{name}"] = challenge.samples[name]
            arrays[f"ViT/gradient/value/{name}"] = challenge.gradients[name]
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


class VectorExpected(Expected):
    """Expected values read from a test-vector file (the student bundle)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.source = f"test vectors {self.path.name}"
        try:
            with np.load(self.path, allow_pickle=False) as data:
                self.arrays = {name: data[name] for name in data.files}
            self.meta = json.loads(str(self.arrays.pop("meta")))
        except (OSError, ValueError, KeyError) as exc:
            raise VectorsError(f"cannot read test vectors {self.path}: {exc}") from None
        if self.meta.get("format") != VECTORS_FORMAT:
            raise VectorsError(f"{self.path} has test-vector format {self.meta.get('format')}, this grader reads "
                               f"{VECTORS_FORMAT}: get the bundle that matches your grader version")
        for kind in KINDS:
            if self.meta.get("inputs", {}).get(kind) != digest(inputs(kind)):
                raise VectorsError(f"{self.path} was made for other {kind} inputs than this grader feeds")

    def _group(self, prefix: str) -> State:
        return {name[len(prefix):]: value for name, value in self.arrays.items() if name.startswith(prefix)}

    @functools.cache  # noqa: B019 - a handful of instances per process
    def weights(self, kind: str) -> State:
        return super().weights(kind)

    def weight_layout(self, kind: str) -> tuple[dict[str, tuple[int, ...]], set[str]]:
        layout = self.meta["weights"][kind]
        return {k: tuple(v) for k, v in layout["shapes"].items()}, set(layout["norm_gains"])

    def output(self, kind: str) -> tuple[np.ndarray, State]:
        return self.arrays[f"{kind}/output"], self._group(f"{kind}/extra/")

    def variants(self, kind: str) -> dict[str, np.ndarray]:
        return {d: self.arrays[f"{kind}/variant/{i}"] for i, d in enumerate(self.meta["variants"][kind])}

    @functools.cache  # noqa: B019 - a handful of instances per process; layer_output asks once per layer
    def vit_stages(self) -> ViTStages:
        stage = self._group("ViT/stage/")
        layers = [stage[f"layer_outputs/{i}"] for i in range(sum(k.startswith("layer_outputs/") for k in stage))]
        return ViTStages(patches=stage["patches"], patch_embed=stage["patch_embed"], tokens=stage["tokens"],
                         layer_outputs=layers, normed=stage["normed"], logits=stage["logits"])

    def gradient_challenge(self) -> GradientChallenge | None:
        grad = self._group("ViT/gradient/")
        if "images" not in grad:
            return None
        indices, values = self._group("ViT/gradient/index/"), self._group("ViT/gradient/value/")
        return GradientChallenge(grad["images"], grad["upstream"], grad["logits"], indices,
                                 {name: values[name] for name in indices})

    def layer_output(self, index: int, layer_in: np.ndarray) -> np.ndarray | None:
        # Only the reference's own path is recorded: answer where the input is (numerically) that path's.
        stages = self.vit_stages()
        path_in = stages.tokens if index == 0 else stages.layer_outputs[index - 1]
        if layer_in is not None and layer_in.shape == path_in.shape and np.allclose(layer_in, path_in, 1e-4, 1e-5):
            return stages.layer_outputs[index]
        return None


    def _alternative_ok(self, kind: str) -> bool:
        alternative = self.meta.get("alternative", {})
        return alternative.get("inputs", {}).get(kind) == digest(alternative_inputs(kind))

    @functools.cache  # noqa: B019 - a handful of instances per process
    def alternative_weights(self, kind: str) -> State | None:
        return super().alternative_weights(kind)

    def alternative_layout(self, kind: str) -> tuple[dict[str, tuple[int, ...]], set[str]] | None:
        if not self._alternative_ok(kind):
            return None
        layout = self.meta["alternative"]["weights"][kind]
        return {k: tuple(v) for k, v in layout["shapes"].items()}, set(layout["norm_gains"])

    def alternative_output(self, kind: str) -> np.ndarray | None:
        return self.arrays.get(f"alternative/{kind}/output") if self._alternative_ok(kind) else None


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory (made contiguous first: test vectors may be views)."""
    return torch.from_numpy(np.ascontiguousarray(array))
