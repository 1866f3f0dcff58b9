"""A training run, from a :class:`RunConfig` to a run folder: the part of ``vitkit train`` after argument parsing.

Read :meth:`Trainer.run` top to bottom: one epoch is ``train_epoch`` (with a per-step callback that saves
mid-epoch checkpoints and honours Ctrl-C), then ``evaluate`` on the validation split, one row of
``metrics.csv``, and the ``best`` (chosen on validation accuracy) and ``last`` checkpoints. At the end the
``best`` checkpoint is scored once on the test split. :mod:`vitkit.runs` describes the run folder.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as weights_io
from ..configtools import save_config
from ..errors import CheckpointError
from ..fileio import atomic_write_text
from ..model import VisionTransformer, count_parameters
from ..runs import Run, claim_new_run
from . import distributed
from .adapt import adapt_model, adapt_settings, plain_state_dict, require_peft
from .checkpoint import (find_resumable, load_training_state, resolve_state_path, rng_state, save_training_state,
                         set_rng_state)
from ..configtools import from_dict
from .config import (LoopConfig, ModelSection, RunConfig, check_compiler, check_data_keys, check_run_length,
                     resolve_model_config)
from .console import Console
from ..data.loader import samples_per_rank
from .data import RunData, batch_too_large, build_data, open_run_splits, per_rank_batch, run_preprocess
from .finetune import model_from_init
from .memory import check_fits
from .resume import resume_config, resume_folder
from .ema import ModelEma
from ..evaluation import evaluate
from .loop import NonFiniteLossError, RunningMetrics, train_epoch
from .optim import build_optimizer, build_scheduler, replan
from .signals import StopRequest


class Trainer:
    """Builds everything a run needs, optionally restores it from a checkpoint, and runs it."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: str | None = None, log=print, changes=()):
        self.cfg, self.changes = cfg, list(changes)
        self.run_folder = Run(run_dir)
        self.run_dir = self.run_folder.path
        self.ckpt_dir = self.run_folder.checkpoints
        self.ctx = ctx = distributed.setup(cfg.device)
        self.device = ctx.device
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout masks differ between ranks, as they should

        # Data (a run that already has a split file keeps its files), then the model it implies; every check
        # that needs no allocation runs first (plan_run), so an impossible run allocates nothing.
        split_file = self.run_folder.split_path if self.run_folder.split_path.is_file() else None
        splits, data_keys, self.model_config = plan_run(cfg, ctx, split_file)  # model_config: None for init
        self.data: RunData = build_data(cfg.data, cfg.seed, ctx, model_img_size=cfg.model.img_size, splits=splits)
        self.model = self.build_model(data_keys).to(self.device)
        if cfg.model.init:  # the architecture is the weights': now it is known, check the rest fits
            check_fits(self.model_config, per_rank_batch(cfg.data.batch_size, ctx, "data.batch_size"), self.device,
                       ema=bool(cfg.train.ema_decay), grad_checkpointing=cfg.train.grad_checkpointing)
        self.model.set_grad_checkpointing(cfg.train.grad_checkpointing)
        self.frozen = adapt_model(self.model, cfg.train)  # train.freeze / train.lora: the modules kept in eval mode
        # The resolved config, for config.yaml (the caller's cfg is left as it was).
        data_cfg = cfg.data if not self.data.splits.is_folder else dataclasses.replace(
            cfg.data, channels=self.data.in_channels)
        self.cfg = dataclasses.replace(cfg, data=data_cfg, model=from_dict(ModelSection, {
            "name": cfg.model.name, "init": cfg.model.init, **self.model_config.to_dict()}, "model"))

        # Optimisation.
        o = cfg.optim
        self.optimizer = build_optimizer(self.model, o, self.device)
        self.steps_per_epoch = math.ceil(len(self.data.train_loader) / o.accum_steps)
        check_run_length(cfg, self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, o, self.steps_per_epoch, cfg.train.epochs)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=o.label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss()
        self.amp = cfg.train.amp and self.device.type == "cuda"
        self.ema = ModelEma(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None

        # Where the run stands: epoch (completed), batch (consumed in the current epoch), optimizer step.
        self.epoch, self.batch, self.step = 0, 0, 0
        self.best_accuracy, self.best_loss, self.best_epoch = -1.0, float("inf"), 0
        self.bad_epochs, self.stopped_early = 0, False
        self.wall_before = 0.0  # seconds spent in earlier sessions of a resumed run
        self.running = RunningMetrics(self.device)
        self.resumed_from = self.restore(resume) if resume is not None else None
        self.config_pending = False  # set by run(): a resumed run's config.yaml waits for its first checkpoint
        if self.stopped_early and (not cfg.train.patience or self.bad_epochs < cfg.train.patience):
            self.stopped_early = False  # a resume with more patience continues

        self.train_model = self.model
        if ctx.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:  # (a compiler is there: plan_run checked)
            self.train_model = torch.compile(self.train_model)
        self.stop = StopRequest(announce=ctx.is_main)
        self.tb = self.tensorboard() if ctx.is_main else None
        self.console = Console(self, log)

    # ---------------------------------------------------------------------------------------------------------
    # Setup helpers

    def build_model(self, data_keys: dict) -> VisionTransformer:
        """The run's model: new, or the ``model.init`` weights (whose architecture then is the run's) made to
        the data's channels, classes and image size (``data_keys``)."""
        if not self.cfg.model.init:
            return VisionTransformer(self.model_config)
        model = model_from_init(self.cfg.model.init, self.cfg.model.given(), **data_keys)
        self.model_config = model.config
        return model

    @property
    def eval_model(self) -> nn.Module:
        """The model that is evaluated and exported: the EMA of the weights when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def restore(self, resume: str) -> Path | None:
        """Load the training state to resume from: a state file when one is named, else the run's newest valid
        one (``last``, or ``previous`` when ``last`` is damaged); None when the run has none yet (``auto``)."""
        if resume == "auto" or Path(resume).is_dir():
            found = find_resumable(self.ckpt_dir)
            if found is None:
                if resume == "auto":
                    return None
                raise CheckpointError(f"cannot resume from {resume}: {self.ckpt_dir} holds no training state")
            path, state = found
        else:
            path = resolve_state_path(resume)
            state = load_training_state(path)
        if state.get("model_config") != self.model_config.to_dict():
            raise CheckpointError(f"checkpoint {path} was written by a run with another architecture or data set; "
                                  "resume with that run's config.yaml")
        if state.get("adapt", adapt_settings(LoopConfig())) != adapt_settings(self.cfg.train):
            raise CheckpointError(f"checkpoint {path} was written by a run with other train.freeze or train.lora "
                                  "settings; resume with that run's config.yaml")
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
        replan(self.scheduler, self.steps_per_epoch * self.cfg.train.epochs)  # the new length, after a change
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.best_accuracy, self.best_epoch = state["best_accuracy"], state.get("best_epoch", 0)
        self.best_loss = state.get("best_loss", float("inf"))
        self.bad_epochs, self.stopped_early = state.get("bad_epochs", 0), state.get("stopped_early", False)
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
        self.console.log(text)

    # ---------------------------------------------------------------------------------------------------------
    # Checkpoints and run-folder files

    def weights_metadata(self) -> dict:
        """What a weights file carries besides the tensors: the classes, the preprocessing, and the data and
        split rule it was trained and validated on (so ``vitkit eval`` can find its splits again)."""
        d, p = self.cfg.data, self.data.preprocess
        return {"classes": self.data.classes, "preprocess": p.to_dict(), "mean": list(p.mean), "std": list(p.std),
                "dataset": d.dataset, "data": {"dataset": d.dataset, "root": d.root, "val_fraction": d.val_fraction,
                                               "split_seed": d.split_seed, "digest": self.data.splits.digest()},
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
                "rng": rngs,
                "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "best_accuracy": self.best_accuracy, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
                "running": self.running.values() if self.batch else None,
                "wall_time": self.wall_time(),
                "model_config": self.model_config.to_dict(), "adapt": adapt_settings(self.cfg.train),
                "world_size": self.ctx.world_size,
            }, self.ckpt_dir)
            self.save_pending_config()  # the state it describes is saved
            self.save_weights(self.run_folder.last_weights)
        distributed.barrier()

    def save_weights(self, path) -> None:
        """The evaluated model as a plain ViT (LoRA adapters merged in), at ``path`` (the run's best or last)."""
        weights_io.save_weights(self.eval_model, path, self.weights_metadata(),
                                state_dict=plain_state_dict(self.eval_model))

    def save_pending_config(self) -> None:
        """Write a resumed run's config.yaml once what it describes has happened (see :meth:`run`)."""
        if self.config_pending and self.ctx.is_main:
            save_config(self.cfg.to_dict(), self.run_folder.config_path)
        self.config_pending = False

    def wall_time(self) -> float:
        return self.wall_before + time.time() - self.t_start

    def results(self, test: dict | None, completed: bool) -> dict:
        """results.json: the ``best`` checkpoint's validation and test numbers (test only once scored), then
        the last epoch's training numbers and the run's facts. Values come from metrics.csv, so a resumed run
        reports the same numbers as one that never stopped."""
        rows = self.run_folder.read_metrics()
        last = rows[-1] if rows else {}
        best = next((r for r in rows if int(r["epoch"]) == self.best_epoch), {}) if self.data.val else last
        number = lambda row, key: float(row[key]) if row.get(key) not in (None, "") else None  # noqa: E731
        score = lambda key: float(f"{test[key]:.6g}") if test and test[key] is not None else None  # noqa: E731
        d = self.data
        return {
            "model": self.run_folder.relative(self.run_folder.best_weights),
            "best_epoch": self.best_epoch or None,
            "chosen_on": "val" if d.val else "last epoch (no validation split)",
            "val_accuracy": number(best, "val_accuracy"), "val_loss": number(best, "val_loss"),
            "val_top5": number(best, "val_top5"),
            "test_accuracy": score("accuracy"), "test_loss": score("loss"), "test_top5": score("top5"),
            "train_loss": number(last, "train_loss"), "train_accuracy": number(last, "train_accuracy"),
            "images_per_s": number(last, "images_per_s"),
            "epochs": self.epoch, "steps": self.step, "wall_time": round(self.wall_time(), 3),
            "completed": completed, "stopped_early": self.stopped_early,
            "dataset": self.cfg.data.dataset, "split": d.splits.rule,
            "num_train": d.size("train"), "num_val": d.size("val"), "num_test": d.size("test"),
            "parameters": count_parameters(self.model), "device": str(self.device),
            "world_size": self.ctx.world_size, "ema": self.ema is not None,
        }

    # ---------------------------------------------------------------------------------------------------------
    # The loop

    def after_step(self, step: int, batch: int, running: RunningMetrics) -> bool:
        """Called after every optimizer step: progress, Ctrl-C, mid-epoch checkpoints. True stops the epoch."""
        self.console.step(step, batch, running)
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
                                     f"with its last good checkpoint intact ({self.run_folder.last_state}); "
                                     "lower optim.lr or set optim.grad_clip")

    def run(self) -> int:
        """Train to the configured number of epochs (or until validation stops improving for
        ``train.patience`` epochs); returns the exit code (0, or 130/143 when interrupted)."""
        cfg, ctx, data = self.cfg, self.ctx, self.data
        self.t_start = self.console.last_progress = time.time()
        self.first_step = self.step
        # A resumed run's config.yaml (a longer train.epochs, say) is rewritten only once a checkpoint of the
        # resumed run is saved: until then the folder's files still describe the run as it was.
        self.config_pending = self.resumed_from is not None and self.run_folder.config_path.is_file()
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.config_pending:
                save_config(cfg.to_dict(), self.run_folder.config_path)
            if data.splits.is_folder and not self.run_folder.split_path.is_file():
                atomic_write_text(self.run_folder.split_path, data.splits.split_file_text())
            self.run_folder.trim_metrics(self.epoch)
        self.console.announce()
        with self.stop:
            for epoch in range(self.epoch, cfg.train.epochs):
                if self.stopped_early:
                    break
                if not self.train_one_epoch(epoch):
                    self.log(f"stopped at step {self.step} (epoch {epoch + 1}, batch {self.batch}); "
                             f"resume with: vitkit train --resume {self.run_dir}")
                    if ctx.is_main:
                        self.run_folder.write_results(self.results(None, completed=False))
                    return self.stop.exit_code
        self.finish()
        return 0

    def train_one_epoch(self, epoch: int) -> bool:
        """One epoch, its validation, its metrics row and checkpoints; False when a signal stopped it."""
        cfg, data = self.cfg, self.data
        self.epoch_t0, self.epoch_start_batch = time.time(), self.batch
        self.console.open_bar(epoch)
        try:
            train = train_epoch(
                self.train_model, data.train_loader, self.criterion, self.optimizer, self.device, epoch,
                scheduler=self.scheduler, grad_clip=cfg.optim.grad_clip, accum_steps=cfg.optim.accum_steps,
                amp=self.amp, ema=self.ema, step=self.step, start_batch=self.batch, running=self.running,
                on_step=self.after_step, frozen=self.frozen)
        except NonFiniteLossError:
            self.check_finite(self.running)  # re-raised with the checkpoint named
            raise
        finally:
            self.console.close_bar()
        if self.stop.requested:
            return False
        seconds = time.time() - self.epoch_t0
        images = (len(data.train_loader) - self.epoch_start_batch) * cfg.data.batch_size
        val = self.evaluate(data.val) if data.val else None
        self.epoch, self.batch = epoch + 1, 0
        self.running = RunningMetrics(self.device)
        row = {"epoch": self.epoch, "step": self.step, "train_loss": train["loss"],
               "train_accuracy": train["accuracy"], "val_loss": val["loss"] if val else None,
               "val_accuracy": val["accuracy"] if val else None, "val_top5": val["top5"] if val else None,
               "lr": max(g["lr"] for g in self.optimizer.param_groups),
               "images_per_s": images / max(seconds, 1e-9), "seconds": seconds}
        # Better: a higher validation accuracy, or the same with a lower validation loss (small validation
        # splits tie often, and the loss separates the ties).
        improved = val is None or (val["accuracy"], -val["loss"]) > (self.best_accuracy, -self.best_loss)
        if improved:
            self.best_epoch, self.bad_epochs = self.epoch, 0
            if val:
                self.best_accuracy, self.best_loss = val["accuracy"], val["loss"]
            if self.ctx.is_main:
                self.save_weights(self.run_folder.best_weights)
                if val:
                    self.run_folder.write_predictions("val", data.val.sources, val["predictions"], data.classes)
        else:
            self.bad_epochs += 1
            self.stopped_early = bool(cfg.train.patience) and self.bad_epochs >= cfg.train.patience
        if self.ctx.is_main:
            self.run_folder.append_metrics(row)
            if self.tb is not None:
                for k, v in row.items():
                    if v is not None:
                        self.tb.add_scalar(k, v, self.epoch)
        self.console.epoch(row)
        if self.stopped_early:
            self.log(f"stopping early: validation accuracy has not improved for {self.bad_epochs} epochs "
                     f"(train.patience {cfg.train.patience}); the best was epoch {self.best_epoch}")
        self.save_last()
        return True

    def evaluate(self, eval_set, model: nn.Module | None = None) -> dict:
        return evaluate(model if model is not None else self.eval_model, eval_set.loader, self.eval_criterion,
                        self.device, amp=self.amp, num_classes=len(self.data.classes))

    def best_model(self) -> nn.Module:
        """The model in ``checkpoints/best``, as the file holds it (what eval and predict will load)."""
        model = VisionTransformer(self.model_config)
        weights_io.load_weights(model, self.run_folder.best_weights)
        return model.to(self.device).eval()

    # ---------------------------------------------------------------------------------------------------------
    # The end

    def finish(self) -> None:
        """Score ``best`` on the test split (once), write results.json, the predictions and the report."""
        data = self.data
        best = self.best_model() if data.test or self.cfg.report else None
        test = self.evaluate(data.test, best) if data.test else None
        if not self.ctx.is_main:
            return
        if test is not None:
            self.run_folder.write_predictions("test", data.test.sources, test["predictions"], data.classes)
        self.save_pending_config()  # a resume of a finished run that trained no step
        results = self.results(test, completed=True)
        before = self.run_folder.read_results()
        if self.step == self.first_step and before.get("completed") and before.get("wall_time") is not None:
            results["wall_time"] = before["wall_time"]  # a resume of a finished run adds no training time
        self.run_folder.write_results(results)
        report = self.write_report(best) if self.cfg.report else ""
        if self.tb is not None:
            self.tb.close()
        self.log(self.console.summary(results))
        self.log(f"run folder: {self.run_dir}  (config.yaml, metrics.csv, results.json, "
                 f"checkpoints/best.safetensors{report})")
        split = "" if data.val else " --split " + ("test" if data.test else "train")
        self.log(f"next: vitkit eval --checkpoint {self.run_folder.best_weights}{split}")

    def write_report(self, model: nn.Module) -> str:
        """The report of the best checkpoint on the split the run scored last (a failure there only warns)."""
        from .. import report as report_module

        split = "test" if self.data.test else ("val" if self.data.val else None)
        try:
            eval_set = getattr(self.data, split) if split else None
            predictions = self.run_folder.read_predictions(split, self.data.classes) if split else None
            report_module.write_report(self.run_dir, model, eval_set, predictions, device=self.device)
            return ", report.html"
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise  # the disk's fault, said as one sentence like any other writer's
            warnings.warn(f"the run report could not be written ({e}); the run folder is complete without it",
                          stacklevel=2)
            return ""
        except Exception as e:  # the run itself is complete and saved; the report is a bonus
            warnings.warn(f"the run report could not be written ({type(e).__name__}: {e}); "
                          "the run folder is complete without it", stacklevel=2)
            return ""

def plan_run(cfg: RunConfig, ctx, split_file=None):
    """Every check of a run that allocates nothing, in the order training makes them: a compiler for
    train.compile, the data's splits
    (scanned, not decoded), preprocessing and batches per process, the model section against the data, the
    run's length, and whether a model trained from scratch fits the device's memory. Returns (splits,
    the data's in_channels, num_classes and img_size, the ViTConfig or None for ``model.init`` weights).
    Training runs it first; ``vitkit train --print-config`` runs it alone, so it refuses what
    training refuses."""
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


def train(cfg: RunConfig, resume: str | None = None, run_dir: str | Path | None = None, log=print) -> int:
    """Run training for ``cfg``; returns the exit code. ``resume``: None, "auto" or a run folder or checkpoint.

    A new run claims ``out_dir/name`` (or the next free ``name-N``); a resumed run keeps its folder and the
    config it was trained with (see :func:`resume_config`). The run folder is locked while it trains."""
    ctx = distributed.setup(cfg.device)  # join the process group first, so rank 0 alone picks the run folder
    lock = None
    try:
        if run_dir is not None or resume is not None:
            run = Run(run_dir if run_dir is not None else resume_folder(cfg, resume))
            if ctx.is_main:
                lock = run.lock()
        elif ctx.is_main:
            run, lock = claim_new_run(cfg.out_dir, cfg.name)
        else:
            run = None
        folder = Path(distributed.gather_objects(str(run.path) if run is not None else None)[0])
        changes = []
        try:
            if resume is not None:
                cfg, changes = resume_config(cfg, Run(folder))
            trainer = Trainer(cfg, folder, resume, log, changes)  # every check runs here, before any file is written
        except BaseException:
            if lock is not None and resume is None and run_dir is None:
                lock.release()
                lock = None
                Run(folder).discard_if_unused()
            raise
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown()
