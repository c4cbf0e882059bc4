"""Known mistakes, computed with the reference weights, so a failure can name the likely bug.

Each function returns {description: output of the mistaken variant}; the equivalence checks
compare the student's output with these when it differs from the reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

State = dict[str, np.ndarray]


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def attention_variants(ref: State, x: np.ndarray, heads: int) -> dict[str, np.ndarray]:
    xt = _t(x)
    b, n, d = xt.shape
    dh = d // heads
    qkv = (xt @ _t(ref["proj_in.weight"]).T).view(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, Dh)
    w_out, b_out = _t(ref["proj_out.weight"]), _t(ref["proj_out.bias"])

    def finish(context: torch.Tensor, transpose: bool = True, project: bool = True) -> np.ndarray:
        merged = context.transpose(1, 2).reshape(b, n, d) if transpose else context.reshape(b, n, d)
        return (merged @ w_out.T + b_out if project else merged).numpy()

    scores = q @ k.transpose(-2, -1)
    right = (scores * dh**-0.5).softmax(-1)
    return {
        "the softmax runs over the query axis (dim=-2); it must normalise over the keys (dim=-1)":
            finish((scores * dh**-0.5).softmax(-2) @ v),
        "the scores are not scaled by 1/sqrt(head dim)": finish(scores.softmax(-1) @ v),
        "the scores are scaled by 1/sqrt(dim_hidden) instead of 1/sqrt(head dim)":
            finish((scores * d**-0.5).softmax(-1) @ v),
        "the scores are scaled by sqrt(head dim) instead of divided by it": finish((scores * dh**0.5).softmax(-1) @ v),
        "there is no softmax on the scores": finish((scores * dh**-0.5) @ v),
        "the heads are merged without transposing (B, H, N, Dh) back to (B, N, H, Dh)": finish(right @ v, transpose=False),
        "the output projection (proj_out) is not applied": finish(right @ v, project=False),
        "the attention weights multiply the keys instead of the values": finish(right @ k),
    }


def fnn_variants(ref: State, x: np.ndarray) -> dict[str, np.ndarray]:
    xt = _t(x)
    hidden = xt @ _t(ref["linear1.weight"]).T + _t(ref["linear1.bias"])

    def out(h: torch.Tensor) -> np.ndarray:
        return (h @ _t(ref["linear2.weight"]).T + _t(ref["linear2.bias"])).numpy()

    return {
        "ReLU is used where the handout uses GELU": out(F.relu(hidden)),
        "GELU with the tanh approximation is used; the handout uses the exact GELU (nn.GELU())":
            out(F.gelu(hidden, approximate="tanh")),
        "there is no activation between the two linear layers": out(hidden),
    }


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return F.layer_norm(_t(x), (x.shape[-1],), _t(weight), _t(bias), eps).numpy()


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
    }


def patch_variants(images: np.ndarray, patch: int) -> dict[str, np.ndarray]:
    """Mistakes in splitting (B, C, H, W) images into flattened patches."""
    b, c, h, w = images.shape
    grid = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return {
        "patches are flattened channel-last (y, x, c); the handout flattens (c, y, x)":
            grid.transpose(0, 2, 4, 3, 5, 1).reshape(b, -1, c * patch * patch),
        "the patch grid is read column by column instead of row by row":
            grid.transpose(0, 4, 2, 1, 3, 5).reshape(b, -1, c * patch * patch),
        "the image is reshaped into patches without permuting the axes (pixels of different patches are mixed)":
            images.reshape(b, -1, c * patch * patch),
    }


def closest(actual: np.ndarray, variants: dict[str, np.ndarray], rtol: float, atol: float) -> str | None:
    """The description of the first variant the actual output matches, if any."""
    for description, value in variants.items():
        if value.shape == actual.shape and np.allclose(actual, value, rtol=rtol, atol=atol):
            return description
    return None
