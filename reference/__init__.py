"""The course's reference solution: the ViT of the handout and its attention maps."""

from reference.vit import FNN, SelfAttention, TransformerEncoderLayer, ViT, ViTConfig, set_fused_attention

__all__ = ["FNN", "SelfAttention", "TransformerEncoderLayer", "ViT", "ViTConfig", "set_fused_attention"]
