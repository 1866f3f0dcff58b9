"""The transformer encoder block and its MLP."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from .attention import MultiHeadAttention

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # what JAX/big_vision checkpoints were trained with
    "relu": nn.ReLU,
}


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> linear -> dropout (timm's ``fc1``/``fc2`` keys)."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = ACTIVATIONS[act]()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT), initialised small."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Attention then MLP, each with a residual connection.

    ``norm_style="pre"`` (ViT, timm): ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``.
    ``norm_style="post"`` (the original Transformer, vitkit.scratch): ``norm1(x + attn(x))``,
    ``norm2(x + mlp(x))``. Both keep timm's parameter names, so a state dict fits either.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 use_relative_position: bool = False, rpb_kwargs: dict | None = None, *, qkv_bias: bool = True,
                 attn_drop: float | None = None, drop_path: float = 0.0, layer_scale_init: float | None = None,
                 norm_eps: float = 1e-6, norm_style: str = "pre", act: str = "gelu"):
        super().__init__()
        if norm_style not in ("pre", "post"):
            raise ValueError(f"norm_style must be 'pre' or 'post', got {norm_style!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.pre_norm = norm_style == "pre"
        self.norm1 = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout, use_relative_position, rpb_kwargs,
                                       qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=dropout)
        self.ls1 = LayerScale(embed_dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path1 = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio), act, dropout)
        self.ls2 = LayerScale(embed_dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path2 = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """(B, N, C) -> (B, N, C); with ``return_attention`` also this block's weights (B, H, N, N)."""
        attn = None
        y = self.norm1(x) if self.pre_norm else x
        if return_attention:
            y, attn = self.attn(y, return_attention=True)
        else:
            y = self.attn(y)
        x = x + self.drop_path1(self.ls1(y))
        if not self.pre_norm:
            x = self.norm1(x)
        y = self.mlp(self.norm2(x) if self.pre_norm else x)
        x = x + self.drop_path2(self.ls2(y))
        if not self.pre_norm:
            x = self.norm2(x)
        return (x, attn) if return_attention else x
