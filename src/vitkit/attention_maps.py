"""Where a ViT looks, as numbers: per-layer attention of the [CLS] token over the patches, and attention
rollout (Abnar & Zuidema 2020) through all layers. The figures are drawn by :mod:`vitkit.visualize`.

Every function runs the model once: :func:`read_attention` returns the logits, the rollout and the per-layer maps of
one forward pass (:meth:`vitkit.VisionTransformer.forward_with_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch


def _batch(x: torch.Tensor) -> torch.Tensor:
    return x[None] if x.ndim == 3 else x  # (C, H, W) -> (1, C, H, W)


def query_rows(model, attn: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """One layer's attention (B, H, T, T) -> how much the [CLS] token attends to each patch, per head:
    (B, H, gh, gw), each head's map summing to at most 1 (the rest goes to prefix tokens). A model without a
    [CLS] token (mean pooling) has no such query; then the mean over all patch queries is used, i.e. how
    much attention each patch receives on average."""
    p = model.num_prefix_tokens
    if getattr(model, "cls_token", None) is not None:
        rows = attn[:, :, 0, p:]  # (B, H, N): query [CLS], keys = patches
    else:
        rows = attn[:, :, p:, p:].mean(dim=2)  # (B, H, N)
    return rows.reshape(rows.shape[0], rows.shape[1], *grid)  # (B, H, gh, gw)


def attention_rollout(attentions, head_fusion: str = "mean", residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each input token flows into each output token.

    ``attentions`` is the per-layer attention in layer order: a dict {layer: (B, H, T, T)} (the maps
    ``model.forward_with_attention`` returns), a list of such tensors, or one (L, B, H, T, T) tensor. Heads are
    fused (``"mean"``, ``"max"`` or ``"min"``); with ``residual`` each layer's matrix becomes
    0.5 A + 0.5 I (the skip connection) with rows renormalised, and the layers are multiplied:
    R = A_L ... A_2 A_1, (B, T, T). Row 0 of R, over the patch columns, is the [CLS] token's rollout map.
    """
    if isinstance(attentions, Mapping):
        layers = [attentions[k] for k in sorted(attentions)]
    else:
        layers = list(attentions)
    if not layers:
        raise ValueError("attention_rollout needs the attention of at least one layer")
    fuse = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1), "min": lambda a: a.amin(dim=1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {', '.join(fuse)}, got {head_fusion!r}")
    rollout = None
    for a in layers:
        a = torch.as_tensor(a).double()
        a = fuse[head_fusion](a[None] if a.ndim == 3 else a)  # (B, T, T)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)  # rows are distributions again
        rollout = a if rollout is None else a @ rollout  # (B, T, T)
    return rollout.float()


def rollout_rows(model, rollout: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A rollout (B, T, T) -> the [CLS] token's row over the patches (the mean over patch queries without
    [CLS]), (B, gh, gw), each map renormalised to sum 1."""
    p = model.num_prefix_tokens
    rows = rollout[:, 0, p:] if getattr(model, "cls_token", None) is not None else rollout[:, p:, p:].mean(dim=1)
    rows = rows / rows.sum(dim=-1, keepdim=True)  # (B, N)
    return rows.reshape(-1, *grid)  # (B, gh, gw)


@dataclass
class AttentionReadout:
    """One forward pass seen from inside: ``logits`` (B, classes), ``rollout`` (B, gh, gw) and ``layers``,
    {layer: the [CLS] query's attention per head (B, heads, gh, gw)}."""

    logits: torch.Tensor
    rollout: torch.Tensor
    layers: dict[int, torch.Tensor]


@torch.no_grad()
def read_attention(model, x: torch.Tensor, head_fusion: str = "mean") -> AttentionReadout:
    """Logits, rollout and every layer's [CLS] attention of images ``x`` (C, H, W) or (B, C, H, W), in one pass."""
    x = _batch(x)
    grid = model.patch_embed.grid_for(*x.shape[-2:])
    logits, maps = model.forward_with_attention(x)  # {layer: (B, H, T, T)}
    return AttentionReadout(logits, rollout_rows(model, attention_rollout(maps, head_fusion), grid),
                            {i: query_rows(model, a, grid) for i, a in maps.items()})


@torch.no_grad()
def cls_attention_maps(model, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """How much the [CLS] token attends to each patch in one layer (default the last), per head:
    (B, heads, gh, gw); see :func:`query_rows`. Only that layer computes its attention explicitly."""
    x = _batch(x)
    (i, a), = model.forward_with_attention(x, [layer])[1].items()  # (B, H, T, T)
    return query_rows(model, a, model.patch_embed.grid_for(*x.shape[-2:]))


@torch.no_grad()
def rollout_maps(model, x: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """The [CLS] token's attention rollout over the patches, (B, gh, gw), each map renormalised to sum 1
    (for a model without [CLS], the mean over patch queries)."""
    return read_attention(model, x, head_fusion).rollout
