"""Attention maps of a trained ViT: the handout's heatmap, CLS attention, attention rollout.

Every map function takes the per-layer attention weights, a list of (B, heads, N, N) tensors with
the class token at index 0, and returns a (B, H/P, W/P) map scaled to [0, 1] per image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

# The handout normalises with mean 0.5 and std 0.5 on every channel.
HANDOUT_MEAN = (0.5, 0.5, 0.5)
HANDOUT_STD = (0.5, 0.5, 0.5)


def collect_attention(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Run `model` once in eval mode; return each layer's stored `attn_weights` (B, heads, N, N)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(images)
    model.train(was_training)
    return [layer.attention.attn_weights.detach() for layer in model.layers]


def _to_grid(patch_scores: torch.Tensor) -> torch.Tensor:
    """(B, num_patches) -> (B, side, side) scaled to [0, 1] per image."""
    bs, num_patches = patch_scores.shape
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patches do not form a square grid")
    grid = patch_scores.reshape(bs, side, side)  # (B, H/P, W/P)
    low = grid.amin(dim=(1, 2), keepdim=True)
    high = grid.amax(dim=(1, 2), keepdim=True)
    return (grid - low) / (high - low).clamp_min(1e-12)


def handout_heatmap(attentions: list[torch.Tensor]) -> torch.Tensor:
    """The handout's map: layer 0, mean over heads, then mean over the patch queries.

    It shows how much attention each patch *receives* from the other patches in the first
    layer; it does not involve the class token or the class vector.
    """
    attn = attentions[0].mean(dim=1)  # (B, N, N), mean over heads
    patch_to_patch = attn[:, 1:, 1:]  # (B, N-1, N-1), class token removed on both axes
    return _to_grid(patch_to_patch.mean(dim=1))  # mean over queries -> (B, N-1)


def cls_attention(attentions: list[torch.Tensor], layer: int = -1) -> torch.Tensor:
    """How much the class token attends to each patch in one layer (mean over heads)."""
    attn = attentions[layer].mean(dim=1)  # (B, N, N)
    return _to_grid(attn[:, 0, 1:])  # class-token query row, patch keys -> (B, N-1)


def attention_rollout(attentions: list[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): multiply the layers' attention matrices.

    Each layer's head-averaged attention gets the identity added for the residual connection and
    is renormalised; the product's class-token row says how much each patch flows into the
    class token by the last layer.
    """
    rollout = None
    for attn in attentions:
        a = attn.mean(dim=1)  # (B, N, N)
        if residual:
            a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout  # (B, N, N)
    assert rollout is not None, "no attention weights given"
    return _to_grid(rollout[:, 0, 1:])


def unnormalize(images: torch.Tensor, mean=HANDOUT_MEAN, std=HANDOUT_STD) -> np.ndarray:
    """Normalised (B, 3, H, W) tensors -> (B, H, W, 3) floats in [0, 1] for `imshow`."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    pixels = (images * std_t + mean_t).clamp(0, 1)  # (B, 3, H, W)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)


def upsample(grid: torch.Tensor, size: int) -> np.ndarray:
    """(B, h, w) map -> (B, size, size) by bilinear interpolation, for overlays."""
    up = torch.nn.functional.interpolate(grid[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    return up[:, 0].cpu().numpy()


def plot_overlay(ax, image: np.ndarray, heatmap: np.ndarray, title: str = "", alpha: float = 0.5) -> None:
    """Draw an un-normalised (H, W, 3) image with a (H, W) heatmap on top of it."""
    ax.imshow(image)
    ax.imshow(heatmap, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
