"""Correct ViTs written in the styles of textbooks and popular repositories, and one-difference edits of them.

Written for this test suite (no third-party code): each style arranges the handout's function the way a
well-known code base or book would (timm-style Block/Attention/Mlp, PreNorm wrappers, Sequential
blocks, inline attention, lazy layers, ...), with thin classes carrying the handout's names and
signatures. `STYLES` must get every automatic code check; each entry of `DIFFERENCES` changes one
thing and must fail `check` with `words` in its message.
"""

from __future__ import annotations

from dataclasses import dataclass

PATCHIFY = '''
def patchify(x, p):
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p), channel-major inside each patch, without einops."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)
'''

TIMM = '''import torch
import torch.nn as nn
''' + PATCHIFY + '''

class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        self.attn_weights = attn
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_hidden, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, attn_drop=0.1, proj_drop=0.1)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, mlp_hidden, drop=0.1)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class SelfAttention(Attention):
    def __init__(self, dim_hidden, num_heads):
        super().__init__(dim_hidden, num_heads)


class FNN(Mlp):
    def __init__(self, dim_hidden, dim_feedforward):
        super().__init__(dim_hidden, dim_feedforward)


class TransformerEncoderLayer(Block):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__(dim_hidden, num_heads, dim_feedforward)


class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8,
                 dim_feedforward=512, num_layers=6):
        super().__init__()
        self.patch_size = patch_size
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Linear(3 * patch_size ** 2, dim_hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim_hidden))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim_hidden) * .02)
        self.pos_drop = nn.Dropout(0.1)
        self.blocks = nn.Sequential(*[Block(dim_hidden, num_heads, dim_feedforward) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim_hidden)
        self.head = nn.Linear(dim_hidden, num_classes)

    def forward_features(self, x):
        x = self.patch_embed(patchify(x, self.patch_size))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x):
        return self.head(x[:, 0])

    def forward(self, x):
        return self.forward_head(self.forward_features(x))
'''

PRENORM = '''import torch
from torch import nn
''' + PATCHIFY + '''

class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout=0.):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim, heads=8, dropout=0.):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        attn = self.attend(dots)
        self.attn_weights = attn
        out = torch.matmul(self.dropout(attn), v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, mlp_dim, dropout=0.):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(nn.ModuleList([PreNorm(dim, Attention(dim, heads, dropout)),
                                              PreNorm(dim, FeedForward(dim, mlp_dim, dropout))]))

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class SelfAttention(Attention):
    def __init__(self, dim_hidden, num_heads):
        super().__init__(dim_hidden, num_heads, dropout=0.1)


class FNN(FeedForward):
    def __init__(self, dim_hidden, dim_feedforward):
        super().__init__(dim_hidden, dim_feedforward, dropout=0.1)


class TransformerEncoderLayer(Transformer):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__(dim_hidden, 1, num_heads, dim_feedforward, dropout=0.1)


class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8,
                 dim_feedforward=512, num_layers=6):
        super().__init__()
        self.patch_size = patch_size
        num_patches = (img_size // patch_size) ** 2
        self.to_patch_embedding = nn.Linear(3 * patch_size * patch_size, dim_hidden)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim_hidden))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim_hidden))
        self.dropout = nn.Dropout(0.1)
        self.transformer = Transformer(dim_hidden, num_layers, num_heads, dim_feedforward, dropout=0.1)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim_hidden), nn.Linear(dim_hidden, num_classes))

    def forward(self, img):
        x = self.to_patch_embedding(patchify(img, self.patch_size))
        b, n, _ = x.shape
        x = torch.cat((self.cls_token.repeat(b, 1, 1), x), dim=1)
        x = x + self.pos_embedding[:, :(n + 1)]
        x = self.transformer(self.dropout(x))
        return self.mlp_head(x[:, 0])
'''

INLINE = '''import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, dim_hidden, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.proj_in = nn.Linear(dim_hidden, 3 * dim_hidden, bias=False)
        self.proj_out = nn.Linear(dim_hidden, dim_hidden)

    def forward(self, x):
        y, self.attn_weights = attend(x, self.proj_in, self.proj_out, self.num_heads)
        return y


def attend(x, proj_in, proj_out, heads):
    """Multi-head attention written out, shared by SelfAttention and the encoder block."""
    b, n, d = x.shape
    q, k, v = proj_in(x).split(d, dim=-1)
    q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    w = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)
    return proj_out((w @ v).transpose(1, 2).contiguous().view(b, n, d)), w


class FNN(nn.Sequential):
    def __init__(self, dim_hidden, dim_feedforward):
        super().__init__(nn.Linear(dim_hidden, dim_feedforward), nn.GELU(), nn.Dropout(0.1),
                         nn.Linear(dim_feedforward, dim_hidden))


class EncoderBlock(nn.Module):
    """Attention computed inline, in the block's own forward."""

    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__()
        self.heads = num_heads
        self.ln_1 = nn.LayerNorm(dim_hidden)
        self.c_attn = nn.Linear(dim_hidden, 3 * dim_hidden, bias=False)
        self.c_proj = nn.Linear(dim_hidden, dim_hidden)
        self.ln_2 = nn.LayerNorm(dim_hidden)
        self.mlp = FNN(dim_hidden, dim_feedforward)

    def forward(self, x):
        y, self.attn_weights = attend(self.ln_1(x), self.c_attn, self.c_proj, self.heads)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class TransformerEncoderLayer(EncoderBlock):
    pass


class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8,
                 dim_feedforward=512, num_layers=6):
        super().__init__()
        self.p = patch_size
        n = (img_size // patch_size) ** 2
        self.embed = nn.Linear(3 * patch_size ** 2, dim_hidden)
        self.class_embedding = nn.Parameter(torch.zeros(dim_hidden))
        self.positional_embedding = nn.Parameter(torch.zeros(n + 1, dim_hidden))
        self.encoder = nn.Sequential(*(EncoderBlock(dim_hidden, num_heads, dim_feedforward) for _ in range(num_layers)))
        self.ln_post = nn.LayerNorm(dim_hidden)
        self.proj = nn.Linear(dim_hidden, num_classes)

    def forward(self, x):
        b = x.shape[0]
        patches = x.unfold(2, self.p, self.p).unfold(3, self.p, self.p)  # (B, C, h, w, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # (B, h*w, C*p*p)
        x = self.embed(patches)
        x = torch.cat([self.class_embedding.expand(b, 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_post(self.encoder(x))
        return self.proj(x[:, 0, :])
'''

LAZY = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, dim_hidden, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.W_qkv = nn.LazyLinear(3 * dim_hidden, bias=False)
        self.W_o = nn.LazyLinear(dim_hidden)

    def forward(self, X):
        B, N, D = X.shape
        H = self.num_heads
        qkv = self.W_qkv(X).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        scores = torch.bmm(qkv[0].reshape(B * H, N, -1), qkv[1].reshape(B * H, N, -1).transpose(1, 2))
        weights = F.softmax(scores / (D // H) ** 0.5, dim=-1)
        self.attn_weights = weights.reshape(B, H, N, N)
        out = torch.bmm(weights, qkv[2].reshape(B * H, N, -1)).reshape(B, H, N, -1)
        return self.W_o(out.permute(0, 2, 1, 3).reshape(B, N, D))


class FNN(nn.Module):
    def __init__(self, dim_hidden, dim_feedforward, dropout=0.1):
        super().__init__()
        self.dense1 = nn.LazyLinear(dim_feedforward)
        self.gelu = nn.GELU()
        self.dropout1 = nn.Dropout(dropout)
        self.dense2 = nn.LazyLinear(dim_hidden)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout2(self.dense2(self.dropout1(self.gelu(self.dense1(x)))))


class TransformerEncoderLayer(nn.Module):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim_hidden)
        self.attention = SelfAttention(dim_hidden, num_heads)
        self.ln2 = nn.LayerNorm(dim_hidden)
        self.mlp = FNN(dim_hidden, dim_feedforward)

    def forward(self, X):
        X = X + self.attention(self.ln1(X))
        return X + self.mlp(self.ln2(X))


class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8,
                 dim_feedforward=512, num_layers=6):
        super().__init__()
        self.patch_size = patch_size
        num_steps = (img_size // patch_size) ** 2 + 1
        self.patch_embedding = nn.LazyLinear(dim_hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim_hidden))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_steps, dim_hidden))
        self.blks = nn.Sequential()
        for i in range(num_layers):
            self.blks.add_module(f"{i}", TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward))
        self.head = nn.Sequential(nn.LayerNorm(dim_hidden), nn.LazyLinear(num_classes))

    def forward(self, X):
        p = self.patch_size
        B, C, H, W = X.shape
        X = X.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * p * p)
        X = self.patch_embedding(X)
        X = torch.cat((self.cls_token.expand(B, -1, -1), X), 1) + self.pos_embedding
        X = self.blks(X)
        return self.head(X[:, 0])
'''

HEADS = '''import torch
import torch.nn as nn


class Head(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.query = nn.Linear(dim, head_dim, bias=False)
        self.key = nn.Linear(dim, head_dim, bias=False)
        self.value = nn.Linear(dim, head_dim, bias=False)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        w = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
        return w @ v, w


class MultiHeadAttention(nn.Module):
    def __init__(self, dim_hidden, num_heads):
        super().__init__()
        self.heads = nn.ModuleList([Head(dim_hidden, dim_hidden // num_heads) for _ in range(num_heads)])
        self.proj = nn.Linear(dim_hidden, dim_hidden)

    def forward(self, x):
        outs = [h(x) for h in self.heads]
        self.attn_weights = torch.stack([w for _, w in outs], dim=1)
        return self.proj(torch.cat([o for o, _ in outs], dim=-1))


SelfAttention = MultiHeadAttention


class FeedForward(nn.Module):
    def __init__(self, n_embd, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_embd, hidden), nn.GELU(), nn.Linear(hidden, n_embd), nn.Dropout(0.2))

    def forward(self, x):
        return self.net(x)


FNN = FeedForward


class TransformerEncoderLayer(nn.Module):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__()
        self.sa = MultiHeadAttention(dim_hidden, num_heads)
        self.ffwd = FeedForward(dim_hidden, dim_feedforward)
        self.ln1 = nn.LayerNorm(dim_hidden)
        self.ln2 = nn.LayerNorm(dim_hidden)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8,
                 dim_feedforward=512, num_layers=6):
        super().__init__()
        self.patch_size = patch_size
        self.lm_patch = nn.Linear(3 * patch_size ** 2, dim_hidden)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim_hidden))
        self.position_embedding_table = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2 + 1, dim_hidden))
        self.blocks = nn.ModuleList([TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward)
                                     for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(dim_hidden)
        self.lm_head = nn.Linear(dim_hidden, num_classes)

    def forward(self, img):
        p = self.patch_size
        b, c, h, w = img.shape
        x = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)
        x = torch.cat([self.cls.repeat(b, 1, 1), self.lm_patch(x)], dim=1)
        x = x + self.position_embedding_table
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x)[:, 0])
'''

RAW = '''import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    """All weights are raw parameters, used as x @ W."""

    def __init__(self, dim_hidden, num_heads):
        super().__init__()
        self.h = num_heads
        self.w_qkv = nn.Parameter(torch.randn(dim_hidden, 3 * dim_hidden) / math.sqrt(dim_hidden))
        self.w_out = nn.Parameter(torch.randn(dim_hidden, dim_hidden) / math.sqrt(dim_hidden))
        self.b_out = nn.Parameter(torch.zeros(dim_hidden))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (x @ self.w_qkv).reshape(b, n, 3, self.h, d // self.h).unbind(2)
        a = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(1 / math.sqrt(d // self.h)).softmax(-1)
        self.attn_weights = a
        return torch.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, n, d) @ self.w_out + self.b_out


class FNN(nn.Module):
    def __init__(self, dim_hidden, dim_feedforward):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(dim_hidden, dim_feedforward) * 0.02)
        self.b1 = nn.Parameter(torch.zeros(dim_feedforward))
        self.w2 = nn.Parameter(torch.randn(dim_feedforward, dim_hidden) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(dim_hidden))

    def forward(self, x):
        return F.gelu(x @ self.w1 + self.b1) @ self.w2 + self.b2


class TransformerEncoderLayer(nn.Module):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__()
        self.attn = SelfAttention(dim_hidden, num_heads)
        self.ff = FNN(dim_hidden, dim_feedforward)
        self.g1 = nn.Parameter(torch.ones(dim_hidden))
        self.b1 = nn.Parameter(torch.zeros(dim_hidden))
        self.g2 = nn.Parameter(torch.ones(dim_hidden))
        self.b2 = nn.Parameter(torch.zeros(dim_hidden))

    def forward(self, x):
        d = x.shape[-1]
        x = x + self.attn(F.layer_norm(x, (d,), self.g1, self.b1))
        return x + self.ff(F.layer_norm(x, (d,), self.g2, self.b2))


class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8,
                 dim_feedforward=512, num_layers=6):
        super().__init__()
        self.p = patch_size
        self.proj = nn.Linear(3 * patch_size ** 2, dim_hidden)
        self.token = nn.Parameter(torch.zeros(1, dim_hidden))
        self.pos = nn.Parameter(torch.zeros((img_size // patch_size) ** 2 + 1, dim_hidden))
        self.layers = nn.ModuleList(TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim_hidden)
        self.out = nn.Linear(dim_hidden, num_classes)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.view(b, c, h // self.p, self.p, w // self.p, self.p).permute(0, 2, 4, 1, 3, 5)
        x = self.proj(x.reshape(b, -1, c * self.p * self.p))
        x = torch.cat([self.token.unsqueeze(0).expand(b, -1, -1), x], 1) + self.pos.unsqueeze(0)
        for layer in self.layers:
            x = layer(x)
        return self.out(self.norm(x)[:, 0])
'''

CONV = TIMM.replace("self.patch_embed = nn.Linear(3 * patch_size ** 2, dim_hidden)",
                    "self.patch_embed = nn.Conv2d(3, dim_hidden, patch_size, stride=patch_size)").replace(
    "x = self.patch_embed(patchify(x, self.patch_size))", "x = self.patch_embed(x).flatten(2).transpose(1, 2)")

CHANNEL_LAST = TIMM.replace("permute(0, 2, 4, 1, 3, 5)", "permute(0, 2, 4, 3, 5, 1)")

KEYWORD_LAYOUT = HEADS.replace("SelfAttention = MultiHeadAttention", "SelfAttention = MultiHeadAttention\n\n\n"
                               "class Stack(nn.Sequential):\n    pass")

HANDWRITTEN_NORM = TIMM.replace("class Block(nn.Module):", '''class LayerNorm(nn.Module):
    """Layer normalisation written out (biased variance, as nn.LayerNorm)."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        return self.gamma * (x - mean) / torch.sqrt(var + self.eps) + self.beta


class Block(nn.Module):''').replace("norm_layer=nn.LayerNorm", "norm_layer=LayerNorm").replace(
    "self.norm = nn.LayerNorm(dim_hidden)", "self.norm = LayerNorm(dim_hidden)")

STYLES: dict[str, str] = {
    "timm_block_attention_mlp_sequential": TIMM,
    "prenorm_wrappers_nested_modulelists": PRENORM,
    "inline_attention_sequential_fnn_subclass": INLINE,
    "lazy_layers_bmm": LAZY,
    "per_head_modules_class_aliases": HEADS,
    "raw_parameters_functional_layer_norm": RAW,
    "conv2d_patch_embedding": CONV,
    "channel_last_patch_features": CHANNEL_LAST,
    "dropout_everywhere_train_mode_off": TIMM.replace("attn_drop=0.0, proj_drop=0.0", "attn_drop=0.3, proj_drop=0.3")
    .replace("drop=0.0", "drop=0.3"),
    "sequential_subclass_of_blocks": KEYWORD_LAYOUT.replace(
        "self.blocks = nn.ModuleList([", "self.blocks = Stack(*[").replace(
        "for block in self.blocks:\n            x = block(x)", "x = self.blocks(x)"),
    "prenorm_channel_last_unfold": PRENORM.replace("permute(0, 2, 4, 1, 3, 5)", "permute(0, 2, 4, 3, 5, 1)"),
    "handwritten_layer_norm_module": HANDWRITTEN_NORM,
    "inline_attention_head_major_fused": INLINE.replace(
        "q, k, v = proj_in(x).split(d, dim=-1)\n    q, k, v = (t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))",
        "q, k, v = proj_in(x).view(b, n, heads, 3, d // heads).permute(3, 0, 2, 1, 4)"),
}
# Checks a correct style may still fail by the rubric's policy, not by its function.
POLICY_EXEMPT = {"conv2d_patch_embedding": {"static.forbidden"}}

# The course's later revision: another keyword for the width and attention weights stored (H, B, N, N).
COURSE_REVISION = TIMM.replace("dim_hidden=512", "dim_embed=512").replace(
    "self.patch_embed = nn.Linear(3 * patch_size ** 2, dim_hidden)", "dim_hidden = dim_embed\n"
    "        self.patch_embed = nn.Linear(3 * patch_size ** 2, dim_hidden)").replace(
    "self.attn_weights = attn", "self.attn_weights = attn.transpose(0, 1)")


@dataclass(frozen=True)
class Difference:
    name: str
    style: str
    edits: tuple[tuple[str, str], ...]
    check: str
    words: str

    def source(self) -> str:
        text = STYLES[self.style]
        for old, new in self.edits:
            assert old in text, f"{self.name}: {old!r} not in {self.style}"
            text = text.replace(old, new)
        return text


def d(name: str, style: str, old: str, new: str, check: str, words: str) -> Difference:
    return Difference(name, style, ((old, new),), check, words)


TIMM_STYLE = "timm_block_attention_mlp_sequential"
PRENORM_STYLE = "prenorm_wrappers_nested_modulelists"
DIFFERENCES: tuple[Difference, ...] = (
    d("layer_norm_eps_1e-6", TIMM_STYLE, "norm_layer=nn.LayerNorm):", "norm_layer=None):\n"
      "        norm_layer = lambda dim: nn.LayerNorm(dim, eps=1e-6)  # noqa: E731", "equiv.encoder_layer", "eps"),
    d("qkv_bias", TIMM_STYLE, "def __init__(self, dim_hidden, num_heads):\n        super().__init__(dim_hidden, num_heads)",
      "def __init__(self, dim_hidden, num_heads):\n        super().__init__(dim_hidden, num_heads, qkv_bias=True)",
      "equiv.self_attention", "bias"),
    d("no_output_projection_bias", TIMM_STYLE, "self.proj = nn.Linear(dim, dim)", "self.proj = nn.Linear(dim, dim, bias=False)",
      "equiv.self_attention", "no bias"),
    d("extra_norms_in_attention_and_mlp", PRENORM_STYLE, "PreNorm(dim, FeedForward(dim, mlp_dim, dropout))",
      "PreNorm(dim, nn.Sequential(nn.LayerNorm(dim), FeedForward(dim, mlp_dim, dropout)))", "equiv.vit", "LayerNorm"),
    d("missing_second_norm", "inline_attention_sequential_fnn_subclass", "return x + self.mlp(self.ln_2(x))",
      "return x + self.mlp(x)", "equiv.encoder_layer", "LayerNorm"),
    d("scale_after_softmax", TIMM_STYLE, "attn = (q @ k.transpose(-2, -1)) * self.scale\n        attn = attn.softmax(dim=-1)",
      "attn = (q @ k.transpose(-2, -1)).softmax(dim=-1) * self.scale", "equiv.self_attention", "after the softmax"),
    d("one_layer_applied_n_times", TIMM_STYLE,
      "self.blocks = nn.Sequential(*[Block(dim_hidden, num_heads, dim_feedforward) for _ in range(num_layers)])",
      "block = Block(dim_hidden, num_heads, dim_feedforward)\n        self.blocks = nn.Sequential(*[block] * num_layers)",
      "equiv.vit", "share"),
    d("fixed_sincos_position", TIMM_STYLE,
      "self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim_hidden) * .02)",
      "pos = torch.arange(num_patches + 1)[:, None] / 10000 ** (torch.arange(dim_hidden)[None] / dim_hidden)\n"
      "        self.register_buffer('pos_embed', torch.where(torch.arange(dim_hidden) % 2 == 0, pos.sin(), pos.cos())[None])",
      "equiv.vit", "position embedding"),
    d("mean_pooling_with_class_token", TIMM_STYLE, "return self.head(x[:, 0])", "return self.head(x.mean(dim=1))",
      "equiv.vit", "mean"),
    d("mlp_width_ignored", TIMM_STYLE, "super().__init__(dim_hidden, dim_feedforward)",
      "super().__init__(dim_hidden, dim_hidden)", "equiv.fnn", "dim_feedforward"),
    d("tanh_gelu", PRENORM_STYLE, "nn.GELU()", "nn.GELU(approximate='tanh')", "equiv.fnn", "tanh"),
    Difference("readout_bug_behind_mlp_difference", PRENORM_STYLE,
               (("nn.GELU()", "nn.GELU(approximate='tanh')"), ("return self.mlp_head(x[:, 0])",
                                                               "return self.mlp_head(x.mean(dim=1))")),
               "equiv.vit", "mean"),
    d("post_norm", "inline_attention_sequential_fnn_subclass",
      "y, self.attn_weights = attend(self.ln_1(x), self.c_attn, self.c_proj, self.heads)\n        x = x + y\n"
      "        return x + self.mlp(self.ln_2(x))",
      "y, self.attn_weights = attend(x, self.c_attn, self.c_proj, self.heads)\n        x = self.ln_1(x + y)\n"
      "        return self.ln_2(x + self.mlp(x))", "equiv.encoder_layer", "post-norm"),
    d("no_class_token_mean_of_patches", TIMM_STYLE,
      "x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)\n        x = self.pos_drop(x + self.pos_embed)",
      "x = self.pos_drop(x + self.pos_embed[:, 1:])", "equiv.vit", "class token"),
)
