# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] lang="ja"
# # Vision Transformer (ViT) による画像分類
#
# ### はじめに
#
# 前回、CNN（畳み込みニューラルネットワーク）を使用してCIFAR-10データセットの分類を行いました。CNNでは、畳み込み層やプーリング層を使用して画像から特徴量を抽出し、最終的に分類を行います。しかし、今回の課題では畳み込み層やプーリング層を使わずに、同様のタスクを Vision Transformer (ViT) を使って実行してみましょう。
#
# ### ViTとは
#
# <a title="Davide Coccomini, CC BY-SA 4.0 &lt;https://creativecommons.org/licenses/by-sa/4.0&gt;, via Wikimedia Commons" href="https://commons.wikimedia.org/wiki/File:Vision_Transformer.gif"><img width="512" alt="Vision Transformer" src="https://upload.wikimedia.org/wikipedia/commons/thumb/3/3e/Vision_Transformer.gif/512px-Vision_Transformer.gif?20230818142429"></a>
#
# Vision Transformer (ViT) は、自然言語処理で成功を収めたTransformerモデルを画像認識に適用したものです。TransformerはAttentionメカニズムを使用して、入力データの重要な部分に焦点を当てることで特徴量を抽出します。これにより、ViTは画像全体を処理するのではなく、部分的な情報からも高い特徴抽出能力を発揮します。
#
# ### CNN と ViT
#
# CNNの場合、以下の2種類の層を繰り返し用いて特徴量を抽出します。
#
# - **畳み込み層**<br>
# 異なるフィルタを画像に適用して、エッジやテクスチャなどの低レベルの特徴を検出します。
# - **プーリング層**<br>
# 空間的な次元を削減し、計算量を減らしながら重要な特徴を保持します。
#
# CNN におけるこれらの処理では、**固定のカーネル** を使用し、局所的な特徴を抽出します。局所的なパターン認識に優れていますが、画像全体の文脈を直接捉えることは難しいです。畳み込み層により、画像全体に同じフィルタが適用されます。
#
# ViTは、特徴量のうち識別に有効な部分だけを重み付けします。自己注意機構を使用して、各パッチのうち、分類に有効そうなものに高い重みを与えるようになっています。これにより、対象物が画像の一部にしか写っていなくても、その部分の特徴を中心に画像を表現できます。
#
# ### 特徴抽出の流れ
#
# ViT の場合は、以下の手順で特徴量を抽出します。
#
# <img src="https://github.com/shizoda/education/assets/34496702/f4d8612f-66a6-4302-8163-dd5d8d63f27d" width=60%>
#
# *[原論文 [Dosovitskiy21]](https://openreview.net/forum?id=YicbFdNTTy) Fig. 1 の一部。全体構成を表す*
#
# - **パッチ分割**<br>
# 画像を小さな固定サイズのパッチに分割します。例えば、32x32のCIFAR-10の画像を一辺 4 ピクセルのパッチに分割すると、縦横 8x8 = 64 個のパッチが得られます。
# - **パッチ埋め込み** <br>
# 各パッチを固定長のベクトルに変換します。各パッチをフラットにして線形層に通すことで行います。例えば、4x4 ピクセル・3 チャネルのパッチは 48 次元のベクトルになり、それを指定した次元の埋め込みベクトル（ここでは 512 次元）へ線形層により変換します。
# - **位置エンコーディング** <br>
# 上で得られた埋め込みベクトルにはパッチの位置情報が与えられていないため、モデルは各パッチがどの位置にあるかを認識できません。位置エンコーディングは、学習可能なベクトルを加算することで、各パッチに位置情報を持たせます。モデルが画像の構造を理解するのに役立ちます。
# - **クラストークン**<br>
# 画像全体の特徴を表すために導入される特別なトークンです。このトークンは、全てのパッチ埋め込みと同じ次元を持ち、パッチの列の先頭に追加されます。最終的な分類結果は、このクラストークンの表現から得られます。
# - **Transformerエンコーダ** <br>
# パッチ埋め込みと位置エンコーディングを行った後、これらのベクトルはTransformerエンコーダに入力されます。エンコーダは複数の層からなり、各層は自己注意機構とフィードフォワードネットワークから構成されます。自己注意機構により、各パッチが他の全てのパッチとの関係を学習します。これにより、画像全体の文脈を考慮した特徴量を抽出できます。
#
# ### ViT のメリット
#
# 本来はもっと幅広いメリットがあるのですが、今回は Attention（注意）メカニズムに初めて触れる意味で、その名からわかりやすい以下の２点に着目してもらえれば十分と思います。
#
# - **部分的な情報からの特徴抽出**<br>
# ViTは、画像の一部にしか対象物が映っていない場合でも、その部分から有効な特徴量を抽出できます。これは自己注意機構 (Self-Attention Mechanism) が、画像中の重要な部分のパッチに大きな重みを与え、その部分からの特徴量を主として画像を表すからです。
# - **自己注意機構による可視化**<br>
# モデルがどの部分に注目するかを可視化することもできます。これにより、判断根拠をある程度可視化することが可能です。
#
# ### パッチ間の相互関係と画像理解
#
# Transformerの自己注意機構では、各パッチが他の全てのパッチに対して注意を向けることができます。これにより、画像の一部分の情報が他の部分の情報とどのように関係しているかを学習できます。これにより、画像全体のコンテキストを捉えることができ、より精度の高い特徴抽出と分類が可能になります。
#
# ### この課題で書くところ
#
# `NotImplementedError` を送出しているところ（`SelfAttention.forward`、`ViT.forward` のパッチ分割・クラストークン・最終分類）を実装し、**課題１〜３** の回答セルに答えてください。最後の「自己チェック」セルで、提出前に採点と同じチェックを実行できます。

# %% [markdown] lang="en"
# # Image classification with a Vision Transformer (ViT)
#
# ### Introduction
#
# Last time we classified the CIFAR-10 dataset with a CNN (convolutional neural network). A CNN extracts features from an image with convolution and pooling layers and then classifies it. In this assignment we do the same task without convolution or pooling layers, with a Vision Transformer (ViT).
#
# ### What is a ViT?
#
# <a title="Davide Coccomini, CC BY-SA 4.0 &lt;https://creativecommons.org/licenses/by-sa/4.0&gt;, via Wikimedia Commons" href="https://commons.wikimedia.org/wiki/File:Vision_Transformer.gif"><img width="512" alt="Vision Transformer" src="https://upload.wikimedia.org/wikipedia/commons/thumb/3/3e/Vision_Transformer.gif/512px-Vision_Transformer.gif?20230818142429"></a>
#
# The Vision Transformer (ViT) applies the Transformer, which succeeded in natural language processing, to image recognition. A Transformer extracts features with an attention mechanism that focuses on the important parts of its input. This lets a ViT extract strong features even from part of an image, rather than treating the whole image uniformly.
#
# ### CNN and ViT
#
# A CNN extracts features by repeating two kinds of layers:
#
# - **Convolution layers**<br>
# apply different filters to the image to detect low-level features such as edges and textures.
# - **Pooling layers**<br>
# reduce the spatial size, keeping the important features while cutting computation.
#
# These operations use **fixed kernels** and extract local features. They are good at recognising local patterns, but it is hard for them to capture the context of the whole image directly. A convolution layer applies the same filter everywhere in the image.
#
# A ViT weights only the parts of the features that help to discriminate. Its self-attention mechanism gives high weights to the patches that look useful for classification. So even when the object fills only part of the image, the image can be represented mainly by the features of that part.
#
# ### How features are extracted
#
# A ViT extracts features in these steps:
#
# <img src="https://github.com/shizoda/education/assets/34496702/f4d8612f-66a6-4302-8163-dd5d8d63f27d" width=60%>
#
# *Part of Fig. 1 of [the original paper [Dosovitskiy21]](https://openreview.net/forum?id=YicbFdNTTy), showing the overall structure*
#
# - **Patch split**<br>
# The image is split into small patches of a fixed size. Splitting a 32x32 CIFAR-10 image into patches 4 pixels wide gives 8x8 = 64 patches.
# - **Patch embedding**<br>
# Each patch becomes a vector of fixed length: it is flattened and passed through a linear layer. A 4x4-pixel, 3-channel patch is a 48-dimensional vector, which a linear layer maps to an embedding of the chosen size (512 here).
# - **Position embedding**<br>
# The embeddings carry no information about where each patch was, so the model could not tell the patches' positions apart. The position embedding adds a learnable vector to each patch, which helps the model understand the image's structure.
# - **Class token**<br>
# A special token that represents the whole image. It has the same size as the patch embeddings and is put in front of the sequence of patches. The final classification is read from this token's representation.
# - **Transformer encoder**<br>
# After patch and position embedding, the vectors enter the Transformer encoder. It has several layers, each made of self-attention and a feed-forward network. Self-attention lets every patch learn its relation to all other patches, so the features take the context of the whole image into account.
#
# ### Advantages of a ViT
#
# There are many more, but as a first contact with attention it is enough to focus on the two that its name suggests:
#
# - **Features from part of an image**<br>
# A ViT can extract useful features even when the object fills only part of the image: self-attention gives large weights to the important patches and represents the image mainly by their features.
# - **Visualisation through attention**<br>
# We can visualise where the model pays attention, which shows to some degree what its decision was based on.
#
# ### Relations between patches and understanding the image
#
# In self-attention every patch can attend to all other patches, so the model learns how the information in one part of the image relates to the other parts. This captures the context of the whole image and allows more accurate features and classification.
#
# ### What you write in this assignment
#
# Implement the places that raise `NotImplementedError` (`SelfAttention.forward`, and the patch split, class token and read-out in `ViT.forward`) and answer **Tasks 1–3** in their answer cells. The "Self-check" cell at the end runs the grader's checks before you submit.

# %%
# ja: PyTorch 関連のライブラリをインポートします
# en: Import PyTorch and the other libraries
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
import torchvision.transforms as transforms
from torch.utils.data import random_split

# ja: GPU があれば使い、なければ CPU で実行します（CPU では学習に時間がかかります）
# en: Use the GPU when there is one; on the CPU training is slow
device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
if device.type == "cpu":
    # ja: Colab では「ランタイム」→「ランタイムのタイプを変更」で GPU を選べます
    # en: In Colab, choose a GPU under Runtime -> Change runtime type
    print("GPU not available: running on the CPU")

# %% [markdown] lang="ja"
# ### ViTクラスの定義
#
# ViTクラスは、ViTモデル全体を定義するクラスです。画像をパッチに分割し、各パッチを埋め込んだ後、Transformerエンコーダを通じて特徴量を抽出し、最終的にクラスを予測します。
#
# 今回の実装では、以下の表のようにサイズ (shape) が変わっていきます。
#
# | ステージ | 形状 |
# |----------|-------------------|
# | 入力画像 | $(B, 3, 32, 32)$ |
# | パッチ分割 | $(B, 64, 48)$ |
# | パッチ埋め込み | $(B, 64, 512)$ |
# | クラストークン追加後 | $(B, 65, 512)$ |
# | 位置エンコーディング追加後 | $(B, 65, 512)$ |
# | Transformerエンコーダ後 | $(B, 65, 512)$ |
# | 最終分類 (クラストークンの抽出) | $(B, 512)$ |
# | 線形層通過後 | $(B, クラス数)$ |
#
# #### 入力画像サイズ
# - 入力画像のサイズは $(C, H, W)$ です。ここでは $C = 3$、$H = W = 32$ です。
#
# #### パッチ分割
# - パッチサイズを $P\times P$ とすると、ここでは $P=4$ です。
# - したがって、パッチの数は $(H \times W)/(P \times P)=64$ となります。
# - 各パッチは $(C, P, P)$ の順に平らにします（チャネルが一番外側）。パッチは左上から行ごとに並べます。
#
# #### パッチ埋め込み
# - 各パッチの次元は $3 \times P^2 = 3 \times 4^2 = 48$ です。
# - パッチ埋め込み層では、これを埋め込み次元 $D = 512$ のベクトルに変換します。つまり、パッチの埋め込みベクトルの形状は $(B, 64, 512)$ になります。ここで $B$ はバッチサイズです。
#
# #### クラストークンと位置エンコーディング
# - **クラストークン（class token）** は、画像全体の特徴を表現するために使用されます。これは、パッチ埋め込みベクトルの**先頭**に追加され、その形状は $(B, 1, 512)$ です。
# - **位置エンコーディング（position embedding）** は、各パッチの位置情報を保持するために使用されます。クラストークンを追加した後の列に加えるので、加えた後の形状は $(B, 65, 512)$ となります。
#
# #### Transformerエンコーダ
# - **Transformerエンコーダ**は、自己注意機構を用いて各パッチ間の関係を学習します。入力の形状は $(B, 65, 512)$ です。
# - 各エンコーダ層では、入力ベクトルが自己注意機構とフィードフォワードネットワークを通過します。全ての層の後で、最後に LayerNorm によって正規化されます。
#
# #### 最終分類
# - 最後に、クラストークンの表現（先頭、インデックス 0）が最終的な特徴ベクトルとして取り出され、線形層を通じてクラス分類が行われます。出力形状は $(B, クラス数)$ です。

# %% [markdown] lang="en"
# ### The ViT class
#
# The ViT class defines the whole model. It splits the image into patches, embeds each patch, extracts features with the Transformer encoder and finally predicts the class.
#
# In this implementation the shapes change as in this table:
#
# | Stage | Shape |
# |----------|-------------------|
# | Input image | $(B, 3, 32, 32)$ |
# | Patch split | $(B, 64, 48)$ |
# | Patch embedding | $(B, 64, 512)$ |
# | Class token prepended | $(B, 65, 512)$ |
# | Position embedding added | $(B, 65, 512)$ |
# | After the Transformer encoder | $(B, 65, 512)$ |
# | Read-out (the class token) | $(B, 512)$ |
# | After the linear layer | $(B, \text{classes})$ |
#
# #### Input size
# - The input is $(C, H, W)$, here $C = 3$ and $H = W = 32$.
#
# #### Patch split
# - With patches of $P\times P$ pixels, here $P=4$,
# - the number of patches is $(H \times W)/(P \times P)=64$.
# - Each patch is flattened in $(C, P, P)$ order (channel outermost), and the patches are ordered row by row from the top left.
#
# #### Patch embedding
# - Each patch has $3 \times P^2 = 3 \times 4^2 = 48$ values.
# - The patch embedding maps it to a vector of the embedding size $D = 512$, so the embedded patches are $(B, 64, 512)$, where $B$ is the batch size.
#
# #### Class token and position embedding
# - The **class token** represents the whole image. It is put **in front of** the patch embeddings; its shape is $(B, 1, 512)$.
# - The **position embedding** keeps each patch's position. It is added to the sequence after the class token is prepended, giving $(B, 65, 512)$.
#
# #### Transformer encoder
# - The **Transformer encoder** learns the relations between patches with self-attention. Its input is $(B, 65, 512)$.
# - In each encoder layer the vectors pass through self-attention and the feed-forward network. After the last layer, a LayerNorm normalises them.
#
# #### Classification
# - Finally the class token's representation (the first token, index 0) is taken as the feature vector and a linear layer classifies it. The output is $(B, \text{classes})$.

# %%
# ja: ViTクラスの定義
# en: The ViT class
class ViT(nn.Module):
    def __init__(self, num_classes=10, img_size=32, patch_size=4, dim_hidden=512, num_heads=8, dim_feedforward=512,
                 num_layers=6):
        super().__init__()
        # ja: 画像サイズがパッチサイズで割り切れるか確認
        # en: the image must split into whole patches
        assert img_size % patch_size == 0

        self.img_size = img_size
        self.patch_size = patch_size
        # ja: パッチの数と各パッチの次元数
        # en: number of patches and values per patch
        num_patches = (img_size // patch_size) ** 2
        dim_patch = 3 * patch_size ** 2

        # ja: パッチ埋め込み層、位置エンコーディング、クラストークン
        # en: patch embedding, position embedding and class token
        self.patch_embed = nn.Linear(dim_patch, dim_hidden)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim_hidden))
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim_hidden))

        # ja: Transformerエンコーダ層のスタック、最後のLayerNorm、分類用の線形層
        # en: the stack of encoder layers, the final LayerNorm and the classification layer
        self.layers = nn.ModuleList(
            [TransformerEncoderLayer(dim_hidden, num_heads, dim_feedforward) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim_hidden)
        self.linear = nn.Linear(dim_hidden, num_classes)

    def forward(self, x):
        # ja: バッチサイズ、チャンネル、高さ、幅
        # en: batch size, channels, height, width
        bs, c, h, w = x.shape
        assert h == self.img_size and w == self.img_size
        p = self.patch_size

        # BEGIN SOLUTION
        # ja: 画像をパッチに分割します: (B, 3, H, W) -> (B, パッチ数, 3*P*P)
        # en: Split the image into patches: (B, 3, H, W) -> (B, patches, 3*P*P)
        x = x.view(bs, c, h // p, p, w // p, p)
        x = x.permute(0, 2, 4, 1, 3, 5).reshape(bs, -1, c * p * p)
        # END SOLUTION
        x = self.patch_embed(x)

        # BEGIN SOLUTION
        # ja: クラストークンを先頭に追加し、位置エンコーディングを加えます: -> (B, パッチ数+1, D)
        # en: Prepend the class token and add the position embedding: -> (B, patches+1, D)
        class_token = self.class_token.expand(bs, -1, -1)
        x = torch.cat((class_token, x), dim=1)
        x = x + self.pos_embed
        # END SOLUTION

        for layer in self.layers:
            x = layer(x)

        # BEGIN SOLUTION
        # ja: 最後のLayerNormの後、クラストークン（インデックス 0）を取り出して分類します: -> (B, クラス数)
        # en: After the final LayerNorm, read out the class token (index 0) and classify it: -> (B, classes)
        x = self.norm(x)[:, 0]
        return self.linear(x)
        # END SOLUTION

# %% [markdown] lang="ja" tags=["task1"]
# #### **課題１**
#
# (1) 全体的なネットワークの図を描いてください。各ステップごとに shape がどうなるかも書き込んでください。図は画像を下のセルに貼り付けるか（Jupyter でも Colab でも画像はノートブックの中に保存されます。別ファイル `![図](diagram.png)` にする場合は、ノートブックと画像を .zip にまとめて提出してください）、テキストで描いてください。
#
# (2) 下の `task1_shapes` に、各ステージの shape を書いてください（自動採点）。バッチサイズは `"B"` と書きます。`"default"` は上の表の設定、`"second"` は次の設定です:
# `ViT(num_classes=100, img_size=48, patch_size=8, dim_hidden=192, num_heads=6, dim_feedforward=384, num_layers=4)`

# %% [markdown] lang="en" tags=["task1"]
# #### **Task 1**
#
# (1) Draw a diagram of the whole network, with the shape at every step. Paste the image into the cell below (Jupyter and Colab keep a pasted image inside the notebook; if you link a separate file, `![diagram](diagram.png)`, submit the notebook and the file together in a .zip) or draw it as text.
#
# (2) Fill in the shape at every stage in `task1_shapes` below (graded automatically). Write the batch size as `"B"`. `"default"` is the configuration of the table above, `"second"` is this one:
# `ViT(num_classes=100, img_size=48, patch_size=8, dim_hidden=192, num_heads=6, dim_feedforward=384, num_layers=4)`

# %% [markdown] lang="ja" version="student" tags=["task1", "task1-diagram"]
# **課題１ (1) の回答：** （ここに図を貼るか、テキストで描いてください）

# %% [markdown] lang="en" version="student" tags=["task1", "task1-diagram"]
# **Answer to Task 1 (1):** (paste or draw your diagram here)

# %% [markdown] lang="ja" version="solution" tags=["task1", "task1-diagram"]
# **課題１ (1) の回答（例）：**
#
# ```
# 画像 (B,3,32,32) → パッチ分割 (B,64,48) → パッチ埋め込み Linear(48→512) (B,64,512)
#   → クラストークンを先頭に追加 (B,65,512) → 位置エンコーディングを加算 (B,65,512)
#   → [LayerNorm → SelfAttention → +残差 → LayerNorm → FNN → +残差] × 6 層 (B,65,512)
#   → LayerNorm → クラストークン [:,0] (B,512) → Linear(512→10) (B,10)
# ```

# %% [markdown] lang="en" version="solution" tags=["task1", "task1-diagram"]
# **Answer to Task 1 (1) (example):**
#
# ```
# image (B,3,32,32) → patch split (B,64,48) → patch embedding Linear(48→512) (B,64,512)
#   → prepend the class token (B,65,512) → add the position embedding (B,65,512)
#   → [LayerNorm → SelfAttention → +residual → LayerNorm → FNN → +residual] × 6 layers (B,65,512)
#   → LayerNorm → class token [:,0] (B,512) → Linear(512→10) (B,10)
# ```

# %% version="student" tags=["task1", "task1-shapes"]
# ja: 課題１ (2): ... をタプルで置き換えてください。例: ("B", 3, 32, 32)
# en: Task 1 (2): replace each ... with a tuple, for example ("B", 3, 32, 32)
task1_shapes = {
    "default": {
        "input": ..., "patches": ..., "patch_embedding": ..., "class_token": ..., "position_embedding": ...,
        "encoder": ..., "class_vector": ..., "logits": ...,
    },
    "second": {
        "input": ..., "patches": ..., "patch_embedding": ..., "class_token": ..., "position_embedding": ...,
        "encoder": ..., "class_vector": ..., "logits": ...,
    },
}

# %% version="solution" tags=["task1", "task1-shapes"]
# ja: 課題１ (2) の回答
# en: Task 1 (2)
task1_shapes = {
    "default": {
        "input": ("B", 3, 32, 32), "patches": ("B", 64, 48), "patch_embedding": ("B", 64, 512),
        "class_token": ("B", 65, 512), "position_embedding": ("B", 65, 512), "encoder": ("B", 65, 512),
        "class_vector": ("B", 512), "logits": ("B", 10),
    },
    "second": {
        "input": ("B", 3, 48, 48), "patches": ("B", 36, 192), "patch_embedding": ("B", 36, 192),
        "class_token": ("B", 37, 192), "position_embedding": ("B", 37, 192), "encoder": ("B", 37, 192),
        "class_vector": ("B", 192), "logits": ("B", 100),
    },
}

# %% [markdown] lang="ja"
# ### TransformerEncoderLayer クラスの定義
#
# TransformerEncoderLayer クラスは、1つのTransformerエンコーダ層を定義します。各エンコーダ層は自己注意機構とフィードフォワードネットワーク（FNN）から構成され、入力データの相互関係を学習します。
#
# エンコーダ層の役割は、入力シーケンス内の異なる要素間の関係を学習することです。これにより、画像内の異なるパッチ間の関係を理解し、より豊かな特徴表現を得ることができます。
#
# 具体的には、エンコーダ層では以下の手順で処理が行われます：
#
# - **正規化** <br>
# 各サブレイヤーの**入力**を LayerNorm で正規化します（Pre-LN）。
# - **自己注意機構** <br>
# 入力データの各部分の重要度を計算し、重要な部分に焦点を当てます。これにより、入力データの相互関係を学習します。
# - **フィードフォワードネットワーク（FNN）**<br>
# 自己注意機構の出力に対して、2層の全結合ネットワークを適用します。これにより、特徴表現がさらに強化されます。
# - **残差接続**<br>
# 各サブレイヤーの出力を（正規化する前の）入力に加算することで、学習を安定させます。

# %% [markdown] lang="en"
# ### The TransformerEncoderLayer class
#
# The TransformerEncoderLayer class defines one encoder layer. Each layer is made of self-attention and a feed-forward network (FNN) and learns the relations within its input.
#
# Its role is to learn the relations between the elements of the input sequence: here, between the patches of the image, which gives richer features.
#
# Concretely, an encoder layer does this:
#
# - **Normalisation**<br>
# The **input** of each sub-layer is normalised with LayerNorm (pre-LN).
# - **Self-attention**<br>
# computes how important each part of the input is and focuses on the important parts, learning the relations within the input.
# - **Feed-forward network (FNN)**<br>
# a two-layer fully connected network applied to the output of self-attention, which strengthens the features further.
# - **Residual connections**<br>
# each sub-layer's output is added to its (un-normalised) input, which stabilises training.

# %%
# ja: TransformerEncoderLayerクラスの定義
# en: The TransformerEncoderLayer class
class TransformerEncoderLayer(nn.Module):
    def __init__(self, dim_hidden, num_heads, dim_feedforward):
        super().__init__()
        self.attention = SelfAttention(dim_hidden, num_heads)
        self.fnn = FNN(dim_hidden, dim_feedforward)
        self.norm1 = nn.LayerNorm(dim_hidden)
        self.norm2 = nn.LayerNorm(dim_hidden)

    def forward(self, x):
        # ja: 自己注意機構の出力に残差接続を追加
        # en: self-attention with a residual connection
        x = x + self.attention(self.norm1(x))
        # ja: フィードフォワードネットワークの出力に残差接続を追加
        # en: the feed-forward network with a residual connection
        x = x + self.fnn(self.norm2(x))
        return x

# %% [markdown] lang="ja"
# ### SelfAttention クラスの定義
#
# SelfAttention クラスは、自己注意機構を定義します。
#
# CNN では、固定のカーネル（フィルタ）が画像の各位置に対して適用され、特徴マップが生成されます。これにより、局所的な特徴を抽出することができますが、画像全体の文脈を考慮することは困難です。
#
# ViTは、特徴量のうち **識別に有効な部分だけを重み付け** する効果があります。これを実現するのが自己注意機構（Self-Attention Mechanism）です。自己注意機構では、クエリとキーの内積を計算し、ソフトマックス関数を用いて重み付けを行います。この重みをバリューに掛けることで、重要な特徴量に対して高い重みを与え、そうでない部分には低い重みを与えることができます。
#
# #### **クエリ（Query）、キー（Key）、バリュー（Value）** の計算
#
# 入力パッチの特徴ベクトルを$\mathbf{X}$とし、それに重み行列$\mathbf{W_Q}$、$\mathbf{W_K}$、$\mathbf{W_V}$を掛けることで、クエリ$\mathbf{Q}$、キー$\mathbf{K}$、バリュー$\mathbf{V}$を得ます：
#
# $$\mathbf{Q} = \mathbf{X} \mathbf{W_Q}, \quad \mathbf{K} = \mathbf{X} \mathbf{W_K}, \quad \mathbf{V} = \mathbf{X} \mathbf{W_V}$$
#
# ここで、$\mathbf{W_Q}$、$\mathbf{W_K}$、$\mathbf{W_V}$は学習可能なパラメータです。この実装では 3 つをまとめて 1 つの線形層 `proj_in`（出力 $3D$）で計算し、出力を $(3, \text{ヘッド数}, D_h)$ の順に分けます（$D_h = D / \text{ヘッド数}$）。
#
# #### **注意スコア** の計算
#
# クエリ$\mathbf{Q}$とキー$\mathbf{K}$の内積を計算し、**ヘッドあたりの次元数** $D_h$ の平方根 $\sqrt{D_h}$ で割ります。この結果に**キーの方向に**ソフトマックス関数を適用して、注意の重みを得ます。各クエリについて、全てのキーに対する重みの合計が 1 になります：
#
# $$\text{Attention}(\mathbf{Q}, \mathbf{K}, \mathbf{V}) = \text{softmax}\left(\frac{\mathbf{Q}\mathbf{K}^T}{\sqrt{D_h}}\right)\mathbf{V}$$
#
# #### ソフトマックスおよびバリューの計算
# 最後に、この注意の重みをバリュー $\mathbf{V}$ に掛けることで、各パッチの情報を重み付けして集約します。各ヘッドの結果を元の順 $(B, N, D)$ に戻して連結し、出力の線形層 `proj_out` を通します。注意の重みは、後で可視化するために `self.attn_weights`（形状 $(B, \text{ヘッド数}, N, N)$）に保存してください。

# %% [markdown] lang="en"
# ### The SelfAttention class
#
# The SelfAttention class defines self-attention.
#
# A CNN applies fixed kernels (filters) at every position of the image to produce feature maps. This extracts local features, but it is hard to take the context of the whole image into account.
#
# A ViT **weights only the parts of the features that help to discriminate**. Self-attention does this: it takes the dot products of queries and keys and turns them into weights with a softmax. Multiplying the values by these weights gives high weight to important features and low weight to the rest.
#
# #### Computing the **query, key and value**
#
# With the patches' feature vectors $\mathbf{X}$ and weight matrices $\mathbf{W_Q}$, $\mathbf{W_K}$, $\mathbf{W_V}$, the queries $\mathbf{Q}$, keys $\mathbf{K}$ and values $\mathbf{V}$ are:
#
# $$\mathbf{Q} = \mathbf{X} \mathbf{W_Q}, \quad \mathbf{K} = \mathbf{X} \mathbf{W_K}, \quad \mathbf{V} = \mathbf{X} \mathbf{W_V}$$
#
# $\mathbf{W_Q}$, $\mathbf{W_K}$ and $\mathbf{W_V}$ are learnable. This implementation computes all three with one linear layer `proj_in` (output $3D$) and splits its output in the order $(3, \text{heads}, D_h)$, with $D_h = D / \text{heads}$.
#
# #### Computing the **attention scores**
#
# Take the dot products of the queries $\mathbf{Q}$ and keys $\mathbf{K}$ and divide by $\sqrt{D_h}$, the square root of the **dimension per head**. A softmax **over the keys** turns them into attention weights: for each query the weights over all keys sum to 1:
#
# $$\text{Attention}(\mathbf{Q}, \mathbf{K}, \mathbf{V}) = \text{softmax}\left(\frac{\mathbf{Q}\mathbf{K}^T}{\sqrt{D_h}}\right)\mathbf{V}$$
#
# #### Softmax and values
# Finally the attention weights multiply the values $\mathbf{V}$, which gathers the patches' information by weight. Put the heads back in the order $(B, N, D)$, concatenate them and apply the output layer `proj_out`. Store the attention weights in `self.attn_weights` (shape $(B, \text{heads}, N, N)$) for the visualisation later.

# %%
# ja: SelfAttentionクラスの定義
# en: The SelfAttention class
class SelfAttention(nn.Module):
    def __init__(self, dim_hidden, num_heads, qkv_bias=False):
        super().__init__()
        # ja: 隠れ次元がヘッドの数で割り切れるか確認
        # en: the hidden size must split evenly into heads
        assert dim_hidden % num_heads == 0
        self.num_heads = num_heads
        dim_head = dim_hidden // num_heads
        # ja: スケーリング係数 1/sqrt(D_h)
        # en: scaling factor 1/sqrt(D_h)
        self.scale = dim_head ** -0.5

        # ja: 入力をQ、K、Vに投影する線形層と、出力の線形層
        # en: the linear layer projecting the input to Q, K and V, and the output layer
        self.proj_in = nn.Linear(dim_hidden, dim_hidden * 3, bias=qkv_bias)
        self.proj_out = nn.Linear(dim_hidden, dim_hidden)

    def forward(self, x):
        # ja: バッチサイズとシーケンス長 (N = パッチ数 + 1)
        # en: batch size and sequence length (N = patches + 1)
        bs, n, _ = x.shape
        # BEGIN SOLUTION
        # ja: 1. proj_in で Q、K、V を計算し、(3, B, ヘッド数, N, D_h) に並べ替えて分割します
        # ja: 2. 注意の重み softmax(Q K^T * scale) をキーの方向 (dim=-1) に計算し、self.attn_weights に保存します
        # ja: 3. 重みを V に掛け、(B, N, D) に戻して proj_out を通します
        # en: 1. compute Q, K and V with proj_in, arrange them as (3, B, heads, N, D_h) and split them
        # en: 2. compute the attention weights softmax(Q K^T * scale) over the keys (dim=-1); store them in self.attn_weights
        # en: 3. multiply V by the weights, put the result back to (B, N, D) and apply proj_out
        qkv = self.proj_in(x).view(bs, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        self.attn_weights = attn
        x = (attn @ v).transpose(1, 2).reshape(bs, n, -1)
        return self.proj_out(x)
        # END SOLUTION

# %% [markdown] lang="ja"
# ### FNNクラスの定義
#
# FNNクラスは、フィードフォワードネットワーク（FNN）を定義します。FNNは、自己注意機構の出力に対して、さらに特徴を抽出するために使用されます。具体的には、2層の全結合ネットワークを使用します。
#
# - 線形変換と活性化関数：入力データに対して線形変換を行い、その後GELU活性化関数を適用します。これにより、非線形性が導入されます。
# - もう一つの線形変換：活性化関数の出力に対して、もう一度線形変換を行います。

# %% [markdown] lang="en"
# ### The FNN class
#
# The FNN class defines the feed-forward network, which extracts further features from the output of self-attention with a two-layer fully connected network:
#
# - a linear map followed by the GELU activation, which makes the network non-linear;
# - a second linear map of the activation's output.

# %%
# ja: FNNクラスの定義
# en: The FNN class
class FNN(nn.Module):
    def __init__(self, dim_hidden, dim_feedforward):
        super().__init__()
        self.linear1 = nn.Linear(dim_hidden, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim_hidden)
        self.activation = nn.GELU()

    def forward(self, x):
        # ja: 線形変換 -> 活性化関数 -> 線形変換の順に適用
        # en: linear -> activation -> linear
        return self.linear2(self.activation(self.linear1(x)))

# %% [markdown] lang="ja" tags=["task2"]
# #### **課題２**
#
# (1) Query, Key, Value のうち、のちの処理に使うために出力される特徴量はどれですか？（自動採点）
#
# (2) その出力のために、上記以外の２つはどのような役割を果たしますか？ 次から選んでください（自動採点）：
# - `"a"`: 2 つの内積をソフトマックスで正規化したものが、出力される特徴量に掛ける重み（注意の重み）になる
# - `"b"`: 2 つを出力される特徴量に足し合わせて、位置の情報を与える
# - `"c"`: 2 つは学習されず、出力される特徴量の正規化（LayerNorm）にだけ使われる
#
# 下の `task2_choice` に答えを書いてください。
#
# (3) (2) の役割を自分の言葉で説明してください。また、畳み込み層とは違って、ここでは特徴量の重み付けが行われます。そのメリットは何ですか？（下のセルに記述）

# %% [markdown] lang="en" tags=["task2"]
# #### **Task 2**
#
# (1) Of the query, key and value, which is the feature that is passed on to the later processing? (graded automatically)
#
# (2) What role do the other two play in producing it? Choose one (graded automatically):
# - `"a"`: their dot products, normalised by a softmax, become the weights (attention weights) that multiply the passed-on feature
# - `"b"`: they are added to the passed-on feature to give it position information
# - `"c"`: they are not learned and are only used to normalise (LayerNorm) the passed-on feature
#
# Write your answers in `task2_choice` below.
#
# (3) Explain the role in (2) in your own words. Unlike a convolution layer, the features are weighted here: what is the advantage? (write in the cell below)

# %% version="student" tags=["task2", "task2-choice"]
# ja: 課題２ (1), (2): "Q"、"K"、"V" のどれか、と "a"、"b"、"c" のどれか
# en: Task 2 (1), (2): one of "Q", "K", "V", and one of "a", "b", "c"
task2_choice = {"output": ..., "role_of_the_other_two": ...}

# %% version="solution" tags=["task2", "task2-choice"]
# ja: 課題２ (1), (2) の回答
# en: Task 2 (1), (2)
task2_choice = {"output": "V", "role_of_the_other_two": "a"}

# %% [markdown] lang="ja" version="student" tags=["task2", "task2-explanation"]
# **課題２ (3) の回答：** （ここに記述してください）

# %% [markdown] lang="en" version="student" tags=["task2", "task2-explanation"]
# **Answer to Task 2 (3):** (write here)

# %% [markdown] lang="ja" version="solution" tags=["task2", "task2-explanation"]
# **課題２ (3) の回答（例）：** 出力されるのは V（の重み付き和）です。Q と K は、各パッチ（クエリ）が他のどのパッチ（キー）をどれだけ参照するかを決めます：内積 $QK^T/\sqrt{D_h}$ をキーの方向にソフトマックスしたものが重みになり、V をその重みで足し合わせます。畳み込みの固定のカーネルと違い、重みは入力ごとに計算されるので、画像のどこにある情報でも、分類に役立つパッチから集められ、離れたパッチ同士の関係も 1 層で扱えます。

# %% [markdown] lang="en" version="solution" tags=["task2", "task2-explanation"]
# **Answer to Task 2 (3) (example):** The value is passed on (as a weighted sum). The query and key decide how much each patch (query) draws on every other patch (key): the softmax over the keys of $QK^T/\sqrt{D_h}$ gives the weights with which the values are summed. Unlike the fixed kernel of a convolution, the weights are computed for each input, so information is gathered from the patches that help the classification wherever they are, and distant patches interact in a single layer.

# %% [markdown] lang="ja"
# ---
#
# ### 学習
#
# CNN が ViT に置き換わったものの、それに対する学習処理は CNN の場合とまったく同じです。

# %% [markdown] lang="en"
# ---
#
# ### Training
#
# The CNN has been replaced by a ViT, but training it works exactly as for the CNN.

# %%
# ja: ViT クラスのインスタンスを net として得て、GPU があれば GPU に移します
# en: Create the ViT as net and move it to the GPU when there is one
net = ViT()
print(net)
net.to(device)

initial_lr = 0.01
# ja: SGD オプティマイザ（Adam を試すなら optim.Adam(net.parameters(), lr=1e-3)）
# en: SGD optimiser (to try Adam: optim.Adam(net.parameters(), lr=1e-3))
optimizer = optim.SGD(net.parameters(), lr=initial_lr)
criterion = nn.CrossEntropyLoss()

# %% [markdown] lang="ja"
# データも準備します。画像は平均 0.5、標準偏差 0.5 で正規化するので、表示するときは元に戻します（後の可視化で使う `unnormalize`。元の資料では正規化されたまま表示していました）。

# %% [markdown] lang="en"
# Now the data. The images are normalised with mean 0.5 and standard deviation 0.5, so they are un-normalised for display (`unnormalize`, used in the visualisation below; the original handout showed them normalised).

# %%
transform = transforms.Compose(
    [transforms.ToTensor(),
     transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

# ja: 学習用データセットをロードし、検証用データセットに分割
# en: Load the training set and split off a validation set
trainset = torchvision.datasets.CIFAR10(root="./data", train=True, download=True, transform=transform)
train_size = int(0.8 * len(trainset))
validation_size = len(trainset) - train_size
train_dataset, validation_dataset = random_split(trainset, [train_size, validation_size])

# ja: ミニバッチサイズを100とし、学習用データローダと検証用データローダを定義
# en: Mini-batches of 100 for the training and validation loaders
trainloader = torch.utils.data.DataLoader(train_dataset, batch_size=100, shuffle=True)
validationloader = torch.utils.data.DataLoader(validation_dataset, batch_size=100, shuffle=False)

# ja: テスト用データセットをロード
# en: Load the test set
testset = torchvision.datasets.CIFAR10(root="./data", train=False, download=True, transform=transform)
testloader = torch.utils.data.DataLoader(testset, batch_size=100, shuffle=False, num_workers=2)

classes = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# %% [markdown] lang="ja"
# ここから学習ループに入ります。ViT は CNN よりも処理が重いため、エポック数は少なめにしています。検証の後は `net.train()` で学習モードに戻すことに注意してください（元の資料ではこれが抜けていました）。
#
# `USE_FAST_HARNESS = True` にすると、採点と同じ高速な学習ハーネス（データを GPU 上に置き、データ拡張も GPU で行い、混合精度を使う）で学習します。下の学習ループは、学習の仕組みを理解するためにそのまま残しています。

# %% [markdown] lang="en"
# Now the training loop. A ViT is heavier than a CNN, so there are only a few epochs. Note `net.train()` after each validation, which puts the model back into training mode (the original handout missed it).
#
# With `USE_FAST_HARNESS = True` training uses the grader's fast harness (data held on the GPU, augmentation on the GPU, mixed precision). The loop below is kept as it is, to show how training works.

# %%
USE_FAST_HARNESS = False

max_epoch = 15
# ja: 改善が見られないエポック数の許容回数とカウンター
# en: how many epochs without improvement to allow, and the counter
patience = 5
trigger_times = 0

best_val_loss = float("inf")
train_losses = []
val_losses = []

for epoch in range(0 if USE_FAST_HARNESS else max_epoch):
    # ja: エポックの始めに学習モードにします（検証で評価モードにしたため）
    # en: training mode at the start of every epoch (validation switched to eval mode)
    net.train()
    running_loss = 0.0
    for inputs, labels in trainloader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(net(inputs), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    train_losses.append(running_loss / len(trainloader))

    # ja: 検証データセットに対する損失を計算（評価モード）
    # en: loss on the validation set (eval mode)
    net.eval()
    val_loss = 0.0
    with torch.no_grad():
        for images, labels in validationloader:
            images, labels = images.to(device), labels.to(device)
            val_loss += criterion(net(images), labels).item()
    val_losses.append(val_loss / len(validationloader))

    plt.clf()
    plt.plot(train_losses, label="Training loss")
    plt.plot(val_losses, label="Validation loss")
    plt.xlabel("Epoch")
    plt.ylabel("Loss")
    plt.xlim(left=0)
    plt.ylim(bottom=0)
    plt.legend()
    plt.show()
    print(f"Epoch {epoch + 1}: train loss {train_losses[-1]:.4f}, validation loss {val_losses[-1]:.4f}")

    # ja: 検証損失が patience エポック改善しなければ早期終了
    # en: stop early when the validation loss has not improved for `patience` epochs
    if val_losses[-1] < best_val_loss:
        best_val_loss = val_losses[-1]
        trigger_times = 0
    else:
        trigger_times += 1
        if trigger_times >= patience:
            print(f"early stop after {epoch + 1} epochs")
            break

if USE_FAST_HARNESS:
    # ja: 採点と同じハーネス（vit-autograder の自己チェック用パッケージが必要）
    # en: the grader's harness (needs the vit-autograder self-check package)
    from grader.training.trainer import train_and_predict

    x_train = trainset.data
    y_train = np.array(trainset.targets)
    # ja: 正規化は上の transform と同じ（平均 0.5、標準偏差 0.5）にして、後のテストと揃えます
    # en: the same normalisation as the transform above (mean 0.5, std 0.5), so the test below matches
    recipe = {"epochs": max_epoch, "batch_size": 512, "lr": 1e-3, "optimizer": "adamw", "warmup_epochs": 1,
              "augment": True, "val_fraction": 0.2, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    outcome = train_and_predict(net, {"x_train": x_train, "y_train": y_train, "x_test": testset.data}, recipe,
                                device=device.type)
    plt.plot([h["train_loss"] for h in outcome.header["history"]], label="Training loss")
    plt.plot([h["val_loss"] for h in outcome.header["history"]], label="Validation loss")
    plt.legend()
    plt.show()
    print(f"{outcome.header['images_per_second']:,.0f} images/s")

print("finished training")

# %% [markdown] lang="ja"
# ### テスト
#
# 精度を求める処理もまったく同じです。評価モード（`net.eval()`）にしてから推論します。
#
# CIFAR-10 は小規模なデータのため、残念ながら CNN を超える精度は出ないかもしれません。

# %% [markdown] lang="en"
# ### Test
#
# Measuring the accuracy is also the same as before. Switch to eval mode (`net.eval()`) before inference.
#
# CIFAR-10 is small, so the ViT may unfortunately not beat the CNN.

# %%
correct = 0
total = 0
net.eval()
with torch.no_grad():
    for images, labels in testloader:
        images, labels = images.to(device), labels.to(device)
        predicted = net(images).argmax(dim=1)
        total += labels.size(0)
        correct += (predicted == labels).sum().item()

print(f"test accuracy: {100 * correct / total:.1f} %")

# %% [markdown] lang="ja"
# ### クラスベクトル
#
# 最後の線形層 `net.linear` の重みの各行は、クラスごとのベクトルです。クラストークンの最終的な表現（$(B, 512)$）との内積がそのクラスのスコアになります。まずそれ自体を表で確認しましょう。

# %% [markdown] lang="en"
# ### Class vectors
#
# Each row of the final linear layer's weight `net.linear.weight` is a vector for one class; its dot product with the class token's final representation ($(B, 512)$) is that class's score. Let us look at them as a table.

# %%
import pandas as pd

class_vectors = net.linear.weight.detach().cpu().numpy()
df = pd.DataFrame(class_vectors, columns=[f"Feature_{i + 1}" for i in range(class_vectors.shape[1])])
df.insert(0, "Class Name", classes)
df.insert(0, "Class Number", range(10))
df

# %% [markdown] lang="ja"
# ### 注意の可視化
#
# 入力画像のどの部分にモデルが注目しているかをヒートマップで示します。セグメンテーションのように事前に注目箇所を与えて学習するわけではありませんが、自己注意機構により、各パッチ間の関係性が学習され、自然に注目箇所が形成されます。
#
# 元の資料の文章は「クラスベクトルと注意スコアから求めたヒートマップ」と説明していましたが、コードはクラスベクトルを使っていませんでした。ここでは何を計算しているかを明示した 3 種類のマップを並べます（どれも 8x8 のパッチごとの値を [0, 1] にしたもの）：
#
# 1. **元の資料のマップ**（`handout_heatmap`）: 第 1 層の注意の重みをヘッドで平均し、クラストークンを除いて、各パッチが他のパッチから受け取る注意の平均を求めたもの。クラストークンもクラスベクトルも関わりません。
# 2. **CLS 注意**（`cls_attention`）: 最終層で、クラストークン（クエリ）が各パッチ（キー）に向ける注意の重み（ヘッドの平均）。分類に使われる表現がどのパッチから情報を集めたかを表します。
# 3. **Attention rollout**（`attention_rollout`, Abnar & Zuidema 2020）: 各層の注意の重み（残差接続の分として単位行列を加えて正規化）を掛け合わせ、クラストークンの行を取り出したもの。全ての層を通して、各パッチの情報がクラストークンにどれだけ流れ込むかを近似します。

# %% [markdown] lang="en"
# ### Visualising attention
#
# A heatmap shows which parts of the input the model attends to. Nobody tells the model where to look, as in segmentation; the places it attends to emerge from the relations between patches that self-attention learns.
#
# The original handout described its map as "a heatmap from the class vector and the attention scores", but its code did not use the class vector. Here are three maps, each saying what it computes (each gives one value per patch of the 8x8 grid, scaled to [0, 1]):
#
# 1. **The original handout's map** (`handout_heatmap`): the first layer's attention weights, averaged over heads, without the class token: how much attention each patch receives from the other patches on average. Neither the class token nor the class vector is involved.
# 2. **CLS attention** (`cls_attention`): in the last layer, the attention weights from the class token (query) to each patch (key), averaged over heads: which patches the representation used for classification gathers information from.
# 3. **Attention rollout** (`attention_rollout`, Abnar & Zuidema 2020): the product of every layer's attention weights (with the identity added for the residual connection and renormalised), read at the class token's row: an estimate of how much of each patch's information flows into the class token through all layers.

# %%
# INCLUDE reference/attention_maps.py

# %%
images, labels = next(iter(testloader))
images = images[:5].to(device)
attentions = collect_attention(net, images)
with torch.no_grad():
    predicted = net(images).argmax(dim=1)
maps = {"handout map": handout_heatmap(attentions), "CLS attention (last layer)": cls_attention(attentions),
        "attention rollout": attention_rollout(attentions)}
for i in range(len(images)):
    image = unnormalize(images[i : i + 1])[0]
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3 * (1 + len(maps)), 3))
    axes[0].imshow(image)
    axes[0].set_title(f"label: {classes[labels[i]]}\npredicted: {classes[predicted[i]]}")
    axes[0].axis("off")
    for ax, (name, grid) in zip(axes[1:], maps.items()):
        plot_overlay(ax, image, upsample(grid, image.shape[0])[i], title=name)
    plt.show()

# %% [markdown] lang="ja"
# こちらも、あまり期待する結果ではなかったかもしれません。CIFAR-10 は ViT の真価を発揮するにはデータが小さく、Google Colab での学習もあまり多く行うことはできません。十分な計算資源がある場合は、ImageNet のような大規模データセットを用いて事前学習してから、この学習を行うといった案も考えられます。

# %% [markdown] lang="en"
# This may not look as expected either. CIFAR-10 is too small for a ViT to show its strength, and Google Colab does not allow much training. With enough compute, one could pre-train on a large dataset such as ImageNet and then train on CIFAR-10.

# %% [markdown] lang="ja" tags=["task3"]
# #### **課題３**
#
# - ここで可視化されているヒートマップのうち、値の高いところ（明るいところ）は何を意味しますか？ 3 種類のマップそれぞれについて答えてください。
#  - これを求めるために行われている計算を説明してください。
# - **Grad-CAM**（グラッドカム）も今回と似たヒートマップを出力する手法で、CNN でも使用できます。[ふんわり理解するGrad-CAM -- Zenn](https://zenn.dev/iq108uni/articles/7269a1b72f42be)<br>
#  CNN に対して Grad-CAM で行っていることと、ViT に対してここで行っていることは何が違いますか？

# %% [markdown] lang="en" tags=["task3"]
# #### **Task 3**
#
# - In the heatmaps shown here, what do the high (bright) values mean? Answer for each of the three maps.
#  - Explain the computation that produces them.
# - **Grad-CAM** also produces heatmaps like these, and works with CNNs too. [Grad-CAM, gently explained -- Zenn (Japanese)](https://zenn.dev/iq108uni/articles/7269a1b72f42be)<br>
#  How does what Grad-CAM does for a CNN differ from what is done here for the ViT?

# %% [markdown] lang="ja" version="student" tags=["task3", "task3-answer"]
# **課題３ の回答：** （ここに記述してください）

# %% [markdown] lang="en" version="student" tags=["task3", "task3-answer"]
# **Answer to Task 3:** (write here)

# %% [markdown] lang="ja" version="solution" tags=["task3", "task3-answer"]
# **課題３ の回答（例）：** 元の資料のマップは第 1 層で他のパッチから多くの注意を受けるパッチ、CLS 注意は最終層でクラストークンが情報を集めるパッチ、rollout は全層を通してクラストークンへ多くの情報が流れ込むパッチが明るくなります。いずれも順伝播で得られる注意の重み（softmax(QK^T/√D_h)）を平均・積算したもので、クラスにはよりません。Grad-CAM は、予測したクラスのスコアの、最後の畳み込み層の特徴マップに対する勾配でチャネルを重み付けして足し合わせ（ReLU を通す）、クラスごとの根拠を示します。勾配（逆伝播）を使うか、クラスに依存するかが違います。

# %% [markdown] lang="en" version="solution" tags=["task3", "task3-answer"]
# **Answer to Task 3 (example):** The handout's map is bright on patches that receive much attention from other patches in the first layer; CLS attention on patches the class token gathers from in the last layer; rollout on patches whose information flows most into the class token through all layers. All three average or multiply forward-pass attention weights (softmax(QK^T/√D_h)) and do not depend on the class. Grad-CAM weights the channels of the last convolution layer's feature maps by the gradient of the predicted class's score, sums them and applies a ReLU, giving class-specific evidence. The difference: gradients (a backward pass) and dependence on the class.

# %% [markdown] lang="ja"
# ### 自己チェック（提出前に）
#
# 採点と同じチェック（形状、性質、参照実装との一致、課題１の自動採点部分）を実行して表で表示します。配布された自己チェック用のファイル（`vitgrade_student-….whl`、1 ファイル）をノートブックと同じフォルダに置いてください（Colab では左の「ファイル」からアップロードします）。Jupyter ではノートブックを保存してから実行します。Colab では開いているノートブックをそのまま読みます。コマンドラインからは `vitgrade check vit_cifar10_ja.ipynb` で同じことができます。

# %% [markdown] lang="en"
# ### Self-check (before you submit)
#
# Runs the grader's checks (shapes, properties, agreement with the reference, the automatic part of Task 1) and shows a table. Put the self-check file you were given (`vitgrade_student-….whl`, one file) in the same folder as this notebook (in Colab, upload it in the Files pane). In Jupyter, save the notebook before running the cell; in Colab the cell reads the open notebook. From the command line, `vitgrade check vit_cifar10_en.ipynb` does the same.

# %% tags=["selfcheck"]
# %pip install -q vitgrade_student-*.whl
from grader.selfcheck import check_notebook

check_notebook("NOTEBOOK_NAME")
