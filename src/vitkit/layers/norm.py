"""The norms a ViT uses, by name: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019, AIMv2).

    LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias
    RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * weight

Both are PyTorch's own modules, so their keys are ``weight`` (and ``bias``) as in timm.
"""

from __future__ import annotations

from torch import nn

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """A norm over the last axis of width ``dim``: ``"layernorm"`` or ``"rmsnorm"``."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"norm_layer must be one of {', '.join(NORMS)}, got {kind!r}")
