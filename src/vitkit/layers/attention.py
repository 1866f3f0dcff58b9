"""Multi-head self-attention: fused (``scaled_dot_product_attention``) by default, explicit when the attention
weights are wanted or when asked for (``fused=False``: faster for short sequences on a CPU). Both paths see the
same q and k, rotated first when the model has a rotary position embedding, so attention maps are those the
fused path computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import make_norm
from .position import RelativePositionBias
from .rope import rotate


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(d) + bias) v, computed explicitly so that the weights can be returned.

    ``scale=False`` leaves out the 1/sqrt(d); a number multiplies q by it instead (an attention scaled by
    another width, old vit-pytorch's). Inputs are (B, H, N, d); ``relative_position_bias`` is (H, N, N)
    or anything broadcastable to (B, H, N, N). Returns ``(output (B, H, N, d), attn (B, H, N, N))``; ``attn``
    is taken before dropout, so it is the distribution the model actually computed.
    """

    def __init__(self, scale: bool | float = True, dropout: float = 0.0):
        super().__init__()
        self.scale = scale
        self.dropout = nn.Dropout(dropout)

    def forward(self, query, key, value, relative_position_bias=None):
        if self.scale is True:
            query = query * query.shape[-1] ** -0.5
        elif self.scale is not False:
            query = query * self.scale
        logits = query @ key.transpose(-2, -1)  # (B, H, N, N)
        if relative_position_bias is not None:
            logits = logits + relative_position_bias
        attn = logits.softmax(dim=-1)
        return self.dropout(attn) @ value, attn


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one combined ``qkv`` projection (timm's layout) and an optional
    relative position bias, which the fused kernel receives as its additive mask.

    ``dropout`` is used for both the attention weights and the output projection unless ``attn_drop`` or
    ``proj_drop`` are given. :meth:`forward` returns the output, and with ``return_attention`` the weights
    too, computed explicitly. ``fused=False`` always computes explicitly (matmul, softmax, matmul), which is
    faster for short sequences on a CPU; the fused kernel is what timm runs, so it matches timm bit for
    bit. The two agree to float rounding. ``qkv_bias="qv"`` is BEiT's: learned query and value biases
    (``q_bias``, ``v_bias``) beside a bias-free ``qkv``, the key's bias fixed at zero (also EVA-02's and
    DINOv3's masked k-bias). ``rope`` passed to :meth:`forward` (cat([sin, cos]) for the N' patch tokens, see
    :mod:`vitkit.layers.rope`) rotates q and k of the last N' tokens; the prefix tokens before them stay as
    they are. ``attn_norm`` normalises the heads' merged output before ``proj`` (EVA-CLIP's inner norm,
    timm's ``attn.norm``); ``proj_bias=False`` leaves out the output projection's bias (AIMv2).
    ``attn_dim`` (default ``embed_dim``) is the width of q, k and v, as timm's ``Attention.attn_dim``:
    ``qkv`` maps D -> 3 attn_dim, ``proj`` attn_dim -> D, each head is ``attn_dim / num_heads`` wide.
    ``scale`` True multiplies q k^T by head_width ** -0.5, False by 1, a number by that number.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, use_relative_position: bool = False,
                 rpb_kwargs: dict | None = None, qkv_bias: bool | str = True, attn_drop: float | None = None,
                 proj_drop: float | None = None, scale: bool = True, fused: bool = True, rope_half: bool = False,
                 attn_norm: str | None = None, norm_eps: float = 1e-6, proj_bias: bool = True,
                 attn_dim: int | None = None):
        super().__init__()
        inner = embed_dim if attn_dim is None else attn_dim
        if inner % num_heads:
            raise ValueError(f"attention width {inner} must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.attn_dim = inner
        self.num_heads = num_heads
        self.head_dim = inner // num_heads
        self.attn_drop = dropout if attn_drop is None else attn_drop
        self.scale = scale
        self.fused = fused
        if qkv_bias not in (True, False, "qv"):
            raise ValueError(f"qkv_bias must be True, False or 'qv', got {qkv_bias!r}")
        self.qkv = nn.Linear(embed_dim, 3 * inner, bias=qkv_bias is True)
        self.q_bias = nn.Parameter(torch.zeros(inner)) if qkv_bias == "qv" else None
        self.v_bias = nn.Parameter(torch.zeros(inner)) if qkv_bias == "qv" else None
        self.attention = ScaledDotProductAttention(scale=scale, dropout=self.attn_drop)
        self.rope_half = rope_half
        self.norm = make_norm(attn_norm, inner, norm_eps) if attn_norm else nn.Identity()
        self.proj = nn.Linear(inner, embed_dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(dropout if proj_drop is None else proj_drop)
        self.relative_position_bias = None
        if use_relative_position:
            kwargs = {"num_heads": num_heads, **(rpb_kwargs or {})}
            if kwargs["num_heads"] != num_heads:
                raise ValueError(f"rpb_kwargs num_heads ({kwargs['num_heads']}) must equal num_heads ({num_heads})")
            self.relative_position_bias = RelativePositionBias(**kwargs)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, return_attention: bool = False):
        """(B, N, C) -> (B, N, C); with ``return_attention``, (output (B, N, C), attention weights (B, H, N, N)),
        the weights computed explicitly."""
        q, k, v, bias = self._qkv(x, rope)
        if return_attention or not self.fused:
            out, attn = self.attention(q, k, v, bias)  # (B, H, N, d), (B, H, N, N)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self._sdpa_scale(),
                                                 dropout_p=self.attn_drop if self.training else 0.0)  # (B, H, N, d)
        out = self._merge(out)
        return (out, attn) if return_attention else out

    def _sdpa_scale(self) -> float | None:
        """``scaled_dot_product_attention``'s scale: None (its own head_width ** -0.5, timm's call), 1 or ours."""
        return None if self.scale is True else 1.0 if self.scale is False else float(self.scale)

    def _qkv(self, x: torch.Tensor, rope: torch.Tensor | None = None):
        b, n, _ = x.shape
        if self.q_bias is None:
            qkv = self.qkv(x)  # (B, N, 3C)
        else:  # the key's bias is zero: softmax ignores a shift that is the same for every key
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))  # (3C,)
            qkv = F.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, d)
        if rope is not None:  # rotate the patch tokens, the last rope.shape[-2] of the sequence
            p = n - rope.shape[-2]
            q = torch.cat([q[:, :, :p], rotate(q[:, :, p:], rope, self.rope_half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :p], rotate(k[:, :, p:], rope, self.rope_half)], dim=2).type_as(v)
        bias = None
        if self.relative_position_bias is not None:
            bias = self.relative_position_bias()  # (H, N, N)
            if bias.shape[-1] != n:
                raise ValueError(f"the relative position bias covers {bias.shape[-1]} tokens but the input has {n}")
            bias = bias.to(q.dtype)[None]  # (1, H, N, N): the shape timm's BEiT passes, so the kernels round alike
        return q, k, v, bias

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.attn_dim)  # (B, H, N, d) -> (B, N, H*d)
        return self.proj_drop(self.proj(self.norm(out)))
