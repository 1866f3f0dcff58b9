"""The other spellings vitkit keeps working: the names the seed documents and the README show (and a few of
timm's and Hugging Face's) beside vitkit's own, in this one room, so that the rest of the package has one name
per concept. The only module that speaks of the seed documents.

- Argument aliases of :class:`~vitkit.ViTConfig` (and so of ``VisionTransformer(...)``, YAML ``model:`` and
  overrides): ``n_heads`` (num_heads), ``dropout`` (drop_rate), ``in_chans`` (in_channels, timm's) and timm's
  ``representation_size`` (head_hidden_dim); :func:`apply_aliases` renames them, :meth:`ConfigNames.from_kwargs`
  builds a config through them.
- :class:`ConfigNames`: Hugging Face's read-only names on ``ViTConfig`` (``config.hidden_size`` ...).
- :class:`ModelNames`: ``VisionTransformer.from_config(config)`` and ``model.get_attention_maps(x, layers)``
  (vitkit's: ``VisionTransformer(config)`` and ``forward_with_attention``).
- ``ViT`` (= ``VisionTransformer``), and the simple ``save_checkpoint`` / ``load_checkpoint`` of a model and its
  optimizer (they live in :mod:`vitkit.train.checkpoint`): imported from their modules when first asked for,
  because those modules import this one.

This module imports nothing of vitkit's at the top but the errors, so the config and the model can inherit
from it.
"""

from __future__ import annotations

from typing import Iterable

from .errors import ConfigError

__all__ = ["ALIASES", "apply_aliases", "ConfigNames", "ModelNames", "ViT", "save_checkpoint", "load_checkpoint"]

# --------------------------------------------------------------------------------------------------------------
# Argument aliases

ALIASES = {"n_heads": "num_heads", "dropout": "drop_rate", "in_chans": "in_channels",
           "representation_size": "head_hidden_dim"}


def apply_aliases(kwargs: dict) -> dict:
    """Rename the accepted aliases (``n_heads``, ``dropout``, ``in_chans``, timm's ``representation_size``) to
    ViTConfig's field names, in place; an alias and its field that disagree are a ConfigError."""
    for alias, name in ALIASES.items():
        if alias in kwargs:
            value = kwargs.pop(alias)
            if name in kwargs and kwargs[name] != value:
                raise ConfigError(f"{alias}={value!r} contradicts {name}={kwargs[name]!r}; give one of them")
            kwargs[name] = value
    return kwargs


# --------------------------------------------------------------------------------------------------------------
# The config


class ConfigNames:
    """What :class:`~vitkit.ViTConfig` inherits to answer to other spellings: :meth:`from_kwargs` through the
    aliases, and Hugging Face's names, read-only, so code written against transformers' ``ViTConfig`` reads
    the same config (``ViTConfig.from_hf`` reads an HF config)."""

    @classmethod
    def from_kwargs(cls, **kwargs):
        """Like the constructor, also accepting the older spellings and timm's: ``n_heads`` (num_heads),
        ``dropout`` (drop_rate), ``in_chans`` (in_channels), ``representation_size`` (head_hidden_dim)."""
        return cls(**apply_aliases(kwargs))

    hidden_size = property(lambda self: self.embed_dim)
    num_hidden_layers = property(lambda self: self.depth)
    num_attention_heads = property(lambda self: self.num_heads)
    intermediate_size = property(lambda self: self.mlp_dim)
    image_size = property(lambda self: self.img_size)
    num_channels = property(lambda self: self.in_channels)
    hidden_dropout_prob = property(lambda self: self.drop_rate)
    attention_probs_dropout_prob = property(lambda self: self.attn_drop_rate)
    layer_norm_eps = property(lambda self: self.norm_eps)


# --------------------------------------------------------------------------------------------------------------
# The model


class ModelNames:
    """What :class:`~vitkit.VisionTransformer` inherits for the seed documents' calls."""

    @classmethod
    def from_config(cls, config):
        """``VisionTransformer(config)``."""
        return cls(config)

    def get_attention_maps(self, x, layers: Iterable[int] | None = None) -> dict:
        """Attention weights of the chosen layers (all when None; negative indices count from the end):
        {layer: (B, heads, T, T)}; the second half of :meth:`~vitkit.VisionTransformer.forward_with_attention`.
        Only those layers compute attention explicitly."""
        return self.forward_with_attention(x, layers)[1]


# --------------------------------------------------------------------------------------------------------------
# Names that live in modules importing this one

def __getattr__(name: str):
    if name == "ViT":
        from .model import VisionTransformer as value
    elif name in ("save_checkpoint", "load_checkpoint"):
        from .train import checkpoint
        value = getattr(checkpoint, name)
    else:
        raise AttributeError(f"module 'vitkit.compat' has no attribute {name!r}")
    globals()[name] = value  # cache: later lookups skip this function
    return value
