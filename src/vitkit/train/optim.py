"""AdamW parameter groups (no decay on norms, biases, position embeddings, tokens; layer-wise lr decay) and the
learning-rate schedule (linear warm-up, then cosine to ``min_lr``; optionally the head alone first)."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from .config import OptimConfig


HEAD_PREFIXES = ("head.", "head_dist.")  # the classifier(s) a fine-tune replaces


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay: embeddings and the tokens 0, block i -> i + 1, the final
    norms, attention pool and heads depth + 1."""
    if name.startswith(("patch_embed", "cls_token", "reg_token", "dist_token", "pos_embed", "norm_pre")):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 split_head: bool = False) -> list[dict]:
    """AdamW groups. Weight decay skips every 1-d parameter (norm weights, biases) and the names in
    ``model.no_weight_decay()`` (position embedding, [CLS] and register tokens): decaying them only pulls
    them toward zero, which hurts (ViT paper, DeiT). With ``layer_decay`` each group also carries
    ``lr_scale = layer_decay ** (depth + 1 - layer_id)``: early layers of a pre-trained model move less.
    With ``split_head`` the classifier head's parameters get groups of their own (``head: True``), which a
    head-only warm-up trains alone."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip
        layer = layer_id(name, depth) if layer_decay is not None else 0
        key = (layer, no_decay, split_head and is_head(name))
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale,
                           "head": key[2]}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, with PyTorch's fused kernel on CUDA and on the CPU (one pass over
    each tensor instead of a dozen small ops; BENCHMARKS.md measures it)."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, split_head=cfg.head_warmup_epochs > 0)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=device.type in ("cuda", "cpu"))


class WarmupCosine:
    """lr factor at optimizer step ``s`` of ``total``: 0 before ``start``, then linear from 1/warmup to 1 over
    ``warmup`` steps, then a cosine from 1 down to ``min_factor`` at ``total``. A plain picklable object, so it
    can live in a LambdaLR."""

    start = 0  # schedules saved before head-only warm-ups existed have no ``start``

    def __init__(self, warmup: int, total: int, min_factor: float, start: int = 0):
        self.warmup, self.total, self.min_factor, self.start = warmup, max(total, 1), min_factor, start

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        step -= self.start
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.start - self.warmup))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine, stepped after every optimizer step; each group keeps its layer-decay scale. With
    ``head_warmup_epochs`` the head's groups run that schedule from step 0 while every other group stays at
    lr 0 until the head warm-up ends, then warms up and decays over the rest of the run (a fresh head on a
    pre-trained backbone: the backbone never sees the gradients of a random head)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    head_only = round(cfg.head_warmup_epochs * steps_per_epoch)
    total = steps_per_epoch * epochs
    schedules = [WarmupCosine(warmup, total, cfg.min_lr / cfg.lr, 0 if g.get("head") else head_only)
                 for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)


def replan(scheduler: torch.optim.lr_scheduler.LambdaLR, total: int) -> None:
    """Give a restored warm-up + cosine schedule a new length of ``total`` steps: the remaining steps follow the
    schedule of a run planned for ``total`` steps from the start (the learning rate is set for the current
    step at once). A no-op when the length is unchanged."""
    schedules = scheduler.lr_lambdas
    if all(s.total == max(total, 1) for s in schedules):
        return
    for s in schedules:
        s.total = max(total, 1)
    step = scheduler.last_epoch
    for group, base, s in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, schedules):
        group["lr"] = base * s(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
