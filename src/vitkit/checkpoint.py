"""Model weights on disk: safetensors with the architecture (``ViTConfig``) and any user metadata (class
names, preprocessing) in its header, so a weights file alone rebuilds the model
(:meth:`vitkit.VisionTransformer.from_pretrained` does).

This module is the only code that reads or writes such a file, and its header is parsed in one place
(:func:`_open`). It also holds :class:`Pretrained`, the record every weights source becomes (vitkit's own file
read here as saved, another library's through :mod:`vitkit.interop`), with the two rules all sources share:
a head that starts fresh, and the adaptation to another ``num_classes`` or ``img_size``."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .compat import apply_aliases
from .config import ViTConfig, check_options
from .errors import CheckpointError
from .fileio import atomic_path
from .layers.position import resample_pos_embed
from .runs import Run

WEIGHTS_SUFFIX = ".safetensors"
HEAD_PREFIXES = ("head.", "head_dist.")  # the classifier's tensors: what a fresh head leaves out


def resolve_weights_path(path: str | Path) -> Path:
    """``run/checkpoints/best`` -> ``run/checkpoints/best.safetensors``; a run folder -> its best checkpoint."""
    p = Path(path)
    if p.is_dir() and Run(p).checkpoints.is_dir():
        p = Run(p).best_weights
    if p.suffix != WEIGHTS_SUFFIX and not p.is_file():
        p = p.with_name(p.name + WEIGHTS_SUFFIX)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {path} not found: it does not exist (expected a weights file or a run folder)")
    return p


def torch_load_error(path: Path, e: Exception, what: str = "checkpoint") -> CheckpointError:
    """One sentence for a file ``torch.load(weights_only=True)`` refused: an ONNX export, pickled Python
    objects (never loaded otherwise: unpickling runs code, so no sentence suggests it), or a truncated or
    foreign file. torch's own message runs to six lines and invites ``weights_only=False``."""
    with open(path, "rb") as f:
        head = f.read(256)
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"onnx" in head.lower()):
        return CheckpointError(f"{what} {path} is an ONNX export, which cannot be loaded as a checkpoint; pass the "
                               ".safetensors weights it was exported from")
    text = str(e)
    if "Weights only load failed" in text or isinstance(e, pickle.UnpicklingError):
        found = re.search(r"GLOBAL (\S+)", text)
        held = f" ({found.group(1)})" if found else ""
        return CheckpointError(f"{what} {path} holds pickled Python objects{held} besides tensors, which vitkit "
                               "does not load because unpickling can run any code; save the weights as a state "
                               "dict (torch.save(model.state_dict(), path)) or a .safetensors file")
    reason = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(e).__name__
    return CheckpointError(f"{what} {path} is truncated or not a PyTorch checkpoint ({reason[:100]})")


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model's weights (or ``state_dict`` in their place: a trainer's LoRA-merged weights), its
    ``ViTConfig`` and ``metadata`` (JSON-able) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        path = path.with_name(path.name + WEIGHTS_SUFFIX)
    header = {"format": "vitkit", "metadata": json.dumps(metadata or {})}
    if isinstance(getattr(model, "config", None), ViTConfig):
        header["vitkit_config"] = json.dumps(model.config.to_dict())
    state = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def _open(path: Path, tensors: str) -> tuple[ViTConfig | None, dict, dict | None]:
    """(the stored config or None, the metadata, the tensors) of a safetensors file: the one place its header
    is parsed. ``tensors``: "all" reads them, "own" only from a file with vitkit's header, "none" never (the
    header alone is read then)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            own = "vitkit_config" in header
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors == "all" or (tensors == "own" and own) \
                else None
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file ({e})") from None
    cfg = ViTConfig.from_dict(json.loads(header["vitkit_config"])) if own else None
    return cfg, json.loads(header.get("metadata", "{}")), state


def read_header(path: str | Path) -> tuple[ViTConfig | None, dict]:
    """The (config, metadata) stored in a weights file, without reading the tensors."""
    cfg, meta, _ = _open(resolve_weights_path(path), "none")
    return cfg, meta


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], ViTConfig | None, dict]:
    """(tensors, stored config or None, metadata) of any safetensors file, vitkit's or another library's."""
    cfg, meta, state = _open(Path(path), "all")
    return state, cfg, meta


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load a weights file into ``model``; a file of another architecture is one error listing what differs.
    Returns the file's metadata."""
    path = resolve_weights_path(path)
    _, meta, state = _open(path, "all")
    check_state_dict(model, state, str(path), strict=strict)
    model.load_state_dict(state, strict=strict)
    return meta


# --------------------------------------------------------------------------------------------------------------
# Weights ready for a model


def without_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` less the classifier's tensors (:data:`HEAD_PREFIXES`)."""
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}


@dataclass
class Pretrained:
    """What a weights source holds, ready for a model: the architecture to build (``config``, with the caller's
    ``num_classes`` and ``img_size``), the state dict in vitkit's keys (position embedding resampled), a name
    for messages (the source, and ``format``, the layout it was read as), whether the head is to start fresh
    (its keys are then absent from ``state``), and how the
    model's images were preprocessed in training (the fields of :class:`vitkit.data.preprocess.Preprocess`
    but the size, which is the model's). ``metadata`` is a vitkit file's own record (classes, preprocessing,
    data, ...): {} for other sources."""

    config: ViTConfig
    state: dict[str, torch.Tensor]
    name: str
    fresh_head: bool = False
    format: str | None = None
    preprocess: dict | None = None  # mean, std, interpolation, crop_pct, crop_mode (None: the source says none)
    classes: list[str] | None = None  # the names of the head's outputs (None: unnamed, or a new head)
    metadata: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The source and its format, for messages: ``run/checkpoints/best.safetensors (vitkit format)``."""
        return f"{self.name} ({self.format} format)" if self.format else self.name

    def with_fresh_head(self) -> "Pretrained":
        """The same weights with the head left out, so the model's own fresh initialisation is its head: the
        one rule for a new ``num_classes`` and for a classifier vitkit's head cannot reproduce."""
        return dataclasses.replace(self, state=without_head(self.state), fresh_head=True, classes=None)

    def state_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The state dict to load into ``model`` (built from ``config``): with a fresh head, the model's own
        initialised head tensors stand in for the ones left out."""
        if not self.fresh_head:
            return self.state
        return {**self.state, **{k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}}

    def adapted(self, num_classes: int | None = None, img_size=None, stacklevel: int = 3) -> "Pretrained":
        """For the caller's ``num_classes`` (another count starts a fresh head, with a warning; the names of
        the classes stay only with the head they name) and ``img_size`` (the learned position embedding
        resampled to the new grid). ``config`` is then the model to build."""
        cfg = self.config
        target = cfg.replace(**{k: v for k, v in (("num_classes", num_classes), ("img_size", img_size))
                                if v is not None})
        found = self
        if target.num_classes != cfg.num_classes:
            found = self.with_fresh_head()
            had = f"a {cfg.num_classes}-class head" if cfg.num_classes else "no head"
            now = f"a new {target.num_classes}-class head starts from scratch" if target.num_classes else \
                "it is removed (num_classes=0)"
            warnings.warn(f"{self.name} has {had}; {now}", stacklevel=stacklevel + 1)
        state = found.state
        if target.grid_size != cfg.grid_size and isinstance(state.get("pos_embed"), torch.Tensor):
            prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
            state = {**state, "pos_embed": resample_pos_embed(state["pos_embed"], target.grid_size, cfg.grid_size,
                                                              prefix)}
        classes = found.classes if found.classes and len(found.classes) == target.num_classes else None
        return dataclasses.replace(found, config=target, state=state, classes=classes)


def read_own(src, overrides: dict | None = None) -> Pretrained | None:
    """vitkit's own weights as saved, read directly (their keys are vitkit's, so no key table renames them):
    a weights file with vitkit's header (``RUN``, ``RUN/checkpoints/best``, a ``.safetensors`` path) or a live
    vitkit model, with ``overrides`` (ViTConfig fields) applied to the stored config; None for any other
    source, which :func:`vitkit.interop.load_pretrained` reads."""
    overrides = apply_aliases(dict(overrides or {}))
    check_options(overrides)
    if isinstance(src, nn.Module):
        if not isinstance(getattr(src, "config", None), ViTConfig):
            return None
        return Pretrained(src.config.replace(**overrides), src.state_dict(),
                          f"the given {type(src).__name__}",
                          format="vitkit")
    if not isinstance(src, (str, Path)) or (Path(src).is_dir() and not Run(src).checkpoints.is_dir()):
        return None  # a model folder of another library
    try:
        path = resolve_weights_path(src)
    except CheckpointError:
        return None
    if path.suffix.lower() != WEIGHTS_SUFFIX:
        return None
    cfg, meta, state = _open(path, "own")
    if cfg is None:
        return None
    meta = meta if isinstance(meta, dict) else {}
    classes = meta.get("classes")
    return Pretrained(cfg.replace(**overrides), state, str(path), format="vitkit", preprocess=meta.get("preprocess"),
                      classes=list(classes) if isinstance(classes, list) else None, metadata=meta)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Raise one CheckpointError naming missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if shapes:
        problems.append("shape mismatch (file vs model): " + _few(shapes))
    if strict and missing:
        problems.append("missing: " + _few(missing))
    if strict and unexpected:
        problems.append("unexpected: " + _few(unexpected))
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit this model ({'; '.join(problems)})")


def _few(items: list[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
