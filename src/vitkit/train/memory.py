"""Will a run fit? The memory a training run needs, estimated from its config before anything is allocated,
against what the chosen device has free, so that an absurd model is one sentence instead of the kernel's
OOM killer (or an allocator's error deep inside a layer).

The estimate is a lower bound of what training holds at its peak: the float32 weights, their gradients,
AdamW's two moments (and an EMA copy), plus the activations backward keeps for one training batch of this
process. Memory is what the operating system (``MemAvailable``) or the CUDA driver (``cudaMemGetInfo``)
says is free now.
"""

from __future__ import annotations

import os

import torch

from ..config import ViTConfig
from ..errors import ConfigError

FLOAT = 4  # bytes of a float32


def parameter_count(cfg: ViTConfig) -> int:
    """The number of parameters of ``cfg``'s model, counted from its shapes (within a fraction of a percent:
    a few norms and biases are approximated), without building it."""
    d, m, t = cfg.embed_dim, cfg.mlp_dim, cfg.num_patches + cfg.num_prefix_tokens
    m_out = m // 2 if cfg.mlp == "swiglu" else m
    a = cfg.attn_width  # q, k, v's width (attn_dim)
    per_block = 4 * d * a + 3 * a + d + d * m + m + m_out * d + d + 4 * d  # attention, MLP, two norms
    if cfg.layer_scale_init is not None:
        per_block += 2 * d
    if cfg.use_relative_position:
        per_block += cfg.num_heads * ((2 * cfg.grid_size[0] - 1) * (2 * cfg.grid_size[1] - 1) + 3)
    patch = cfg.in_channels * cfg.patch_size ** 2 * d + d
    position = t * d if cfg.pos_embed == "learn" else 0
    pool = (4 * d * d + 2 * d * m + 6 * d) if cfg.pool == "map" else 0
    head = (cfg.num_features + 1) * cfg.num_classes * (2 if cfg.distilled else 1) + 2 * d * cfg.head_norm
    head += (d + 1) * cfg.head_hidden_dim if cfg.head_hidden_dim is not None else 0
    return cfg.depth * per_block + patch + position + cfg.num_prefix_tokens * d + pool + head + 4 * d


def activation_bytes(cfg: ViTConfig, batch: int, grad_checkpointing: bool = False) -> int:
    """Bytes of the activations a training step keeps for backward, for ``batch`` images: per block the
    normed inputs, q, k, v, the attention output and the MLP's hidden width (twice: before and after the
    activation), plus the attention weights where they are materialised (``attn_impl: explicit``). With
    gradient checkpointing, each block's input plus one block's worth."""
    d, m, t = cfg.embed_dim, cfg.mlp_dim, cfg.num_patches + cfg.num_prefix_tokens
    per_block = t * (4 * d + 4 * cfg.attn_width + 2 * m)  # q, k, v and the heads' output are attn_dim wide
    if cfg.attn_impl == "explicit":
        per_block += 2 * cfg.num_heads * t * t
    blocks = cfg.depth * t * d + per_block if grad_checkpointing else cfg.depth * per_block
    return FLOAT * batch * blocks


def training_bytes(cfg: ViTConfig, batch: int, *, ema: bool = False, grad_checkpointing: bool = False) -> int:
    """The estimate: weights, gradients and AdamW's two moments (16 bytes a parameter, 20 with an EMA),
    and the activations of one batch."""
    per_parameter = FLOAT * (5 if ema else 4)
    return per_parameter * parameter_count(cfg) + activation_bytes(cfg, batch, grad_checkpointing)


def free_bytes(device: torch.device) -> int | None:
    """Memory free on ``device`` now, or None where it cannot be told (then nothing is refused)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(cfg: ViTConfig, batch: int, device: torch.device, *, ema: bool = False,
               grad_checkpointing: bool = False) -> None:
    """Refuse, with one sentence, a run whose estimated memory exceeds what ``device`` has free."""
    need = training_bytes(cfg, batch, ema=ema, grad_checkpointing=grad_checkpointing)
    free = free_bytes(device)
    if free is None or need <= free:
        return
    params = parameter_count(cfg)
    raise ConfigError(f"the model (embed_dim {cfg.embed_dim}, depth {cfg.depth}: {params:,} parameters) needs "
                      f"about {_size(need)} to train with a batch of {batch} on {device.type}, but only "
                      f"{_size(free)} is free; make model.embed_dim, model.depth or data.batch_size smaller"
                      + (" (or set train.grad_checkpointing=true)" if not grad_checkpointing and
                         2 * activation_bytes(cfg, batch) > need else ""))


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PiB"

