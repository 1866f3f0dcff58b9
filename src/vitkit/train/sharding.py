"""``train.strategy: fsdp``: the model sharded over the processes with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each block, then the root, is one ``fully_shard`` unit: a process holds 1/world_size of every parameter
(DTensors) and of its optimizer state, gathers a block's full weights just before the block runs (forward and,
again, backward) and frees them after; gradients are reduce-scattered, averaged as DDP averages them. So a
model too large for one GPU trains, at the price of more communication. On CUDA the gathered weights are bf16
and gradients are reduced in fp32 (``MixedPrecisionPolicy``); on the CPU (gloo) everything stays fp32, so a
CPU run computes what DDP computes. ``train.grad_checkpointing`` composes: the model's
``torch.utils.checkpoint`` calls the sharded block, so its unshard hook runs again when backward recomputes it.

Checkpoints stay ordinary: :func:`full_model_state` and :func:`full_optimizer_state` gather the full tensors
(to the CPU of rank 0, which alone writes), under the model's own keys (FSDP2 adds no prefixes), and
:func:`load_full_state` shards a saved full state again on every rank. These are collectives: every rank calls
them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

def shard(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``model`` in place (each block, then the root) after giving every rank rank 0's weights (each rank
    initialised its own, and FSDP2, unlike DDP, does not broadcast them). Build the optimizer after this: its
    parameters are the DTensor shards."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full, unsharded state dict (CPU tensors, timm-exact keys) on rank 0; an empty dict elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The full optimizer state (keyed by parameter name) on rank 0; an empty dict elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Shard the full states of :func:`full_model_state` and :func:`full_optimizer_state` (read by every rank
    from the state file) into ``model`` and ``optimizer``."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
