"""vitkit: Vision Transformers that are small, exact and fast.

    >>> from vitkit import create_model
    >>> model = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
"""

from .config import PRESETS, ViTConfig, get_preset, list_models, load_config, save_config
from .errors import CheckpointError, ConfigError, DataError, VitkitError
from .layers import (MultiHeadAttention, PatchEmbedding, RelativePositionBias, ScaledDotProductAttention,
                     TransformerBlock, get_relative_position_index_1d, get_relative_position_index_2d)
from .model import ViT, VisionTransformer, count_parameters, create_model, flops_per_image

__version__ = "0.1.0"

__all__ = [
    "ViTConfig", "PRESETS", "get_preset", "list_models", "load_config", "save_config",
    "VitkitError", "ConfigError", "DataError", "CheckpointError",
    "MultiHeadAttention", "PatchEmbedding", "RelativePositionBias", "ScaledDotProductAttention",
    "TransformerBlock", "get_relative_position_index_1d", "get_relative_position_index_2d",
    "ViT", "VisionTransformer", "create_model", "count_parameters", "flops_per_image",
]
