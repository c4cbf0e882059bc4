# ViT for CIFAR-10 -- my own version (separate q/k/v, einsum, dropout, conv patch embedding)
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DROPOUT = 0.1


class SelfAttention(nn.Module):
    def __init__(self, dim_hidden, num_heads, qkv_bias=False):
        super().__init__()
        assert dim_hidden % num_heads == 0
        self.heads = num_heads
        self.head_dim = dim_hidden // num_heads
        self.query = nn.Linear(dim_hidden, dim_hidden, bias=qkv_bias)
        self.key = nn.Linear(dim_hidden, dim_hidden, bias=qkv_bias)
        self.value = nn.Linear(dim_hidden, dim_hidden, bias=qkv_bias)
        self.out = nn.Linear(dim_hidden, dim_hidden)
        self.drop = nn.Dropout(DROPOUT)

    def split(self, t):
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim)  # b n h d

    def forward(self, x):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(self.head_dim)
        weights = F.softmax(scores, dim=-1)
        self.attn_weights = weights
        ctx = torch.einsum("bhnm,bmhd->bnhd", self.drop(weights), v)
        return self.out(ctx.flatten(2))


class FNN(nn.Module):
    def __init__(self, dim_hidden, dim_feedforward):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_hidden, dim_feedforward), nn.GELU(), nn.Dropout(DROPOUT),
            nn.Linear(dim_feedforward, dim_hidden),
        )

    def forward(self, x):
        return self.net(x)


class TransformerEncoderLayer(nn.Module):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim_hidden)
        self.attention = SelfAttention(dim_hidden, num_heads)
        self.ln_ffn = nn.LayerNorm(dim_hidden)
        self.ffn = FNN(dim_hidden, dim_feedforward)

    def forward(self, x):
        x = x + self.attention(self.ln_attn(x))
        return x + self.ffn(self.ln_ffn(x))


class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8,
                 dim_feedforward=512, num_layers=6):
        super().__init__()
        self.img_size = img_size
        self.to_patches = nn.Conv2d(3, dim_hidden, kernel_size=patch_size, stride=patch_size)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim_hidden) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim_hidden) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward) for _ in range(num_layers))
        self.ln = nn.LayerNorm(dim_hidden)
        self.head = nn.Linear(dim_hidden, num_classes)

    def forward(self, x):
        x = self.to_patches(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        for block in self.blocks:
            x = block(x)
        self.attention_weights = self.blocks[0].attention.attn_weights
        return self.head(self.ln(x)[:, 0])


if __name__ == "__main__":
    model = ViT()
    print(sum(p.numel() for p in model.parameters()))
