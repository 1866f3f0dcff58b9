"""The training loop: ``train_epoch(model, dataloader, criterion, optimizer, device, epoch)``.

It keeps its running sums on the device and reads them back once at the end, so a GPU never waits for the
host inside an epoch. It also takes the optional pieces a full run needs (schedule, gradient accumulation,
clipping, autocast, EMA, a per-step callback for checkpoints and signals); called with its six positional
arguments it is a plain epoch of training. Evaluation is :func:`vitkit.evaluation.evaluate`.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import VitkitError
from ..devices import autocast


class NonFiniteLossError(VitkitError):
    """The training loss became NaN or infinite; ``step`` is the first optimizer step where it did."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


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

    def check_finite(self, epoch: int) -> None:
        """Raise :class:`NonFiniteLossError` if a loss of epoch ``epoch`` (0-based) was not finite: at the
        epoch's end, and before a checkpoint saves what such a step did."""
        bad = self.bad_step()
        if bad is not None:
            raise NonFiniteLossError(f"the training loss became non-finite at step {bad} (epoch {epoch + 1}); "
                                     "lower optim.lr or set optim.grad_clip", bad)

    def values(self) -> list[float]:
        return self.sums.tolist()

    def result(self) -> dict:
        """{"loss", "accuracy"} summed over all processes."""
        sums = self.sums[:3].clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        loss, correct, n = sums.tolist()
        return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1)}


def train_epoch(model: nn.Module, dataloader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                device, epoch: int, *, scheduler=None, grad_clip: float | None = None, accum_steps: int = 1,
                amp: bool = False, ema=None, step: int = 0, start_batch: int = 0,
                running: RunningMetrics | None = None,
                on_step: Callable[[int, int, RunningMetrics], bool] | None = None, frozen=()) -> dict:
    """Train ``model`` for one epoch; returns {"loss", "accuracy"} (mean over the epoch's samples).

    ``step`` is the global optimizer step count before this epoch; ``start_batch`` and ``running`` resume an
    epoch in the middle (the loader must skip the same number of batches). After each optimizer step
    ``on_step(step, batches_done, running)`` is called; returning True ends the epoch early. A loss that
    is NaN or infinite raises :class:`NonFiniteLossError` naming its step at the end of the epoch, or sooner
    when ``on_step`` calls ``running.check_finite(epoch)``. The modules in ``frozen`` (a frozen backbone's)
    stay in eval mode: no dropout or drop-path in what does not train.
    """
    device = torch.device(device)
    model.train()
    for module in frozen:
        module.eval()
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
    running.check_finite(epoch)
    return running.result()


