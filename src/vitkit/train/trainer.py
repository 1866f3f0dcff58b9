"""A training run, from a :class:`RunConfig` to a run folder: the part of ``vitkit train`` after argument parsing.

Read :meth:`Trainer.run` top to bottom: one epoch is ``train_epoch`` (with a per-step callback that saves
mid-epoch checkpoints and honours Ctrl-C), then ``evaluate``, one row of ``metrics.csv``, ``best`` and
``last`` checkpoints. The run folder::

    runs/<name>/config.yaml             the fully resolved config (re-run or resume from it)
                metrics.csv             one row per epoch
                results.json            final (and, during the run, latest) numbers
                checkpoints/last.safetensors, best.safetensors    weights + architecture + class names
                checkpoints/last.state.pt, previous.state.pt      everything needed to resume exactly
                report.html             the run report (vitkit.report), when enabled
                tensorboard/            event files, when tensorboard is installed
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as weights_io
from ..config import save_config
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_text
from ..model import VisionTransformer, count_parameters
from . import distributed
from .checkpoint import (find_resumable, load_training_state, resolve_state_path, rng_state, save_training_state,
                         set_rng_state)
from .config import RunConfig, resolve_model_config
from .data import RunData, build_data
from .ema import ModelEma
from .loop import NonFiniteLossError, RunningMetrics, evaluate, train_epoch
from .optim import build_optimizer, build_scheduler
from .signals import StopRequest

METRICS_COLUMNS = ["epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_top5",
                   "lr", "images_per_s", "seconds"]


def choose_run_dir(cfg: RunConfig, resume: str | None) -> Path:
    """``--resume PATH``: that run's folder. ``--resume auto``: ``out_dir/name``. A new run: ``out_dir/name``,
    or ``name-2``, ``name-3`` ... when that folder already holds a run (nothing is ever overwritten)."""
    base = Path(cfg.out_dir) / cfg.name
    if resume == "auto":
        return base
    if resume is not None:
        return resolve_state_path(resume).resolve().parent.parent
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{cfg.name}-{n}")
    return candidate


def check_compiler(device: torch.device) -> None:
    """torch.compile for a CPU builds C++ kernels: without a compiler it would fail deep inside the first
    step, so say so before anything runs."""
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "clang++", "c++")):
        raise ConfigError("train.compile=true on the CPU needs a C++ compiler (g++ or clang++ on the PATH, or "
                          "$CXX); install one or set train.compile=false")


class Trainer:
    """Builds everything a run needs, optionally restores it from a checkpoint, and runs it."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: str | None = None, log=print):
        self.cfg, self.run_dir, self.log_fn = cfg, Path(run_dir), log
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ctx = ctx = distributed.setup(cfg.device)
        self.device = ctx.device
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout masks differ between ranks, as they should

        # Data, then the model it implies.
        self.data: RunData = build_data(cfg.data, cfg.seed, ctx)
        self.model_config = resolve_model_config(cfg.model, in_channels=self.data.in_channels,
                                                 num_classes=len(self.data.classes), img_size=self.data.img_size)
        self.model = self.build_model().to(self.device)
        self.cfg.model = {**{k: v for k, v in cfg.model.items() if k in ("name", "init")},
                          **self.model_config.to_dict()}  # resolved, for config.yaml

        # Optimisation.
        o = cfg.optim
        self.optimizer = build_optimizer(self.model, o, self.device)
        self.steps_per_epoch = math.ceil(len(self.data.train_loader) / o.accum_steps)
        self.scheduler = build_scheduler(self.optimizer, o, self.steps_per_epoch, cfg.train.epochs)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=o.label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss()
        self.amp = cfg.train.amp and self.device.type == "cuda"
        self.ema = ModelEma(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None

        # Where the run stands: epoch (completed), batch (consumed in the current epoch), optimizer step.
        self.epoch, self.batch, self.step = 0, 0, 0
        self.best_accuracy, self.best_epoch = -1.0, 0
        self.wall_before = 0.0  # seconds spent in earlier sessions of a resumed run
        self.running = RunningMetrics(self.device)
        self.resumed_from = self.restore(resume) if resume is not None else None

        self.train_model = self.model
        if ctx.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:
            check_compiler(self.device)
            self.train_model = torch.compile(self.train_model)
        self.stop = StopRequest(announce=ctx.is_main)
        self.tb = self.tensorboard() if ctx.is_main else None
        self.bar = None

    # ---------------------------------------------------------------------------------------------------------
    # Setup helpers

    def build_model(self) -> VisionTransformer:
        init = self.cfg.model.get("init")
        if not init:
            return VisionTransformer(self.model_config)
        # Fine-tuning: the architecture is the checkpoint's; the data set decides the head and image size.
        overrides = {k: v for k, v in self.cfg.model.items()
                     if k not in ("name", "init", "num_classes", "img_size", "in_channels")}
        model = VisionTransformer.from_pretrained(init, num_classes=self.model_config.num_classes,
                                                  img_size=self.model_config.img_size, **overrides)
        self.model_config = model.config
        return model

    @property
    def eval_model(self) -> nn.Module:
        """The model that is evaluated and exported: the EMA of the weights when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def restore(self, resume: str) -> Path | None:
        """Load the training state to resume from (``auto``: the run's newest valid one, if any)."""
        if resume == "auto":
            found = find_resumable(self.ckpt_dir)
            if found is None:
                return None
            path, state = found
        else:
            path = resolve_state_path(resume)
            state = load_training_state(path)
        if state.get("model_config") != self.model_config.to_dict():
            raise CheckpointError(f"checkpoint {path} was written by a run with another architecture or data set; "
                                  "resume with that run's config.yaml")
        weights_io.check_state_dict(self.model, state["model"], str(path))
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in {path} does not fit this run's optimizer ({e}); "
                                  "resume with that run's config.yaml") from None
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.best_accuracy, self.best_epoch = state["best_accuracy"], state.get("best_epoch", 0)
        self.wall_before = state.get("wall_time", 0.0)
        if state.get("running") is not None and self.batch:
            self.running = RunningMetrics(self.device, state["running"])
        rngs = state["rng"]
        set_rng_state(rngs[self.ctx.rank] if self.ctx.rank < len(rngs) else rngs[0])
        return path

    def tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, text: str) -> None:
        if self.ctx.is_main:
            if self.bar is not None:
                self.bar.write(text)
            else:
                self.log_fn(text)

    # ---------------------------------------------------------------------------------------------------------
    # Checkpoints and run-folder files

    def weights_metadata(self) -> dict:
        d = self.data
        return {"classes": d.classes, "mean": list(d.mean), "std": list(d.std), "dataset": self.cfg.data.dataset,
                "epoch": self.epoch, "step": self.step}

    def save_last(self) -> None:
        """``last.state.pt`` (previous one kept) and ``last.safetensors``; rank 0 writes, all ranks wait."""
        rngs = distributed.gather_objects(rng_state())
        if self.ctx.is_main:
            save_training_state({
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": None,  # bf16 autocast needs no loss scaling; kept for the file layout
                "rng": rngs,
                "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "best_accuracy": self.best_accuracy, "best_epoch": self.best_epoch,
                "running": self.running.values() if self.batch else None,
                "wall_time": self.wall_time(),
                "model_config": self.model_config.to_dict(),
                "world_size": self.ctx.world_size,
            }, self.ckpt_dir)
            weights_io.save_weights(self.eval_model, self.ckpt_dir / "last", self.weights_metadata())
        distributed.barrier()

    def wall_time(self) -> float:
        return self.wall_before + time.time() - self.t_start

    def append_metrics(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, METRICS_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def trim_metrics(self) -> None:
        """On resume, drop rows of epochs after the checkpoint (written after it, before the kill)."""
        path = self.run_dir / "metrics.csv"
        if not path.exists():
            return
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= self.epoch]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, METRICS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def write_results(self, last: dict, completed: bool) -> dict:
        results = {
            "train_loss": last.get("train_loss"), "train_accuracy": last.get("train_accuracy"),
            "test_loss": last.get("test_loss"), "test_accuracy": last.get("test_accuracy"),
            "test_top5": last.get("test_top5"),
            "best_accuracy": self.best_accuracy, "best_epoch": self.best_epoch,
            "epochs": self.epoch, "steps": self.step, "wall_time": round(self.wall_time(), 3),
            "images_per_s": last.get("images_per_s"), "completed": completed,
            "dataset": self.cfg.data.dataset, "num_train": self.data.num_train, "num_test": self.data.num_test,
            "parameters": count_parameters(self.model), "device": str(self.device),
            "world_size": self.ctx.world_size, "ema": self.ema is not None,
        }
        atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        return results

    # ---------------------------------------------------------------------------------------------------------
    # The loop

    def after_step(self, step: int, batch: int, running: RunningMetrics) -> bool:
        """Called after every optimizer step: progress, Ctrl-C, mid-epoch checkpoints. True stops the epoch."""
        if self.bar is not None:
            self.bar.update(batch - self.batch)
            if step % 10 == 0:
                r = running.result()
                seen = (batch - self.epoch_start_batch) * self.cfg.data.batch_size
                self.bar.set_postfix(loss=f"{r['loss']:.4f}", acc=f"{r['accuracy']:.3f}",
                                     img_s=f"{seen / max(time.time() - self.epoch_t0, 1e-9):.0f}")
        self.step, self.batch = step, batch
        stop = distributed.any_rank(self.stop.requested, self.device)
        every = self.cfg.train.checkpoint_every_steps
        if stop or (every and step % every == 0):
            self.check_finite(running)
            self.save_last()
        return stop

    def check_finite(self, running: RunningMetrics) -> None:
        bad = running.bad_step()
        if bad is not None:
            raise NonFiniteLossError(f"the training loss became non-finite at step {bad}, so the run stopped "
                                     f"with its last good checkpoint intact ({self.ckpt_dir / 'last.state.pt'}); "
                                     "lower optim.lr or set optim.grad_clip")

    def run(self) -> int:
        """Train to the configured number of epochs; returns the exit code (0, or 130/143 when interrupted)."""
        cfg, ctx, data = self.cfg, self.ctx, self.data
        self.t_start = time.time()
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg.to_dict(), self.run_dir / "config.yaml")
            self.trim_metrics()
        self.announce()
        last: dict = {}
        with self.stop:
            for epoch in range(self.epoch, cfg.train.epochs):
                self.epoch_t0, self.epoch_start_batch = time.time(), self.batch
                self.bar = self.progress_bar(epoch)
                try:
                    train = train_epoch(
                        self.train_model, data.train_loader, self.criterion, self.optimizer, self.device, epoch,
                        scheduler=self.scheduler, grad_clip=cfg.optim.grad_clip, accum_steps=cfg.optim.accum_steps,
                        amp=self.amp, ema=self.ema, step=self.step, start_batch=self.batch, running=self.running,
                        on_step=self.after_step)
                except NonFiniteLossError:
                    self.check_finite(self.running)  # re-raised with the checkpoint named
                    raise
                finally:
                    if self.bar is not None:
                        self.bar.close()
                        self.bar = None
                if self.stop.requested:
                    self.log(f"stopped at step {self.step} (epoch {epoch + 1}, batch {self.batch}); "
                             f"resume with: vitkit train --resume {self.run_dir}")
                    if ctx.is_main:
                        self.write_results(last, completed=False)
                    return self.stop.exit_code
                seconds = time.time() - self.epoch_t0
                images = (len(data.train_loader) - self.epoch_start_batch) * cfg.data.batch_size
                test = evaluate(self.eval_model, data.test_loader, self.eval_criterion, self.device, amp=self.amp)
                self.epoch, self.batch = epoch + 1, 0
                self.running = RunningMetrics(self.device)
                last = {"epoch": self.epoch, "step": self.step, "train_loss": train["loss"],
                        "train_accuracy": train["accuracy"], "test_loss": test["loss"],
                        "test_accuracy": test["accuracy"], "test_top5": test["top5"],
                        "lr": max(g["lr"] for g in self.optimizer.param_groups),
                        "images_per_s": images / max(seconds, 1e-9), "seconds": seconds}
                if test["accuracy"] > self.best_accuracy:
                    self.best_accuracy, self.best_epoch = test["accuracy"], self.epoch
                    if ctx.is_main:
                        weights_io.save_weights(self.eval_model, self.ckpt_dir / "best", self.weights_metadata())
                if ctx.is_main:
                    self.append_metrics(last)
                    self.write_results(last, completed=False)
                    if self.tb is not None:
                        for k, v in last.items():
                            self.tb.add_scalar(k, v, self.epoch)
                self.log_epoch(last)
                self.save_last()
        if ctx.is_main:
            results = self.write_results(last or self.final_metrics(), completed=True)
            self.finish(results)
        return 0

    def final_metrics(self) -> dict:
        """Numbers for results.json when a resumed run had nothing left to train."""
        test = evaluate(self.eval_model, self.data.test_loader, self.eval_criterion, self.device, amp=self.amp)
        return {"test_loss": test["loss"], "test_accuracy": test["accuracy"], "test_top5": test["top5"]}

    # ---------------------------------------------------------------------------------------------------------
    # What the person sees

    def progress_bar(self, epoch: int):
        if not (self.ctx.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm
        return tqdm(total=len(self.data.train_loader), initial=self.batch, desc=f"epoch {epoch + 1}/"
                    f"{self.cfg.train.epochs}", leave=False, dynamic_ncols=True)

    def announce(self) -> None:
        cfg, d, m = self.cfg, self.data, self.model_config
        grid = "x".join(map(str, m.grid_size))
        size = "x".join(map(str, (m.img_size, m.img_size) if isinstance(m.img_size, int) else m.img_size))
        where = f"{self.device}" + (f", {self.ctx.world_size} processes" if self.ctx.distributed else "")
        self.log(f"data:  {cfg.data.dataset}: {d.num_train} train / {d.num_test} test images, "
                 f"{len(d.classes)} classes, {d.in_channels}x{size} pixels")
        self.log(f"model: ViT {count_parameters(self.model) / 1e6:.2f}M parameters (dim {m.embed_dim}, depth "
                 f"{m.depth}, heads {m.num_heads}, patch {m.patch_size}, {grid} patches)"
                 + (f", initialised from {cfg.model['init']}" if cfg.model.get("init") else ""))
        self.log(f"train: {cfg.train.epochs} epochs x {self.steps_per_epoch} steps, batch {cfg.data.batch_size}, "
                 f"AdamW lr {cfg.optim.lr:g}, on {where}")
        if self.resumed_from is not None:
            self.log(f"resumed from {self.resumed_from} at epoch {self.epoch + 1}, batch {self.batch} "
                     f"(step {self.step})")
        self.log(f"run folder: {self.run_dir}")

    def log_epoch(self, r: dict) -> None:
        self.log(f"epoch {r['epoch']:>3}/{self.cfg.train.epochs}  train loss {r['train_loss']:.4f} "
                 f"acc {r['train_accuracy']:.4f} | test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.4f} | "
                 f"lr {r['lr']:.2e} | {r['images_per_s']:.0f} img/s | {r['seconds']:.1f}s")

    def finish(self, results: dict) -> None:
        """Write the report (a failure there only warns), then say where everything is."""
        report = ""
        if self.cfg.report:
            try:
                from .. import report as report_module
            except ImportError:
                report_module = None
            if report_module is not None:
                try:
                    report_module.write_report(self.run_dir, self.eval_model, self.data.test_dataset,
                                               device=self.device)
                    report = ", report.html"
                except Exception as e:  # the run itself is complete and saved; the report is a bonus
                    warnings.warn(f"the run report could not be written ({type(e).__name__}: {e}); "
                                  "the run folder is complete without it", stacklevel=2)
        if self.tb is not None:
            self.tb.close()
        self.log(f"done in {results['wall_time']:.1f}s: test accuracy {results['test_accuracy']:.4f} "
                 f"(best {self.best_accuracy:.4f} at epoch {self.best_epoch})")
        self.log(f"run folder: {self.run_dir}  (config.yaml, metrics.csv, results.json, "
                 f"checkpoints/best.safetensors{report})")
        self.log(f"next: vitkit eval --checkpoint {self.ckpt_dir / 'best'}")


def train(cfg: RunConfig, resume: str | None = None, run_dir: str | Path | None = None, log=print) -> int:
    """Run training for ``cfg``; returns the exit code. ``resume``: None, "auto" or a checkpoint path."""
    distributed.setup(cfg.device)  # join the process group first, so rank 0 alone picks the run folder
    try:
        folder = Path(run_dir) if run_dir is not None else choose_run_dir(cfg, resume)
        folder = Path(distributed.gather_objects(str(folder))[0])
        return Trainer(cfg, folder, resume, log).run()
    finally:
        distributed.teardown()
