"""The training and evaluation loops: ``train_epoch`` and ``evaluate`` (seed 001's signatures).

Both keep their running sums on the device and read them back once at the end, so a GPU never waits for the
host inside an epoch. ``train_epoch`` also takes the optional pieces a full run needs (schedule, gradient
accumulation, clipping, autocast, EMA, a per-step callback for checkpoints and signals); called with seed
001's six arguments it is a plain epoch of training.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import VitkitError


class NonFiniteLossError(VitkitError):
    """The training loss became NaN or infinite."""


class RunningMetrics:
    """Sums over an epoch, kept on the device: loss * n, correct, n, and the first step whose loss was not
    finite (-1 while all were). Saved in mid-epoch checkpoints so a resumed epoch reports the same numbers."""

    def __init__(self, device, values: list[float] | None = None):
        self.sums = torch.tensor(values or [0.0, 0.0, 0.0, -1.0], dtype=torch.float64 if
                                 torch.device(device).type != "mps" else torch.float32, device=device)

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, step: int) -> None:
        n = logits.shape[0]
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets  # soft (mixup) targets: the argmax
        correct = (logits.argmax(dim=1) == labels).sum()
        bad = ~torch.isfinite(loss.detach()) & (self.sums[3] < 0)
        self.sums[3] = torch.where(bad, float(step), self.sums[3])
        loss = loss.detach().float()
        self.sums[:3] += torch.stack([loss * n, correct.float(), loss.new_tensor(float(n))]).to(self.sums.dtype)

    def bad_step(self) -> int | None:
        """The first step with a non-finite loss, or None (one device sync)."""
        step = int(self.sums[3].item())
        return None if step < 0 else step

    def values(self) -> list[float]:
        return self.sums.tolist()

    def result(self) -> dict:
        """{"loss", "accuracy"} summed over all processes."""
        sums = self.sums[:3].clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        loss, correct, n = sums.tolist()
        return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1)}


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU autocast is slower than float32 for these models)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_epoch(model: nn.Module, dataloader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                device, epoch: int, *, scheduler=None, grad_clip: float | None = None, accum_steps: int = 1,
                amp: bool = False, ema=None, step: int = 0, start_batch: int = 0,
                running: RunningMetrics | None = None,
                on_step: Callable[[int, int, RunningMetrics], bool] | None = None) -> dict:
    """Train ``model`` for one epoch; returns {"loss", "accuracy"} (mean over the epoch's samples).

    ``step`` is the global optimizer step count before this epoch; ``start_batch`` and ``running`` resume an
    epoch in the middle (the loader must skip the same number of batches). After each optimizer step
    ``on_step(step, batches_done, running)`` is called; returning True ends the epoch early. A loss that
    is NaN or infinite raises :class:`NonFiniteLossError` naming its step at the end of the epoch, or sooner
    when ``on_step`` checks ``running.bad_step()``.
    """
    device = torch.device(device)
    model.train()
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    if start_batch and hasattr(dataloader, "skip"):
        dataloader.skip(start_batch)
    running = running if running is not None else RunningMetrics(device)
    num_batches = len(dataloader)
    batch = start_batch
    for images, targets in dataloader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        # Micro-batches of one optimizer step: accum_steps of them, fewer for the epoch's last group.
        group_start = batch - batch % accum_steps
        group_size = min(accum_steps, num_batches - group_start)
        last_micro = batch + 1 == group_start + group_size
        # Under DistributedDataParallel, gradients are all-reduced only on the last micro-batch.
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, amp):
                logits = model(images)  # (B, classes)
                loss = criterion(logits.float(), targets)
            (loss / group_size).backward()
        running.add(loss, logits, targets, step + 1)
        batch += 1
        if not last_micro:
            continue
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, "no_sync") else model)
        step += 1
        if on_step is not None and on_step(step, batch, running):
            break
    bad = running.bad_step()
    if bad is not None:
        raise NonFiniteLossError(f"the training loss became non-finite at step {bad} (epoch {epoch + 1}); "
                                 "lower optim.lr or set optim.grad_clip")
    return running.result()


@torch.no_grad()
def evaluate(model: nn.Module, dataloader, criterion: nn.Module, device, *, amp: bool = False,
             num_classes: int | None = None) -> dict:
    """Evaluate ``model`` on every sample of ``dataloader``: {"loss", "accuracy", "top5", "n", "predictions"}.

    ``predictions`` holds one row per sample, in the loader's order: "label", "pred" (int64) and
    "confidence" (the softmax probability of "pred"), and "loss" (float32). Under torch.distributed the
    shards of all processes are gathered and the padding the loaders add to even out the shards is dropped,
    so every sample counts exactly once. With ``num_classes`` the result also has "confusion", a
    (num_classes, num_classes) int64 matrix: row = true class, column = predicted class.
    """
    device = torch.device(device)
    model.eval()
    per_sample = copy.copy(criterion)
    if hasattr(per_sample, "reduction"):
        per_sample.reduction = "none"
    rows: dict[str, list[torch.Tensor]] = {"label": [], "pred": [], "confidence": [], "loss": [], "top5": []}
    for images, targets in dataloader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images).float()  # (B, classes)
        loss = per_sample(logits, targets)
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        probs = logits.softmax(dim=1)
        confidence, pred = probs.max(dim=1)
        k = min(5, logits.shape[1])
        rows["label"].append(labels)
        rows["pred"].append(pred)
        rows["confidence"].append(confidence)
        rows["loss"].append(loss.expand(len(labels)) if loss.ndim == 0 else loss)
        rows["top5"].append((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1))
    out = {k: torch.cat(v).cpu() if v else torch.empty(0) for k, v in rows.items()}  # one device sync
    if dist.is_available() and dist.is_initialized():
        out = _gather_shards(out, len(getattr(dataloader, "dataset", ())) or None)
    n = len(out["label"])
    result = {"loss": float(out["loss"].double().mean()) if n else 0.0,
              "accuracy": float((out["pred"] == out["label"]).double().mean()) if n else 0.0,
              "top5": float(out["top5"].double().mean()) if n else 0.0, "n": n,
              "predictions": {k: out[k] for k in ("label", "pred", "confidence", "loss")}}
    if num_classes:
        flat = out["label"].long() * num_classes + out["pred"].long()
        result["confusion"] = torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)
    return result


def _gather_shards(rows: dict[str, torch.Tensor], total: int | None) -> dict[str, torch.Tensor]:
    """Re-interleave the round-robin shards of all ranks (rank r holds samples r, r + W, ...) and drop the
    padding at the end."""
    shards = [None] * dist.get_world_size()
    dist.all_gather_object(shards, rows)
    out = {}
    for key in rows:
        stacked = torch.stack([s[key] for s in shards], dim=1)  # (per rank, W): row i holds samples i*W .. i*W+W-1
        out[key] = stacked.reshape(-1)[:total] if total else stacked.reshape(-1)
    return out
