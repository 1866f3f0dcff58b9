"""The building blocks of a ViT."""

from .attention import MultiHeadAttention, ScaledDotProductAttention
from .block import LayerScale, Mlp, PostNormBlock, TransformerBlock
from .patch_embed import PatchEmbedding
from .position import (RelativePositionBias, get_relative_position_index_1d, get_relative_position_index_2d,
                       resample_pos_embed, sincos_2d_pos_embed)

__all__ = ["MultiHeadAttention", "ScaledDotProductAttention", "LayerScale", "Mlp", "TransformerBlock", "PostNormBlock",
           "PatchEmbedding", "RelativePositionBias", "get_relative_position_index_1d",
           "get_relative_position_index_2d", "resample_pos_embed", "sincos_2d_pos_embed"]
