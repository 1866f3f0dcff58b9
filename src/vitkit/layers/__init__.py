"""The building blocks of a ViT."""

from .attention import MultiHeadAttention, ScaledDotProductAttention
from .block import LayerScale, PostNormBlock, TransformerBlock
from .mlp import ACTIVATIONS, HEAD_ACTIVATIONS, GluMlp, Mlp, QuickGELU
from .norm import NORMS, make_norm
from .patch_embed import PatchEmbedding
from .pool import AttentionPoolLatent
from .position import (RelativePositionBias, get_relative_position_index_1d, get_relative_position_index_2d,
                       resample_pos_embed, sincos_2d_pos_embed)
from .rope import ROPES, RotaryEmbedding, rotate

__all__ = ["MultiHeadAttention", "ScaledDotProductAttention", "LayerScale", "Mlp", "GluMlp", "QuickGELU",
           "ACTIVATIONS", "HEAD_ACTIVATIONS", "TransformerBlock", "PostNormBlock", "PatchEmbedding",
           "AttentionPoolLatent",
           "RelativePositionBias", "get_relative_position_index_1d", "get_relative_position_index_2d",
           "resample_pos_embed", "sincos_2d_pos_embed", "RotaryEmbedding", "rotate", "ROPES", "make_norm", "NORMS"]
