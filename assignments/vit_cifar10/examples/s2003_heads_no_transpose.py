

import torch
import torch.nn as nn

# ViTクラスの定義
class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8, dim_feedforward=512, num_layers=6):
        super().__init__()
        assert img_size % patch_size == 0  # 画像サイズがパッチサイズで割り切れるか確認

        # 初期化パラメータの設定
        self.img_size = img_size
        self.patch_size = patch_size
        num_patches = (img_size // patch_size) ** 2  # パッチの数を計算
        dim_patch = 3 * patch_size ** 2  # 各パッチの次元数

        # パッチ埋め込み層
        self.patch_embed = nn.Linear(dim_patch, dim_hidden)  # パッチを埋め込みベクトルに変換
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim_hidden))  # 位置エンコーディングの初期化
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim_hidden))  # クラストークンの初期化

        # Transformerエンコーダ層のスタック
        self.layers = nn.ModuleList([TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim_hidden)  # 最後のLayerNorm層
        self.linear = nn.Linear(dim_hidden, num_classes)  # 最終分類用の線形層

    def forward(self, x):
        bs, c, h, w = x.shape  # バッチサイズ、チャンネル、高さ、幅
        assert h == self.img_size and w == self.img_size  # 入力画像サイズが一致するか確認

        # 画像をパッチに分割し、各パッチを埋め込みベクトルに変換
        x = x.view(bs, c, h // self.patch_size, self.patch_size, w // self.patch_size, self.patch_size)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(bs, -1, 3 * self.patch_size ** 2)
        x = self.patch_embed(x)

        # クラストークンを追加し、位置エンコーディングを適用
        class_token = self.class_token.expand(bs, -1, -1)
        x = torch.cat((class_token, x), dim=1)
        x += self.pos_embed

        # Transformerエンコーダ層を通過
        for layer in self.layers:
            x = layer(x)

        # attention_weightsを保存
        self.attention_weights = self.layers[0].attention.attn_weights

        # 最終分類
        x = self.norm(x)[:, 0]
        return self.linear(x)

# TransformerEncoderLayerクラスの定義
class TransformerEncoderLayer(nn.Module):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__()
        self.attention = SelfAttention(dim_hidden, num_heads)  # 自己注意機構
        self.fnn = FNN(dim_hidden, dim_feedforward)  # フィードフォワードネットワーク
        self.norm1 = nn.LayerNorm(dim_hidden)  # 最初のLayerNorm
        self.norm2 = nn.LayerNorm(dim_hidden)  # 二番目のLayerNorm

    def forward(self, x):
        # 自己注意機構の出力に残差接続を追加
        x = x + self.attention(self.norm1(x))
        # フィードフォワードネットワークの出力に残差接続を追加
        x = x + self.fnn(self.norm2(x))
        return x

# SelfAttentionクラスの定義
class SelfAttention(nn.Module):
    def __init__(self, dim_hidden, num_heads, qkv_bias=False):
        super().__init__()
        assert dim_hidden % num_heads == 0  # 隠れ次元がヘッドの数で割り切れるか確認
        self.num_heads = num_heads  # 注意機構のヘッドの数
        dim_head = dim_hidden // num_heads  # 各ヘッドの次元数
        self.scale = dim_head ** -0.5  # スケーリング係数

        # 入力をQ、K、Vに投影する線形層
        self.proj_in = nn.Linear(dim_hidden, dim_hidden * 3, bias=qkv_bias)
        self.proj_out = nn.Linear(dim_hidden, dim_hidden)  # 出力の線形層

    def forward(self, x):
        bs, n, _ = x.shape  # バッチサイズとシーケンス長
        # Q、K、Vに分割して計算
        qkv = self.proj_in(x).view(bs, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # クエリ、キー、バリューに分割

        # 注意スコアを計算
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)  # ソフトマックスで正規化

        # コンテキストベクトルを計算
        x = (attn @ v).reshape(bs, n, -1)
        self.attn_weights = attn  # Attention weightsを保存
        return self.proj_out(x)

# FNNクラスの定義
class FNN(nn.Module):
    def __init__(self, dim_hidden, dim_feedforward):
        super().__init__()
        self.linear1 = nn.Linear(dim_hidden, dim_feedforward)  # 最初の線形変換
        self.linear2 = nn.Linear(dim_feedforward, dim_hidden)  # 次の線形変換
        self.activation = nn.GELU()  # 活性化関数

    def forward(self, x):
        # 線形変換 -> 活性化関数 -> 線形変換の順に適用
        return self.linear2(self.activation(self.linear1(x)))
