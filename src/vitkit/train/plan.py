"""A run's plan: every check of a config that allocates nothing (:func:`plan_run`, which ``vitkit train
--print-config`` runs alone), and, once the run is built, the record of what it will do (:class:`RunPlan`,
what the console announces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..config import ViTConfig
from ..data.device_loader import samples_per_rank
from .adapt import require_peft
from .config import RunConfig, check_compiler, check_data_keys, check_run_length, resolve_model_config
from .data import batch_too_large, open_run_splits, per_rank_batch, run_preprocess
from .memory import check_fits


@dataclass(frozen=True)
class RunPlan:
    """What a run is about to do, fixed before its first step: everything the announcement and the other
    lines say beyond where the run stands."""

    cfg: RunConfig  # the resolved config (epochs, batch, optimizer settings, model.init)
    model: ViTConfig  # the architecture
    parameters: int
    sizes: dict  # images per split: {"train": n, "val": n, "test": n} (0 when a split is missing)
    eval_splits: tuple  # those of "val" and "test" the run has
    classes: int
    channels: int
    img_size: tuple  # (height, width) the model sees
    stats: tuple  # the run's normalisation: (mean, std)
    split_rule: str  # how the splits were made
    batches_per_epoch: int
    steps_per_epoch: int  # optimizer steps
    device: str
    world_size: int
    lr: float  # the largest learning rate of the optimizer now (after a resume re-planned the schedule)
    run_dir: Path
    best_weights: Path  # what ``vitkit eval`` is told to score
    preprocessing: str | None = None  # image folders: how a file becomes the model's input
    weights_stats: tuple | None = None  # an image folder fine-tuning foreign weights: their (mean, std)
    adapt: str | None = None  # train.freeze / train.lora: what trains (None when everything does)
    resumed_from: Path | None = None  # the training state file the run continues from
    changes: tuple = ()  # a resume's config changes: (key, saved value, new value)


def plan_run(cfg: RunConfig, ctx, split_file=None):
    """Every check of a run that allocates nothing, in the order training makes them: a compiler for
    train.compile, the data's splits (scanned, not decoded), preprocessing and batches per process, the model
    section against the data, the run's length, and whether a model trained from scratch fits the device's
    memory. Returns (splits, the data's in_channels, num_classes and img_size, the ViTConfig or None for
    ``model.init`` weights). Training runs it first; ``vitkit train --print-config`` runs it alone, so it
    refuses what training refuses."""
    if cfg.train.compile:
        check_compiler(ctx.device)
    if cfg.train.lora is not None:
        require_peft()
    splits = open_run_splits(cfg.data, ctx, split_file)
    preprocess = run_preprocess(cfg.data, splits, cfg.model.img_size)
    batch = per_rank_batch(cfg.data.batch_size, ctx, "data.batch_size")
    per_rank_batch(cfg.data.eval_batch_size, ctx, "data.eval_batch_size")
    h, w = preprocess.img_size
    data_keys = {"in_channels": preprocess.channels, "num_classes": len(splits.classes),
                 "img_size": h if h == w else (h, w)}
    if cfg.model.init:  # the weights decide the architecture, checked when they are loaded (model_from_init)
        check_data_keys(cfg.model, **data_keys)
        model_config = None
    else:
        model_config = resolve_model_config(cfg.model, **data_keys)
    batches = samples_per_rank(splits.size("train"), ctx.world_size, True) // batch  # the loaders' drop_last
    if not batches and not splits.is_folder:  # (a folder's loader then trains one partial batch)
        raise batch_too_large(cfg.data, splits)
    if batches:
        check_run_length(cfg, math.ceil(batches / cfg.optim.accum_steps))
    if not cfg.model.init:
        check_fits(model_config, batch, ctx.device, ema=bool(cfg.train.ema_decay),
                   grad_checkpointing=cfg.train.grad_checkpointing)
    return splits, data_keys, model_config
