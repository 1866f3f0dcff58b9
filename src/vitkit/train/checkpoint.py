"""Training checkpoints: the full state needed to resume a run exactly, written so a crash never breaks it.

A run keeps ``checkpoints/last.state.pt`` and ``checkpoints/previous.state.pt``. Each is one file holding the
model weights, EMA weights, optimizer, scheduler, every RNG state, and where the run stands (the fields of
:class:`~vitkit.train.state.TrainState`: epoch, position in the epoch, step, best metric ...). One file (not
weights here and optimizer there) because a single file is replaced atomically (write ``*.tmp``, then
rename): a kill at any instant leaves either the old or the new checkpoint, never a mix of two steps. Resuming takes ``last`` and falls back to ``previous``
(with a warning) if ``last`` is missing or corrupt. The weights people use are exported beside them as
``last.safetensors`` and ``best.safetensors`` (see :func:`vitkit.checkpoint.save_weights`).

Also here: the simple ``save_checkpoint`` / ``load_checkpoint`` of a model and its optimizer, for code that
writes its own training loop.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import check_state_dict, torch_load_error
from ..errors import CheckpointError
from ..fileio import atomic_path
from ..runs import LAST_STATE, PREVIOUS_STATE, Run

STATE_FORMAT = "vitkit-train-state"
STATE_SUFFIX = ".state.pt"
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "batch", "step", "best_accuracy", "rng")


def read_torch_file(path: str | Path, what: str = "checkpoint") -> dict:
    """``torch.load`` (tensors and plain data only) with every failure turned into one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes); it was probably cut off while being written")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors of truncated or foreign files have many types
        raise torch_load_error(path, e, what) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, expected a dict of training state")
    return obj


# ---------------------------------------------------------------------------------------------------------
# RNG state


def rng_state() -> dict:
    """Every global RNG a training step may draw from (dropout, stochastic depth, user code)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------------
# The run's training state


def save_training_state(state: dict, checkpoint_dir: str | Path) -> Path:
    """Write ``last.state.pt``, keeping the one it replaces as ``previous.state.pt``."""
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir / LAST_STATE
    with atomic_path(last) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)
        if last.exists():  # only once the new state is fully written
            os.replace(last, checkpoint_dir / PREVIOUS_STATE)
    return last


def load_training_state(path: str | Path) -> dict:
    """A training state file, checked to be one; any problem is one CheckpointError."""
    state = read_torch_file(path, "training state")
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"training state {path} is not a vitkit training state (no '{STATE_FORMAT}' "
                              "marker); pass RUN/checkpoints/last.state.pt or a run folder")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"training state {path} lacks {', '.join(missing)}; it is incomplete")
    return state


def resolve_state_path(path: str | Path) -> Path:
    """``--resume PATH``: a state file, ``RUN/checkpoints/last`` (or its .safetensors), or a run folder."""
    p = Path(path)
    if p.is_dir():
        p = Run(p).last_state if Run(p).has_checkpoints() else p / LAST_STATE
    elif p.name.endswith(".safetensors"):
        p = p.with_name(p.name[: -len(".safetensors")] + STATE_SUFFIX)
    elif not p.name.endswith(STATE_SUFFIX) and not p.is_file():
        p = p.with_name(p.name + STATE_SUFFIX)
    if not p.is_file():
        raise CheckpointError(f"cannot resume from {path}: training state {p} does not exist")
    return p


def find_resumable(checkpoint_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest valid training state of a run (``last``, else ``previous`` with a warning), or None
    when the run has none yet. Both present but unreadable is a CheckpointError."""
    checkpoint_dir = Path(checkpoint_dir)
    candidates = [checkpoint_dir / name for name in (LAST_STATE, PREVIOUS_STATE)]
    problems = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            state = load_training_state(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems or path.name.startswith("previous"):
            why = problems[0] if problems else f"{candidates[0]} is missing"
            warnings.warn(f"{why}; resuming from the previous checkpoint {path} instead", stacklevel=2)
        return path, state
    if problems:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_dir}: {' and '.join(problems)}")
    return None


# ---------------------------------------------------------------------------------------------------------
# A simple model + optimizer checkpoint, for hand-written loops


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, epoch: int, metrics: dict,
                    save_path: str | Path) -> None:
    """Save model weights, optimizer state, epoch and metrics to one file, atomically."""
    config = getattr(model, "config", None)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "epoch": int(epoch), "metrics": dict(metrics),
             "model_config": config.to_dict() if hasattr(config, "to_dict") else None}
    with atomic_path(save_path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    checkpoint_path: str | Path) -> tuple[int, dict]:
    """Load a :func:`save_checkpoint` file (or a run's training state) into ``model`` and ``optimizer``.
    Returns ``(epoch, metrics)``; a missing, truncated or other-architecture file is a CheckpointError."""
    ckpt = read_torch_file(checkpoint_path)
    if "model" not in ckpt:
        raise CheckpointError(f"checkpoint {checkpoint_path} has no model weights")
    check_state_dict(model, ckpt["model"], str(checkpoint_path))
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in {checkpoint_path} does not fit this optimizer ({e})") from None
    return int(ckpt.get("epoch", 0)), dict(ckpt.get("metrics", {}))
