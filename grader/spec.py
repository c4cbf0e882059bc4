"""The assignment's sizes: the ViT's hyper-parameters, the two configurations the checks use, and their inputs.

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
