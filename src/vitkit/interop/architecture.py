"""A :class:`ViTConfig` from a state dict in vitkit's keys: the shapes give the sizes, the source's own words
and the caller's overrides the rest."""

from __future__ import annotations

import math
import re

import torch

from ..compat import apply_aliases
from ..config import ViTConfig, check_options, pair
from ..presets import VARIANTS
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
    cls = "cls_token" in state
    regs = state["reg_token"].shape[1] if "reg_token" in state else 0  # (1, R, D)
    fc_norm = "fc_norm.weight" in state
    fields = dict(
        patch_size=patch, in_channels=chans, embed_dim=dim, depth=max(depth, 1),
        qkv_bias="blocks.0.attn.qkv.bias" in state, class_token=cls, reg_tokens=regs,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        pool="mean" if fc_norm or not cls else "cls", fc_norm=fc_norm,
        final_norm=fc_norm or "norm.weight" in state,
        layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state else None)  # any value: gamma is loaded
    fields.update(_mlp(state, dim))
    fields.update(_attention_width(state, dim))
    fields.update(_head(state))
    freqs = state.get("rope.freqs")
    if isinstance(freqs, Tensor) and freqs.ndim == 4:
        fields["num_heads"] = freqs.shape[2]
    pool_fc1 = state.get("attn_pool.mlp.fc1.weight")  # (M', D): the pool's own MLP width when it differs
    if isinstance(pool_fc1, Tensor) and pool_fc1.shape[0] != int(dim * fields.get("mlp_ratio", 4.0)):
        fields["attn_pool_mlp_ratio"] = _ratio(pool_fc1.shape[0], dim)
    fields.update({name: value for name, value, present in _options(state) if present})
    if "pos_embed" not in state:
        fields["pos_embed"] = "none"
    table = state.get(f"blocks.0.{_REL}")  # ((2h-1)(2w-1) + 3, H): BEiT's relative position bias
    if isinstance(table, Tensor):
        fields.update(use_relative_position=True, rpb_kwargs={"bias_type": "2d"}, num_heads=table.shape[1])
        side = (math.isqrt(table.shape[0] - 3) + 1) // 2
        fields.setdefault("img_size", side * patch)
    fields.update(hints)
    fields.update(overrides)
    fields.setdefault("num_heads", _HEADS_BY_WIDTH.get(dim))
    if fields["num_heads"] is None:
        raise ConfigError(f"cannot tell the number of attention heads of a width-{dim} model from its weights; "
                          "pass num_heads=... (on the command line: --set model.num_heads=...)")
    prefix = int(fields["class_token"]) + fields["reg_tokens"] + int(bool(fields.get("distilled")))
    pos = state.get("pos_embed")  # (1, L, D)
    if isinstance(pos, Tensor) and pos.ndim == 3 and fields.get("pos_embed", "learn") == "learn":
        _infer_grid(fields, pos.shape[1], patch, prefix, img_size)
    check_options(fields)
    return ViTConfig(**fields)


_REL = "attn.relative_position_bias.relative_position_bias_table"


def _options(state: dict) -> list[tuple[str, object, bool]]:
    """(ViTConfig field, value, whether the keys show it): options set only when their keys say so, so a
    plain ViT's config names none of them."""
    return [
        ("norm_pre", True, "norm_pre.weight" in state),  # CLIP's ln_pre
        ("patch_bias", False, "patch_embed.proj.bias" not in state),
        ("head_bias", False, "head.weight" in state and "head.bias" not in state),
        ("qkv_bias", "qv", "blocks.0.attn.q_bias" in state),  # BEiT: q and v biases, none for k
        ("pool", "map", "attn_pool.latent" in state),
        ("distilled", True, "dist_token" in state),
        ("patch_norm", True, "patch_embed.pre_norm.weight" in state),
        ("embed_norm", True, "patch_embed.norm.weight" in state and "patch_embed.pre_norm.weight" not in state),
        ("attn_norm", True, "blocks.0.attn.norm.weight" in state),  # EVA-CLIP's inner attention norm
        ("mlp_norm", True, "blocks.0.mlp.norm.weight" in state),  # EVA-02's sub-LN
        ("proj_bias", False, "blocks.0.attn.proj.weight" in state and "blocks.0.attn.proj.bias" not in state),
        ("mlp_bias", False, "blocks.0.mlp.fc1.weight" in state and "blocks.0.mlp.fc1.bias" not in state),
        ("rope", "mixed", "rope.freqs" in state),  # RoPE-Mixed's learned frequencies (2, depth, heads, d/2)
    ]


def _attention_width(state: dict, dim: int) -> dict:
    """``attn_dim`` when q, k, v are wider or narrower than the tokens: ``qkv`` (3A, D), ``proj`` (D, A)."""
    qkv, proj = state.get("blocks.0.attn.qkv.weight"), state.get("blocks.0.attn.proj.weight")
    if not isinstance(qkv, Tensor):
        return {}
    if qkv.shape[0] % 3 or (isinstance(proj, Tensor) and proj.shape[1] * 3 != qkv.shape[0]):
        raise CheckpointError(f"the attention's qkv {tuple(qkv.shape)} and proj "
                              f"{tuple(getattr(proj, 'shape', ()))} do not fit one width of q, k and v")
    width = qkv.shape[0] // 3
    return {} if width == dim else {"attn_dim": width}


def _head(state: dict) -> dict:
    """An MLP head: a hidden layer ``pre_logits.fc`` (R, D) before the classifier, a ``head_norm`` before it."""
    fc = state.get("pre_logits.fc.weight")
    out = {"head_norm": True} if "head_norm.weight" in state else {}
    if isinstance(fc, Tensor):
        out["head_hidden_dim"] = fc.shape[0]
    return out


def representation_layer(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """A format's pre-logits (representation) layer, the tensors under ``prefix`` (timm's ``pre_logits.fc.*``,
    torchvision's ``heads.pre_logits.*``, JAX's ``pre_logits/kernel`` (D, R) and ``bias``), as vitkit's
    ``pre_logits.fc`` Linear; the model computes ``head(tanh(pre_logits.fc(x)))`` with it, as they do."""
    out = {}
    for key, t in tensors.items():
        part = key[len(prefix):]
        if part in ("kernel", "fc.weight", "weight"):
            out["pre_logits.fc.weight"] = t.T if part == "kernel" else t  # (R, D)
        elif part in ("fc.bias", "bias"):
            out["pre_logits.fc.bias"] = t
        else:
            raise CheckpointError(f"the pre-logits layer holds {key!r}, which is no part of a Linear")
    if "pre_logits.fc.weight" not in out:
        raise CheckpointError(f"the pre-logits layer ({', '.join(tensors)}) has no weight")
    return out


def _mlp(state: dict, dim: int) -> dict:
    """MLP width (as mlp_ratio, exact through ``int(dim * ratio)``) and kind: a packed SwiGLU's fc1 has twice
    the rows that fc2 has columns ([gate; up], then down), and gates with SiLU."""
    fc1, fc2 = state.get("blocks.0.mlp.fc1.weight"), state.get("blocks.0.mlp.fc2.weight")  # (M, D), (D, M')
    if not isinstance(fc1, Tensor):
        return {}
    hidden = fc1.shape[0]
    out = {"mlp_ratio": _ratio(hidden, dim)}
    if isinstance(fc2, Tensor) and fc2.shape[1] * 2 == hidden:
        out.update(mlp="swiglu", act="silu")
    return out


def _ratio(hidden: int, dim: int) -> float:
    """The mlp_ratio whose ``int(dim * ratio)`` is ``hidden`` (float rounding: int(176 * (240 / 176)) == 239)."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


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


