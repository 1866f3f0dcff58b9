"""Other libraries' ViT weights in vitkit's terms, exactly: a state dict in vitkit's (timm's) keys and the
:class:`ViTConfig` that computes what the source computes. :meth:`vitkit.VisionTransformer.from_pretrained`
builds the model from them; nothing here builds a model.

:func:`load_pretrained` takes a file (``.safetensors``, ``.pth``/``.bin``, ``.npz``), a
Hugging Face model folder, a vitkit run folder, a state dict, or a live timm / transformers / torchvision
model. It

1. reads the tensors (and whatever the source says about its architecture: heads, norm eps, pooling ...),
2. detects the format by a marker key and renames the tensors to timm's keys (vitkit's own) with that
   format's declarative key table (:data:`FORMATS`),
3. infers the :class:`ViTConfig` from the tensor shapes plus the source's description plus the caller's
   overrides,
4. resamples the position embedding for another ``img_size`` and re-initialises the head for another
   ``num_classes`` (with a warning), and
5. hands them to the model, which raises one :class:`CheckpointError` listing every missing, unexpected or
   mis-shaped tensor.

Numerics follow the source: Hugging Face models keep their ``layer_norm_eps`` (1e-12 by default), JAX
checkpoints default to the tanh GELU that flax computes (pass ``act="gelu"`` to reproduce timm's port).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..config import ViTConfig
from ..errors import ConfigError
from ..layers.position import resample_pos_embed
from .architecture import infer_config
from .formats import FORMATS, SOURCE_ALIASES, Format, Rule, convert_state_dict, detect_format, unwrap
from .sources import Source, read_source

Tensor = torch.Tensor

__all__ = ["Pretrained", "load_pretrained", "read_source", "Source", "detect_format", "convert_state_dict",
           "infer_config", "FORMATS", "Format", "Rule"]


# --------------------------------------------------------------------------------------------------------------
# The entry point


@dataclass
class Pretrained:
    """What a weights source holds, ready for a model: the architecture to build (``config``, with the caller's
    ``num_classes`` and ``img_size``), the state dict in vitkit's keys (position embedding resampled), a name
    for messages, and whether the head is to start fresh (its keys are then absent from ``state``)."""

    config: ViTConfig
    state: dict[str, Tensor]
    name: str
    fresh_head: bool


def load_pretrained(src, source: str = "auto", num_classes: int | None = None, img_size=None,
                    **overrides) -> Pretrained:
    """Read ``src`` (see :meth:`vitkit.VisionTransformer.from_pretrained`) and convert it to vitkit's keys and
    architecture. ``source`` forces the format; ``overrides`` are ViTConfig fields, e.g. ``num_heads`` for a
    state dict of a non-standard width, ``drop_path_rate`` for fine-tuning, ``act="gelu"`` to reproduce timm's
    port of a JAX checkpoint. A head for another ``num_classes`` starts fresh (with a warning)."""
    if source not in SOURCE_ALIASES:
        raise ConfigError(f"unknown weights source {source!r}; expected one of: {', '.join(SOURCE_ALIASES)}")
    read = read_source(src)
    fmt = SOURCE_ALIASES[source]
    if fmt == "auto":
        fmt = read.format or detect_format(unwrap(read.state))
    state, pre_logits, facts = convert_state_dict(read.state, fmt)
    hints = {**FORMATS[fmt].defaults, **facts, **read.hints}
    fresh_head = bool(pre_logits)
    if pre_logits:  # head(tanh(pre_logits(x))) cannot be reproduced: keep the features, drop both layers
        if "head.weight" in state:
            hints.setdefault("num_classes", state["head.weight"].shape[0])  # (C, R)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        warnings.warn(f"{read.name} has a pre-logits (representation) layer, which vitkit does not have; it "
                      "was dropped and the head after it starts from scratch", stacklevel=3)
    cfg = infer_config(state, hints, overrides, img_size)  # the checkpoint's own architecture

    target = cfg.replace(**{k: v for k, v in (("num_classes", num_classes), ("img_size", img_size))
                            if v is not None})
    if target.num_classes != cfg.num_classes:
        fresh_head = True
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        had = f"a {cfg.num_classes}-class head" if cfg.num_classes else "no head"
        now = f"a new {target.num_classes}-class head starts from scratch" if target.num_classes else \
            "it is removed (num_classes=0)"
        warnings.warn(f"{read.name} has {had}; {now}", stacklevel=3)
    if target.grid_size != cfg.grid_size and isinstance(state.get("pos_embed"), Tensor):
        prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], target.grid_size, cfg.grid_size, prefix)
    return Pretrained(target, state, f"{read.name} ({fmt} format)", fresh_head)
