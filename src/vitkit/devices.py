"""Which device a command runs on, and the mixed precision it runs in there: the ground floor that training,
evaluation and the commands share."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError


def pick_device(name: str, local_rank: int = 0, no_gpu: str = "ask for the cpu (or auto) instead") -> torch.device:
    """``auto`` -> this process's GPU if there is one (else mps, else cpu); ``cuda`` -> ``cuda:LOCAL_RANK``.
    ``no_gpu`` ends the sentence when CUDA is asked for on a machine without it."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but this machine has no Apple GPU; use device=cpu or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but this machine has no CUDA GPU; {no_gpu}")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU autocast is slower than float32 for these models)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
