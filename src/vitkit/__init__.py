"""vitkit: Vision Transformers that are small, exact and fast.

    >>> from vitkit import create_model
    >>> model = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)

Names are imported on first use, so ``import vitkit.numpy_vit`` (NumPy only) never imports torch and the CLI
starts at once.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "vitkit.config": ["ViTConfig"],
    "vitkit.presets": ["PRESETS", "get_preset", "list_models", "licence_of"],
    "vitkit.interop.preprocess": ["preprocessing_of"],
    "vitkit.typed_config": ["load_config", "save_config"],
    "vitkit.errors": ["VitkitError", "ConfigError", "DataError", "CheckpointError"],
    "vitkit.layers": ["MultiHeadAttention", "PatchEmbedding", "RelativePositionBias", "ScaledDotProductAttention",
                      "TransformerBlock", "PostNormBlock", "get_relative_position_index_1d",
                      "get_relative_position_index_2d"],
    "vitkit.model": ["VisionTransformer", "count_parameters", "flops_per_image"],
    "vitkit.compat": ["ViT"],
    "vitkit.pretrained": ["create_model", "from_pretrained"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # cache: later lookups skip this function
        return value
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
