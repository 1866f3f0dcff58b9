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

from ..devices import pick_device


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
