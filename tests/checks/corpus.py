"""The test corpus: single-bug mutants of the handout's code and correct variants written differently.

Each mutant names the check that must fail and words its message must contain, so a test proves
that the failure points at the bug. Variants must get full marks (zero false failures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..conftest import EXAMPLES, HANDOUT_SOURCE


@dataclass(frozen=True)
class Mutant:
    name: str
    edits: tuple[tuple[str, str], ...]
    check: str  # a check id that must fail
    words: str  # a fragment of that check's message

    def source(self) -> str:
        text = HANDOUT_SOURCE
        for old, new in self.edits:
            assert old in text, f"{self.name}: {old!r} not in the handout"
            text = text.replace(old, new)
        return text


def m(name: str, old: str, new: str, check: str, words: str) -> Mutant:
    return Mutant(name, ((old, new),), check, words)


SOFTMAX = "attn = attn.softmax(dim=-1)"
SCALE = "attn = (q @ k.transpose(-2, -1)) * self.scale"
MERGE = "x = (attn @ v).transpose(1, 2).reshape(bs, n, -1)"
ATTN_RES = "x = x + self.attention(self.norm1(x))"
FNN_RES = "x = x + self.fnn(self.norm2(x))"
CAT = "x = torch.cat((class_token, x), dim=1)"
POS = "x += self.pos_embed"
READOUT = "x = self.norm(x)[:, 0]"
PERMUTE = "x = x.permute(0, 2, 4, 1, 3, 5).reshape(bs, -1, 3 * self.patch_size ** 2)"
QKV_VIEW = "qkv = self.proj_in(x).view(bs, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)"
LAYERS = "self.layers = nn.ModuleList([TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward) for _ in range(num_layers)])"

MUTANTS: tuple[Mutant, ...] = (
    m("softmax_over_queries", SOFTMAX, "attn = attn.softmax(dim=-2)", "equiv.self_attention", "query axis"),
    m("no_softmax", SOFTMAX, "pass", "props.attention_softmax", "softmax is missing"),
    m("no_scale", SCALE, "attn = (q @ k.transpose(-2, -1))", "equiv.self_attention", "not scaled"),
    m("scale_by_full_width", "self.scale = dim_head ** -0.5", "self.scale = dim_hidden ** -0.5",
      "equiv.self_attention", "1/sqrt(dim_hidden)"),
    m("scale_multiplied_by_sqrt", SCALE, "attn = (q @ k.transpose(-2, -1)) * dim_head_sqrt".replace(
        "dim_head_sqrt", "(q.shape[-1] ** 0.5)"), "equiv.self_attention", "sqrt(head dim) instead of divided"),
    m("heads_merged_without_transpose", MERGE, "x = (attn @ v).reshape(bs, n, -1)", "equiv.self_attention",
      "without transposing"),
    m("weights_times_keys", MERGE, "x = (attn @ k).transpose(1, 2).reshape(bs, n, -1)", "equiv.self_attention",
      "keys instead of the values"),
    m("no_output_projection", "return self.proj_out(x)", "return x", "equiv.self_attention",
      "output projection"),
    Mutant("weights_stored_before_softmax", ((SOFTMAX, "self.attn_weights = attn\n        attn = attn.softmax(dim=-1)"),
                                             ("self.attn_weights = attn  # Attention", "# self.attn_weights = attn  #")),
           "props.attention_softmax", "negative entries"),
    m("no_attention_residual", ATTN_RES, "x = self.attention(self.norm1(x))", "equiv.encoder_layer",
      "no residual connection around the attention"),
    m("no_fnn_residual", FNN_RES, "x = self.fnn(self.norm2(x))", "equiv.encoder_layer",
      "no residual connection around the FNN"),
    Mutant("residual_on_normalised_input", ((ATTN_RES, "x = self.norm1(x)\n        x = x + self.attention(x)"),),
           "equiv.encoder_layer", "normalised input"),
    m("no_pre_norm", ATTN_RES, "x = x + self.attention(x)", "equiv.encoder_layer", "norm1"),
    m("detached_attention_branch", ATTN_RES, "x = x + self.attention(self.norm1(x)).detach()", "props.gradients",
      "no gradient for"),
    m("relu_for_gelu", "self.activation = nn.GELU()", "self.activation = nn.ReLU()", "equiv.fnn", "ReLU"),
    m("tanh_gelu", "self.activation = nn.GELU()", "self.activation = nn.GELU(approximate='tanh')", "equiv.fnn",
      "tanh approximation"),
    m("no_activation", "return self.linear2(self.activation(self.linear1(x)))", "return self.linear2(self.linear1(x))",
      "equiv.fnn", "no activation"),
    Mutant("class_token_appended_last", ((CAT, "x = torch.cat((x, class_token), dim=1)"),),
           "equiv.vit", "appended after the patches"),
    m("no_position_embedding", POS, "pass", "equiv.vit", "position embedding is not added"),
    Mutant("position_before_class_token", ((CAT, "x = x + self.pos_embed[:, 1:]\n        x = torch.cat((class_token, x), dim=1)"),
                                           (POS, "pass")), "equiv.vit", "class token gets none"),
    m("reads_last_token", READOUT, "x = self.norm(x)[:, -1]", "equiv.vit", "last token"),
    m("mean_pooling", READOUT, "x = self.norm(x).mean(dim=1)", "equiv.vit", "mean of all tokens"),
    m("no_final_norm", READOUT, "x = x[:, 0]", "equiv.vit", "final LayerNorm"),
    m("patches_without_permute", PERMUTE, "x = x.reshape(bs, -1, 3 * self.patch_size ** 2)", "equiv.vit",
      "without permuting"),
    m("hard_coded_heads", QKV_VIEW, "qkv = self.proj_in(x).view(bs, n, 3, 8, 64).permute(2, 0, 3, 1, 4)",
      "shapes.vit_config", "shape"),
    m("hard_coded_patch_count", "num_patches = (img_size // patch_size) ** 2", "num_patches = 64",
      "shapes.vit_config", "must match"),
    m("shared_layers", LAYERS, "self.layers = nn.ModuleList([TransformerEncoderLayer(dim_hidden, num_heads, "
      "dim_feedforward)] * num_layers)", "equiv.vit", "share their weights"),
    # A read-out bug must not hide behind a small error in the FNN ("wired as in the handout" is claimed
    # only after the stages after the layers are checked on the student's own values).
    Mutant("readout_bug_behind_fnn_error", (("return self.linear2(self.activation(self.linear1(x)))",
                                             "return self.linear2(self.activation(self.linear1(x))) + 1e-3"),
                                            (READOUT, "x = self.norm(x)[:, -1]")), "equiv.vit", "last token"),
    m("dropout_in_eval_mode", SOFTMAX, "attn = F.dropout(attn.softmax(dim=-1), 0.1, training=True)",
      "props.determinism", "eval mode"),
    m("softmax_over_batch", SOFTMAX, "attn = attn.softmax(dim=0)", "props.batch_independence", "depends on the other"),
    Mutant("uses_multihead_attention", (("self.attention = SelfAttention(dim_hidden, num_heads)",
                                         "self.attention = SelfAttention(dim_hidden, num_heads)\n"
                                         "        self.mha = nn.MultiheadAttention(dim_hidden, num_heads)"),),
           "static.forbidden", "MultiheadAttention"),
    m("uses_sdpa", "attn = attn.softmax(dim=-1)", "attn = attn.softmax(dim=-1)\n        _ = F.scaled_dot_product_attention(q, k, v)",
      "static.forbidden", "scaled_dot_product_attention"),
)

HEAD_MAJOR = """
    def forward(self, x):
        bs, n, _ = x.shape
        qkv = self.proj_in(x).view(bs, n, self.num_heads, 3, -1).permute(3, 0, 2, 1, 4)  # head-major layout
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        self.attn_weights = attn
        return self.proj_out((attn @ v).transpose(1, 2).reshape(bs, n, -1))
"""

RAW_PARAMETERS = '''import math
import torch
import torch.nn as nn


class SelfAttention(nn.Module):
    """Raw parameters used as x @ W, heads via einsum."""

    def __init__(self, dim_hidden, num_heads, qkv_bias=False):
        super().__init__()
        self.h = num_heads
        self.W_q = nn.Parameter(torch.randn(dim_hidden, dim_hidden) / math.sqrt(dim_hidden))
        self.W_k = nn.Parameter(torch.randn(dim_hidden, dim_hidden) / math.sqrt(dim_hidden))
        self.W_v = nn.Parameter(torch.randn(dim_hidden, dim_hidden) / math.sqrt(dim_hidden))
        self.W_o = nn.Parameter(torch.randn(dim_hidden, dim_hidden) / math.sqrt(dim_hidden))
        self.b_o = nn.Parameter(torch.zeros(dim_hidden))

    def forward(self, x):
        b, n, d = x.shape
        q = (x @ self.W_q).view(b, n, self.h, -1)
        k = (x @ self.W_k).view(b, n, self.h, -1)
        v = (x @ self.W_v).view(b, n, self.h, -1)
        a = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
        a = a.softmax(-1)
        self.attn_weights = a
        out = torch.einsum("bhij,bjhd->bihd", a, v).reshape(b, n, d)
        return out @ self.W_o + self.b_o
'''

TRAINING_SCRIPT = '''
if __name__ == "__main__":
    net = ViT()
    assert torch.cuda.is_available(), "GPU needed"

for epoch in range(3):
    print("training epoch", epoch)
trainset = torchvision.datasets.CIFAR10(root="./data", download=True)
'''


# Correct variants that use a layer the handout rules out (「畳み込み層やプーリング層を使わずに」): full marks
# for the math, and static.forbidden names the layer (the rubric can lift the ban).
HANDOUT_POLICY = {"separate_qkv_einsum_dropout_conv": "torch.nn.Conv2d"}


def variants() -> dict[str, str | Path]:
    """name -> source (str) or file (Path) of a correct submission; every one must get full marks."""
    handout_classes = HANDOUT_SOURCE.split("# TransformerEncoderLayerクラスの定義")[0]
    encoder_and_fnn = "# TransformerEncoderLayerクラスの定義" + HANDOUT_SOURCE.split(
        "# TransformerEncoderLayerクラスの定義")[1].split("# SelfAttentionクラスの定義")[0]
    fnn = "# FNNクラスの定義" + HANDOUT_SOURCE.split("# FNNクラスの定義")[1]
    head_major = HANDOUT_SOURCE.split("    def forward(self, x):\n        bs, n, _ = x.shape")[0]
    after = HANDOUT_SOURCE.split("        return self.proj_out(x)")[1]
    return {
        "handout_verbatim": HANDOUT_SOURCE,
        "handout_notebook_with_magics": EXAMPLES / "s1001_handout.ipynb",
        "separate_qkv_einsum_dropout_conv": EXAMPLES / "s1002_separate_qkv.py",
        "loop_over_heads_folder": EXAMPLES / "s1003_loop_heads",
        "fused_head_major_layout": head_major + HEAD_MAJOR + after,
        "raw_parameters_x_at_w": RAW_PARAMETERS + "\n" + handout_classes.split('"""', 2)[2].split("import torch.nn as nn")[1]
        + encoder_and_fnn + fnn,
        "top_level_training_code": "import torchvision\n" + HANDOUT_SOURCE + TRAINING_SCRIPT,
        # A permutation of the patch embedding's input columns: the same model (policy in the README).
        "channel_last_patches": HANDOUT_SOURCE.replace(
            PERMUTE, "x = x.permute(0, 2, 4, 3, 5, 1).reshape(bs, -1, 3 * self.patch_size ** 2)"),
    }
