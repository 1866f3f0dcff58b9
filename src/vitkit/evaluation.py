"""Scoring a model on a data set: :func:`evaluate`, the one evaluation of vitkit (validation during training,
``vitkit eval``, the report), with every image's prediction kept, so a report or a CSV needs no second pass.

It keeps its rows on the device and reads them back once at the end, so a GPU never waits for the host inside
the pass.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from .devices import autocast


TOP_K = 5  # the "top5" of every result: the true class among the five most probable


def top_k_informative(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: with 5 classes or fewer every image is in its top 5."""
    return num_classes > TOP_K


@torch.no_grad()
def evaluate(model: nn.Module, dataloader, criterion: nn.Module, device, *, amp: bool = False,
             num_classes: int | None = None) -> dict:
    """Evaluate ``model`` on every sample of ``dataloader``: {"loss", "accuracy", "top5", "n", "predictions"}.
    "top5" is None for a model of 5 classes or fewer, where every image is in its top 5 (a 1.0 would say
    nothing, so no file or plot shows one).

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
    classes = 0  # the logits' width, for a caller that does not give num_classes
    for images, targets in dataloader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images).float()  # (B, classes)
        loss = per_sample(logits, targets)
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        probs = logits.softmax(dim=1)
        confidence, pred = probs.max(dim=1)
        classes = logits.shape[1]
        k = min(TOP_K, classes)
        rows["label"].append(labels)
        rows["pred"].append(pred)
        rows["confidence"].append(confidence)
        rows["loss"].append(loss.expand(len(labels)) if loss.ndim == 0 else loss)
        rows["top5"].append((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1))
    out = {k: torch.cat(v).cpu() if v else torch.empty(0) for k, v in rows.items()}  # one device sync
    if dist.is_available() and dist.is_initialized():
        out = _gather_shards(out, len(getattr(dataloader, "dataset", ())) or None)
    n = len(out["label"])
    informative = top_k_informative(num_classes or classes)
    result = {"loss": float(out["loss"].double().mean()) if n else 0.0,
              "accuracy": float((out["pred"] == out["label"]).double().mean()) if n else 0.0,
              "top5": (float(out["top5"].double().mean()) if n else 0.0) if informative else None, "n": n,
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
