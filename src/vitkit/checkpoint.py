"""Model weights on disk: safetensors with the architecture (``ViTConfig``) and any user metadata (class
names, preprocessing) in its header, so a weights file alone rebuilds the model
(:meth:`vitkit.VisionTransformer.from_pretrained` does)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ViTConfig
from .errors import CheckpointError
from .fileio import atomic_path

WEIGHTS_SUFFIX = ".safetensors"


def resolve_weights_path(path: str | Path) -> Path:
    """``run/checkpoints/best`` -> ``run/checkpoints/best.safetensors``; a run folder -> its best checkpoint."""
    p = Path(path)
    if p.is_dir() and (p / "checkpoints").is_dir():
        p = p / "checkpoints" / "best"
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


def read_header(path: str | Path) -> tuple[ViTConfig | None, dict]:
    """The (config, metadata) stored in a weights file, without reading the tensors."""
    from safetensors import safe_open

    path = resolve_weights_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file ({e})") from None
    cfg = ViTConfig.from_dict(json.loads(header["vitkit_config"])) if "vitkit_config" in header else None
    return cfg, json.loads(header.get("metadata", "{}"))


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load a weights file into ``model``; a file of another architecture is one error listing what differs.
    Returns the file's metadata."""
    from safetensors.torch import load_file

    path = resolve_weights_path(path)
    _, meta = read_header(path)
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({e})") from None
    check_state_dict(model, state, str(path), strict=strict)
    model.load_state_dict(state, strict=strict)
    return meta


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
