"""Known mistakes in wiring the ViT's parts, computed from the student's own values, to name the likely bug.

Each *_variants function returns {description: output of the mistaken variant}. Mistakes inside
SelfAttention, FNN and the patch split come from the `Expected` source (they sit next to the solution).
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from grader.expected import as_tensor

State = dict[str, np.ndarray]


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return F.layer_norm(as_tensor(x), (x.shape[-1],), as_tensor(weight), as_tensor(bias), eps).numpy()


def token_variants(ref: State, patch_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Mistakes in building the encoder's input from the embedded patches (B, P, D)."""
    b = patch_tokens.shape[0]
    cls = np.broadcast_to(ref["class_token"].reshape(1, 1, -1), (b, 1, patch_tokens.shape[-1]))
    pos = ref["pos_embed"].reshape(1, -1, patch_tokens.shape[-1])
    return {
        "the position embedding is not added": np.concatenate([cls, patch_tokens], 1),
        "the class token is appended after the patches; the handout puts it first":
            np.concatenate([patch_tokens, cls], 1) + pos,
        "the position embedding is added before the class token is prepended (the class token gets none)":
            np.concatenate([cls, patch_tokens + pos[:, 1:]], 1),
    }


def readout_variants(last_layer: np.ndarray, ref: State) -> dict[str, np.ndarray]:
    """Mistakes between the last encoder layer (B, N, D) and the head's input (B, D)."""
    normed = layer_norm(last_layer, ref["norm.weight"], ref["norm.bias"])
    return {
        "the head reads the last token; the class token is the first (index 0)": normed[:, -1],
        "the head reads the mean of all tokens instead of the class token": normed.mean(1),
        "the final LayerNorm (norm) is not applied before the head": last_layer[:, 0],
        "the head reads the mean of all tokens (class token included), normalised after the mean, instead of the "
        "class token": layer_norm(last_layer.mean(1), ref["norm.weight"], ref["norm.bias"]),
        "the head reads the mean of the patch tokens instead of the class token": normed[:, 1:].mean(1),
    }


def closest(actual: np.ndarray, variants: dict[str, np.ndarray], rtol: float, atol: float) -> str | None:
    """The description of the first variant the actual output matches, if any."""
    for description, value in variants.items():
        if value.shape == actual.shape and np.allclose(actual, value, rtol=rtol, atol=atol):
            return description
    return None
