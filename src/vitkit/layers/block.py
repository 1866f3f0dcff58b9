"""The transformer encoder block.

The block is the paper's equation, one line per branch:

    x = x + attn(norm1(x))
    x = x + mlp(norm2(x))

(each branch optionally scaled per channel (layer scale) and dropped per sample (stochastic depth)).
:class:`PostNormBlock` is the original Transformer's order, which vitkit.numpy_vit computes.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadAttention
from .mlp import MLPS, Mlp
from .norm import make_norm

__all__ = ["LayerScale", "Mlp", "PostNormBlock", "TransformerBlock", "drop_path_layer"]


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT), initialised small."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def drop_path_layer(p: float) -> nn.Module:
    """Stochastic depth (drop a whole residual branch per sample), or an identity when ``p`` is 0.

    torchvision's is used; it is imported only when asked for, so that building a model (and starting the
    CLI) does not pay for importing torchvision."""
    if p <= 0:
        return nn.Identity()
    from torchvision.ops import StochasticDepth
    return StochasticDepth(p, "row")


class TransformerBlock(nn.Module):
    """Attention then MLP, each normalised first and added back (pre-norm, as in ViT and timm).

    :meth:`forward` is the equation, returning the attention weights too (computed explicitly) when asked,
    as big_vision's blocks return ``x, out``. timm's parameter names (``norm1``, ``attn``, ``ls1``, ``norm2``,
    ``mlp``, ``ls2``), so a timm state dict fits. ``mlp="swiglu"`` makes the MLP gated (:class:`GluMlp`, whose
    ``fc1`` is ``int(embed_dim * mlp_ratio)`` wide); ``qkv_bias="qv"`` gives the attention BEiT's biases.
    ``norm_layer`` ("layernorm" or "rmsnorm") is every norm of the block; ``attn_norm`` / ``mlp_norm`` add the
    inner norms of EVA-02 (see :class:`MultiHeadAttention` and :class:`Mlp`). ``rope`` given to :meth:`forward`
    rotates q and k of the patch tokens (``rope_half``: the half layout of DINOv3). ``attn_dim`` is the
    attention's inner width (default the block's), ``attn_scale`` its q k^T factor (default head_width ** -0.5).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 use_relative_position: bool = False, rpb_kwargs: dict | None = None, qkv_bias: bool | str = True,
                 attn_drop: float | None = None, drop_path: float = 0.0, layer_scale_init: float | None = None,
                 norm_eps: float = 1e-6, act: str = "gelu", mlp: str = "mlp", fused_attn: bool = True,
                 norm_layer: str = "layernorm", attn_norm: bool = False, mlp_norm: bool = False, proj_bias: bool = True,
                 mlp_bias: bool = True, rope_half: bool = False, attn_dim: int | None = None,
                 attn_scale: float | None = None):
        super().__init__()
        self.norm1 = make_norm(norm_layer, embed_dim, norm_eps)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout=dropout,
                                       use_relative_position=use_relative_position, rpb_kwargs=rpb_kwargs,
                                       qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=dropout, fused=fused_attn,
                                       rope_half=rope_half, attn_norm=norm_layer if attn_norm else None,
                                       norm_eps=norm_eps, proj_bias=proj_bias, attn_dim=attn_dim,
                                       scale=True if attn_scale is None else attn_scale)
        self.ls1 = LayerScale(embed_dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path1 = drop_path_layer(drop_path)
        self.norm2 = make_norm(norm_layer, embed_dim, norm_eps)
        if mlp not in MLPS:
            raise ValueError(f"mlp must be one of {sorted(MLPS)}, got {mlp!r}")
        self.mlp = MLPS[mlp](embed_dim, int(embed_dim * mlp_ratio), act, dropout,
                             norm=norm_layer if mlp_norm else None, norm_eps=norm_eps, bias=mlp_bias)
        self.ls2 = LayerScale(embed_dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path2 = drop_path_layer(drop_path)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, return_attention: bool = False):
        """(B, N, C) -> (B, N, C); with ``return_attention``, (that, this block's attention weights (B, H, N, N)),
        the weights computed explicitly."""
        out = self.attn(self.norm1(x), rope, return_attention)
        y, attn = out if return_attention else (out, None)
        x = x + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return (x, attn) if return_attention else x


class PostNormBlock(TransformerBlock):
    """The original Transformer's order (vitkit.numpy_vit's network): normalise after adding each branch,
    ``x = norm1(x + attn(x))``, ``x = norm2(x + mlp(x))``. Same parameters as the pre-norm block."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, return_attention: bool = False):
        out = self.attn(x, rope, return_attention)
        y, attn = out if return_attention else (out, None)
        x = self.norm1(x + self.drop_path1(self.ls1(y)))
        x = self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))
        return (x, attn) if return_attention else x
