"""The assignment's facts: the ViT's hyper-parameters, the two configurations the checks use and their inputs,
and the checks' ids and titles (report.json's contract; `grader.checks` holds the code that runs them).

Nothing here computes the model, so the student bundle can carry it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# The classes the handout asks for, each built from the ones before it.
KINDS = ("FNN", "SelfAttention", "TransformerEncoderLayer", "ViT")
REQUIRED_CLASSES = KINDS[::-1]  # the same, top-down: the order messages name them in


@dataclass(frozen=True)
class ViTConfig:
    """The hyper-parameters of `ViT`, named as in the handout's constructor."""

    num_classes: int = 10
    img_size: int = 32
    patch_size: int = 4
    dim_hidden: int = 512
    num_heads: int = 8
    dim_feedforward: int = 512
    num_layers: int = 6

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def dim_patch(self) -> int:
        return 3 * self.patch_size**2

    def kwargs(self) -> dict[str, int]:
        return asdict(self)


DEFAULT = ViTConfig()
# A configuration where every size differs from the default and from each other, so hard-coded
# numbers show; it is also small, so it is cheap to run.
ALTERNATIVE = ViTConfig(num_classes=7, img_size=24, patch_size=6, dim_hidden=96, num_heads=4,
                        dim_feedforward=160, num_layers=2)


def component_args(kind: str, config: ViTConfig) -> list:
    """Positional constructor arguments, as the handout calls each class."""
    return {
        "FNN": [config.dim_hidden, config.dim_feedforward],
        "SelfAttention": [config.dim_hidden, config.num_heads],
        "TransformerEncoderLayer": [config.dim_hidden, config.num_heads, config.dim_feedforward],
        "ViT": [],
    }[kind]


def component_kwargs(kind: str, config: ViTConfig) -> dict:
    return config.kwargs() if kind == "ViT" else {}


def random_input(kind: str, config: ViTConfig, batch: int = 2, seed: int = 1) -> np.ndarray:
    generator = np.random.default_rng(seed)
    if kind == "ViT":
        return generator.standard_normal((batch, 3, config.img_size, config.img_size))
    return generator.standard_normal((batch, config.num_patches + 1, config.dim_hidden))


def stage_shapes(config: ViTConfig, batch: int | str) -> dict[str, tuple[int | str, ...]]:
    """Every stage of the handout's shape table for `config`, the batch size being `batch` (a number, or "B")."""
    n, d = config.num_patches, config.dim_hidden
    return {
        "input": (batch, 3, config.img_size, config.img_size),
        "patches": (batch, n, config.dim_patch),
        "patch_embedding": (batch, n, d),
        "class_token": (batch, n + 1, d),
        "position_embedding": (batch, n + 1, d),
        "encoder": (batch, n + 1, d),
        "class_vector": (batch, d),
        "logits": (batch, config.num_classes),
    }


def shape_table(config: ViTConfig) -> dict[str, tuple[str, ...]]:
    """The shape table as 課題1 asks for it: every stage for `config`, with B for the batch size."""
    return {stage: tuple(map(str, shape)) for stage, shape in stage_shapes(config, "B").items()}


@dataclass(frozen=True)
class CheckInfo:
    id: str
    title: str
    needs_worker: bool = True
    by_person: bool = False  # a `manual` check: a TA gives the points (TA sheet, --manual)


# The checks, in report order.
CHECKS: tuple[CheckInfo, ...] = (
    CheckInfo("load.code", "Code found and parsed", needs_worker=False),
    CheckInfo("load.definitions", "Required classes defined and executable"),
    CheckInfo("load.interface", "Constructor keywords and attn_weights layout as in the handout"),
    CheckInfo("static.forbidden", "No forbidden modules or APIs", needs_worker=False),
    CheckInfo("shapes.fnn", "FNN output shape"),
    CheckInfo("shapes.self_attention", "SelfAttention output and attention-weight shapes"),
    CheckInfo("shapes.encoder_layer", "TransformerEncoderLayer output shape"),
    CheckInfo("shapes.vit", "ViT shape at every stage of the handout's table"),
    CheckInfo("shapes.vit_config", "ViT shapes in a non-default configuration"),
    CheckInfo("props.attention_softmax", "Attention weights are a softmax over keys"),
    CheckInfo("props.permutation_equivariance", "SelfAttention is permutation-equivariant"),
    CheckInfo("props.batch_independence", "Images in a batch do not affect each other"),
    CheckInfo("props.gradients", "Every parameter receives a gradient"),
    CheckInfo("props.determinism", "Eval mode is deterministic"),
    CheckInfo("equiv.fnn", "FNN computes the reference function"),
    CheckInfo("equiv.self_attention", "SelfAttention computes the reference function"),
    CheckInfo("equiv.attention_weights", "Stored attention weights match the reference"),
    CheckInfo("equiv.encoder_layer", "TransformerEncoderLayer computes the reference function"),
    CheckInfo("equiv.vit", "ViT computes the reference function"),
    CheckInfo("train.accuracy", "The model learns: test accuracy after training"),
    CheckInfo("task1.shapes", "課題1: shape at every stage, two configurations", needs_worker=False),
    CheckInfo("task1.diagram", "課題1: network diagram (graded by a person)", needs_worker=False, by_person=True),
    CheckInfo("task2.choice", "課題2: Q/K/V multiple choice", needs_worker=False),
    CheckInfo("task2.explanation", "課題2: explanation (graded by a person)", needs_worker=False, by_person=True),
    CheckInfo("task3.answer", "課題3: heatmaps and Grad-CAM (graded by a person)", needs_worker=False, by_person=True),
)
CHECK_IDS = tuple(c.id for c in CHECKS)
PERSON_GRADED = frozenset(c.id for c in CHECKS if c.by_person)
