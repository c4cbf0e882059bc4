"""Reference Vision Transformer: the handout's model, written to be read line by line.

Constructor signatures, parameter names and the computed function are those of the course
handout (`assignments/vit_cifar10/`). Shapes in comments use the handout's default configuration:
B = batch, N = 64 patches + 1 class token = 65, D = 512, H = 8 heads, Dh = D / H = 64.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from grader.spec import ViTConfig  # the sizes are the assignment's, shared with the student bundle


def _fused_attention_default() -> bool:
    # Off unless asked for: exact comparisons with student code need the manual path.
    return os.environ.get("VITGRADE_FUSED_ATTN", "0") == "1"


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused Q/K/V projection (`proj_in`)."""

    fused_attn: bool

    def __init__(self, dim_hidden: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        assert dim_hidden % num_heads == 0, "dim_hidden must be divisible by num_heads"
        self.num_heads = num_heads
        dim_head = dim_hidden // num_heads
        self.scale = dim_head**-0.5
        self.proj_in = nn.Linear(dim_hidden, dim_hidden * 3, bias=qkv_bias)
        self.proj_out = nn.Linear(dim_hidden, dim_hidden)
        self.fused_attn = _fused_attention_default()
        self.attn_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs, n, _ = x.shape  # (B, N, D)
        qkv = self.proj_in(x).view(bs, n, 3, self.num_heads, -1)  # (B, N, 3, H, Dh)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)

        if self.fused_attn:
            # Fast path; it does not expose the weights, so none are stored.
            x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
            self.attn_weights = None
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
            attn = attn.softmax(dim=-1)  # each row: a distribution over the N keys
            x = attn @ v  # (B, H, N, Dh)
            self.attn_weights = attn  # (B, H, N, N), kept for the attention maps
        x = x.transpose(1, 2).reshape(bs, n, -1)  # (B, N, H * Dh) = (B, N, D)
        return self.proj_out(x)  # (B, N, D)


class FNN(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, dim_hidden: int, dim_feedforward: int):
        super().__init__()
        self.linear1 = nn.Linear(dim_hidden, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim_hidden)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.activation(self.linear1(x)))  # (B, N, D)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm encoder layer: x + attention(norm1(x)), then x + fnn(norm2(x))."""

    def __init__(self, dim_hidden: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        self.attention = SelfAttention(dim_hidden, num_heads)
        self.fnn = FNN(dim_hidden, dim_feedforward)
        self.norm1 = nn.LayerNorm(dim_hidden)
        self.norm2 = nn.LayerNorm(dim_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual adds the layer's *input*, not its normalised input.
        x = x + self.attention(self.norm1(x))  # (B, N, D)
        x = x + self.fnn(self.norm2(x))  # (B, N, D)
        return x


class ViT(nn.Module):
    """Vision Transformer for CIFAR-10-sized images, as in the handout."""

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = 32,
        patch_size: int = 4,
        dim_hidden: int = 512,
        num_heads: int = 8,
        dim_feedforward: int = 512,
        num_layers: int = 6,
    ):
        super().__init__()
        assert img_size % patch_size == 0, "img_size must be divisible by patch_size"
        self.img_size = img_size
        self.patch_size = patch_size
        num_patches = (img_size // patch_size) ** 2
        dim_patch = 3 * patch_size**2

        self.patch_embed = nn.Linear(dim_patch, dim_hidden)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim_hidden))
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim_hidden))
        self.layers = nn.ModuleList(
            [TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(dim_hidden)
        self.linear = nn.Linear(dim_hidden, num_classes)
        self.attention_weights: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config: ViTConfig) -> ViT:
        return cls(**config.kwargs())

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Split images into flattened patches, channel-major inside each patch."""
        bs, c, h, w = x.shape  # (B, 3, 32, 32)
        p = self.patch_size
        x = x.view(bs, c, h // p, p, w // p, p)  # (B, 3, 8, 4, 8, 4)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, 8, 8, 3, 4, 4): patch row, patch column, c, y, x
        return x.reshape(bs, -1, c * p * p)  # (B, 64, 48)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, class token first, then position embedding."""
        bs, _, h, w = x.shape
        assert h == self.img_size and w == self.img_size, f"expected {self.img_size}x{self.img_size} images"
        x = self.patch_embed(self.patchify(x))  # (B, 64, D)
        class_token = self.class_token.expand(bs, -1, -1)  # (B, 1, D)
        x = torch.cat((class_token, x), dim=1)  # (B, 65, D)
        return x + self.pos_embed  # (B, 65, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)  # (B, 65, D)
        for layer in self.layers:
            x = layer(x)  # (B, 65, D)
        self.attention_weights = self.layers[0].attention.attn_weights  # (B, H, 65, 65)
        return self.norm(x)  # (B, 65, D)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[:, 0])  # class token (B, D) -> logits (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def set_fused_attention(model: nn.Module, enabled: bool) -> None:
    """Switch every `SelfAttention` in `model` to the fused (True) or manual (False) path."""
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.fused_attn = enabled
