"""Multi-head attention pooling (MAP, big_vision's ``pool_type="map"``; timm's ``AttentionPoolLatent``), the
pooling of SigLIP's image tower."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import Mlp
from .norm import make_norm


class AttentionPoolLatent(nn.Module):
    """One learned query (``latent``) attends over the tokens; the result passes a residual MLP:

        y = proj(attention(q(latent), kv(tokens)))
        y = y + mlp(norm(y))

    and ``y`` is the pooled (B, D). timm's keys (``latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp.fc1/fc2``),
    so timm's and (after a rename) big_vision's and Hugging Face's SigLIP heads load as they are. The MLP has
    the blocks' hidden width and activation, as in timm and big_vision, unless told otherwise (the Perception
    Encoder pools with 8 heads on a 12- or 16-head trunk).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, act: str = "gelu", norm_eps: float = 1e-6,
                 norm_layer: str = "layernorm"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = make_norm(norm_layer, dim, norm_eps)
        self.mlp = Mlp(dim, mlp_dim, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, D) -> pooled (B, D)."""
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, h, hd).transpose(1, 2)  # (B, H, 1, d)
        k, v = self.kv(x).reshape(b, n, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, N, d)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, d)
        y = self.proj(y.transpose(1, 2).reshape(b, 1, d))  # (B, 1, D)
        y = y + self.mlp(self.norm(y))
        return y[:, 0]
