"""What a correct submission must compute: reference modules with random, non-zero weights.

This is the only grader module that imports `reference/`, and only when called, so that the
checks can also run from precomputed test vectors (the student bundle) instead of the solution.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from reference.vit import FNN, SelfAttention, TransformerEncoderLayer, ViT, ViTConfig

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


@functools.lru_cache(maxsize=16)
def build_reference(kind: str, config: ViTConfig = DEFAULT, seed: int = 0) -> nn.Module:
    """A float64 reference module whose every parameter is random and non-zero (cached: never mutate it)."""
    cls = {"FNN": FNN, "SelfAttention": SelfAttention, "TransformerEncoderLayer": TransformerEncoderLayer, "ViT": ViT}[kind]
    module = cls(*component_args(kind, config), **component_kwargs(kind, config)).double().eval()
    generator = torch.Generator().manual_seed(seed)
    norm_gains = {f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            if name in norm_gains:
                p.copy_(1.0 + 0.2 * noise)  # LayerNorm gains around 1
            elif p.dim() >= 2 and name not in ("pos_embed", "class_token"):
                p.copy_(noise / math.sqrt(p.shape[-1]))  # keeps activations of order 1
            else:
                p.copy_(0.5 * noise)  # biases, LayerNorm shifts, class token, position embedding
    return module


def reference_state(module: nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy().copy() for name, p in module.named_parameters()}


def random_input(kind: str, config: ViTConfig, batch: int = 2, seed: int = 1) -> np.ndarray:
    generator = np.random.default_rng(seed)
    if kind == "ViT":
        return generator.standard_normal((batch, 3, config.img_size, config.img_size))
    return generator.standard_normal((batch, config.num_patches + 1, config.dim_hidden))


@dataclass
class ViTIntermediates:
    """The reference ViT's values at every stage, for locating where a submission diverges."""

    patches: np.ndarray  # (B, num_patches, dim_patch)
    patch_embed: np.ndarray  # (B, num_patches, D)
    class_token: np.ndarray  # (D,)
    pos_embed: np.ndarray  # (N+1, D)
    tokens: np.ndarray  # (B, N+1, D) input of the first encoder layer
    normed: np.ndarray  # (B, N+1, D) after the final LayerNorm
    logits: np.ndarray  # (B, num_classes)


def run(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Reference output and, for attention modules, the attention weights."""
    with torch.no_grad():
        y = module(torch.from_numpy(x))
    extras = {}
    if isinstance(module, SelfAttention):
        extras["attn_weights"] = module.attn_weights.numpy()
    return y.numpy(), extras


def vit_intermediates(model: ViT, x: np.ndarray) -> ViTIntermediates:
    return _vit_intermediates(model, x.tobytes(), x.shape)


@functools.lru_cache(maxsize=4)
def _vit_intermediates(model: ViT, data: bytes, shape: tuple[int, ...]) -> ViTIntermediates:
    x = np.frombuffer(data, dtype=np.float64).reshape(shape).copy()
    with torch.no_grad():
        images = torch.from_numpy(x)
        patches = model.patchify(images)
        tokens = model.embed(images)
        h = tokens
        for layer in model.layers:
            h = layer(h)
        normed = model.norm(h)
        return ViTIntermediates(
            patches=patches.numpy(),
            patch_embed=model.patch_embed(patches).numpy(),
            class_token=model.class_token.reshape(-1).numpy(),
            pos_embed=model.pos_embed.reshape(model.pos_embed.shape[1], -1).numpy(),
            tokens=tokens.numpy(),
            normed=normed.numpy(),
            logits=model.linear(normed[:, 0]).numpy(),
        )
