import torch
from torch import nn


class SelfAttention(nn.Module):
    """One small attention per head, computed in a Python loop."""

    def __init__(self, dim_hidden, num_heads, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.dim_head = dim_hidden // num_heads
        self.q = nn.ModuleList([nn.Linear(dim_hidden, self.dim_head, bias=qkv_bias) for _ in range(num_heads)])
        self.k = nn.ModuleList([nn.Linear(dim_hidden, self.dim_head, bias=qkv_bias) for _ in range(num_heads)])
        self.v = nn.ModuleList([nn.Linear(dim_hidden, self.dim_head, bias=qkv_bias) for _ in range(num_heads)])
        self.proj_out = nn.Linear(dim_hidden, dim_hidden)

    def forward(self, x):
        outputs, weights = [], []
        for h in range(self.num_heads):
            q, k, v = self.q[h](x), self.k[h](x), self.v[h](x)
            a = torch.softmax(q @ k.transpose(1, 2) / self.dim_head ** 0.5, dim=-1)
            weights.append(a)
            outputs.append(a @ v)
        self.attn_weights = torch.stack(weights, dim=1)
        return self.proj_out(torch.cat(outputs, dim=-1))


class FNN(nn.Module):
    def __init__(self, dim_hidden, dim_feedforward):
        super().__init__()
        self.fc1 = nn.Linear(dim_hidden, dim_feedforward)
        self.fc2 = nn.Linear(dim_feedforward, dim_hidden)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class TransformerEncoderLayer(nn.Module):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__()
        self.attention = SelfAttention(dim_hidden, num_heads)
        self.fnn = FNN(dim_hidden, dim_feedforward)
        self.norm1 = nn.LayerNorm(dim_hidden)
        self.norm2 = nn.LayerNorm(dim_hidden)

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        x = x + self.fnn(self.norm2(x))
        return x


class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8,
                 dim_feedforward=512, num_layers=6):
        super().__init__()
        self.p = patch_size
        self.patch_embed = nn.Linear(3 * patch_size * patch_size, dim_hidden)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim_hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2 + 1, dim_hidden))
        self.layers = nn.ModuleList([TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward)
                                     for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim_hidden)
        self.linear = nn.Linear(dim_hidden, num_classes)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.p
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        x = self.patch_embed(patches)
        x = torch.cat([self.class_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.linear(self.norm(x)[:, 0])
