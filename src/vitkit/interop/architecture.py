"""A :class:`ViTConfig` from a state dict in vitkit's keys: the shapes give the sizes, the source's own words
and the caller's overrides the rest."""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from ..config import VARIANTS, ViTConfig, apply_aliases, pair
from ..errors import CheckpointError, ConfigError

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------------------
# Architecture from tensors

_HEADS_BY_WIDTH = {dim: heads for dim, _, heads, _ in VARIANTS.values()}  # the paper's variants


def infer_config(state: dict[str, Tensor], hints: dict | None = None, overrides: dict | None = None,
                 img_size=None) -> ViTConfig:
    """The ``ViTConfig`` of a vitkit-keyed state dict: shapes give the sizes; ``hints`` (what the source
    says: heads, eps, pooling, image size) and then ``overrides`` (the caller) win over shape guesses.
    ``img_size`` (the caller's) is taken as the checkpoint's own size only for a position embedding that
    is no square grid plus prefix slots but fits that size (see :func:`_infer_grid`)."""
    hints, overrides = dict(hints or {}), apply_aliases(dict(overrides or {}))
    w = state.get("patch_embed.proj.weight")
    if not isinstance(w, Tensor) or w.ndim != 4:
        raise CheckpointError("the weights have no 4-d patch embedding 'patch_embed.proj.weight' "
                              "(D, C, P, P); is this a plain ViT?")
    dim, chans, patch = w.shape[0], w.shape[1], w.shape[-1]  # (D, C, P, P)
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    fc1 = state.get("blocks.0.mlp.fc1.weight")  # (M, D)
    cls = "cls_token" in state
    regs = state["reg_token"].shape[1] if "reg_token" in state else 0  # (1, R, D)
    fc_norm = "fc_norm.weight" in state
    fields = dict(
        patch_size=patch, in_channels=chans, embed_dim=dim, depth=max(depth, 1),
        mlp_ratio=fc1.shape[0] / dim if fc1 is not None else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in state, class_token=cls, reg_tokens=regs,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        pool="mean" if fc_norm or not cls else "cls", fc_norm=fc_norm,
        final_norm=fc_norm or "norm.weight" in state,
        layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state else None)  # any value: gamma is loaded
    fields.update(hints)
    fields.update(overrides)
    fields.setdefault("num_heads", _HEADS_BY_WIDTH.get(dim))
    if fields["num_heads"] is None:
        raise ConfigError(f"cannot tell the number of attention heads of a width-{dim} model from its weights; "
                          "pass num_heads=...")
    pos = state.get("pos_embed")  # (1, L, D)
    if isinstance(pos, Tensor) and pos.ndim == 3 and fields.get("pos_embed", "learn") == "learn":
        _infer_grid(fields, pos.shape[1], patch, int(fields["class_token"]) + fields["reg_tokens"], img_size)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ViTConfig)})
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; expected ViTConfig fields")
    return ViTConfig(**fields)


def _infer_grid(fields: dict, length: int, patch: int, prefix: int, caller_img_size=None) -> None:
    """Image size and whether the position embedding covers the prefix tokens, from its length L.

    In order: the source's own image size; a square grid after the prefix slots (the usual layout); the
    caller's ``img_size`` if its grid fits L (non-square checkpoints); a square grid without prefix slots
    (big_vision, DeiT III: ``no_embed_class``)."""
    def patches(img_size) -> int:
        h, w = pair(img_size)
        return (h // patch) * (w // patch)

    if "img_size" not in fields and caller_img_size is not None and not _is_square(length - prefix) \
            and length in (patches(caller_img_size), patches(caller_img_size) + prefix):
        fields["img_size"] = caller_img_size
    if "img_size" in fields:
        fields.setdefault("no_embed_class", prefix > 0 and length == patches(fields["img_size"]))
        return
    covers = fields.get("no_embed_class") is not True and prefix > 0 and _is_square(length - prefix)
    if covers:
        n = length - prefix
    elif _is_square(length):
        n = length
    else:
        raise CheckpointError(f"cannot infer the patch grid of a {length}-token position embedding with "
                              f"{prefix} prefix token(s); pass img_size=(height, width) of the checkpoint")
    fields["img_size"] = math.isqrt(n) * patch
    fields.setdefault("no_embed_class", prefix > 0 and not covers)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


