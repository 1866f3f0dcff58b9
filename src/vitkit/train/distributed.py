"""One process or many: reading torchrun's environment, the process group, and rank-0-only side effects.

``torchrun --nproc_per_node=N -m vitkit train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; each process
then trains on its shard of every global batch (gloo on the CPU, NCCL on GPUs), gradients are averaged by
DistributedDataParallel, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


NO_GPU_TRAINING = ("a GPU recipe (such as imagefolder-gpu) is too large for a CPU, so use a CPU recipe (digits, "
                   "fashion-mnist, imagefolder), or --set device=cpu to run this one anyway")


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


def setup(device_name: str) -> Context:
    """Join the process group when launched by torchrun (no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank, NO_GPU_TRAINING)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=
                                device if device.type == "cuda" else None)
    return Context(rank, world_size, local_rank, device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order, on every rank (a one-element list for a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on any rank (so all ranks stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
