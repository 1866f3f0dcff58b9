"""A training run, from a :class:`RunConfig` to a run folder: the part of ``vitkit train`` after argument parsing.

Read :meth:`Trainer.run` top to bottom: one epoch is ``train_epoch`` (with a per-step callback that saves
mid-epoch checkpoints and honours Ctrl-C), then ``evaluate`` on the validation split, one row of
``metrics.csv``, and the ``best`` (chosen on validation accuracy) and ``last`` checkpoints. At the end the
``best`` checkpoint is scored once on the test split. Where the run stands is one
:class:`~vitkit.train.state.TrainState`; what a person sees is :class:`~vitkit.train.console.Console`'s, told
each event; :mod:`vitkit.runs` describes the run folder.
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
from ..typed_config import from_dict, save_config
from ..errors import CheckpointError
from ..evaluation import evaluate
from ..fileio import atomic_write_text
from ..model import VisionTransformer, count_parameters
from ..runs import Run, claim_new_run
from . import distributed
from .adapt import adapt_model, adapt_settings, describe, plain_state_dict
from .checkpoint import rng_state, save_training_state, set_rng_state
from .config import LoopConfig, ModelSection, RunConfig, check_run_length
from .console import Console
from .data import RunData, build_data, per_rank_batch
from .ema import ModelEma
from .finetune import model_from_init
from .loop import NonFiniteLossError, train_epoch
from .memory import check_fits
from .optim import build_optimizer, build_scheduler, replan
from .plan import RunPlan, plan_run
from .resume import load_resume_state, resolve_resume, resume_folder
from .sharding import full_model_state, full_optimizer_state, load_full_state, shard
from .signals import StopRequest
from ..data.hf import HF_KEYS
from .state import TrainState



class Trainer:
    """Builds everything a run needs, optionally restores it from a checkpoint, and runs it."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: str | None = None, log=print, changes=()):
        self.run_folder = Run(run_dir)
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
        splits, data_keys, model_config = plan_run(cfg, ctx, split_file)  # model_config: None for init
        self.data: RunData = build_data(cfg.data, cfg.seed, ctx, model_img_size=cfg.model.img_size, splits=splits)
        self.model = build_model(cfg, model_config, data_keys).to(self.device)
        self.model_config = model_config = self.model.config
        if cfg.model.init:  # the architecture is the weights': now it is known, check the rest fits
            check_fits(model_config, per_rank_batch(cfg.data.batch_size, ctx, "data.batch_size"), self.device,
                       ema=bool(cfg.train.ema_decay), grad_checkpointing=cfg.train.grad_checkpointing)
        self.model.set_grad_checkpointing(cfg.train.grad_checkpointing)
        self.frozen = adapt_model(self.model, cfg.train)  # train.freeze / train.lora: the modules kept in eval mode
        self.sharded = cfg.train.strategy == "fsdp" and ctx.distributed  # one process: nothing to shard
        if self.sharded:  # before the optimizer, whose parameters are then the shards
            shard(self.model, self.device)
        # The resolved config, for config.yaml (the caller's cfg is left as it was).
        data_cfg = cfg.data if not self.data.splits.is_folder else dataclasses.replace(
            cfg.data, channels=self.data.in_channels)
        self.cfg = dataclasses.replace(cfg, data=data_cfg, model=from_dict(ModelSection, {
            "name": cfg.model.name, "init": cfg.model.init, **model_config.to_dict()}, "model"))

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

        # Where the run stands (restored by a resume), and this session's part of it.
        self.state = TrainState()
        self.resumed_from = self.restore(resume) if resume is not None else None
        if self.state.stopped_early and (not cfg.train.patience or self.state.bad_epochs < cfg.train.patience):
            self.state.stopped_early = False  # a resume with more patience continues
        self.first_step = self.state.step
        self.clock = time.time()  # (re)started by run(): the time since is added to state.wall_time
        self.config_pending = False  # set by run(): a resumed run's config.yaml waits for its first checkpoint

        self.train_model = self.model
        if ctx.distributed and not self.sharded:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:  # (a compiler is there: plan_run checked)
            self.train_model = torch.compile(self.train_model)
        self.stop = StopRequest(announce=ctx.is_main)
        self.tb = self.tensorboard() if ctx.is_main else None
        self.plan = self.run_plan(changes)
        self.console = Console(self.plan, log, speaks=ctx.is_main)

    # ---------------------------------------------------------------------------------------------------------
    # Setup helpers

    @property
    def eval_model(self) -> nn.Module:
        """The model that is evaluated and exported: the EMA of the weights when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def restore(self, resume: str) -> Path | None:
        """Load the training state a resume continues from (:func:`~vitkit.train.resume.load_resume_state`)
        into the model, EMA, optimizer, scheduler, RNG and :attr:`state`; returns its file, or None when an
        ``auto`` run has none yet."""
        found = load_resume_state(resume, self.run_folder.checkpoints)
        if found is None:
            return None
        path, saved = found
        if saved.get("model_config") != self.model_config.to_dict():
            raise CheckpointError(f"checkpoint {path} was written by a run with another architecture or data set; "
                                  "resume with that run's config.yaml")
        if saved.get("adapt", adapt_settings(LoopConfig())) != adapt_settings(self.cfg.train):
            raise CheckpointError(f"checkpoint {path} was written by a run with other train.freeze or train.lora "
                                  "settings; resume with that run's config.yaml")
        if saved.get("strategy", "ddp") != ("fsdp" if self.sharded else "ddp"):
            raise CheckpointError(f"checkpoint {path} was written by a run with another train.strategy or number "
                                  "of processes; resume it as it was trained")
        weights_io.check_state_dict(self.model, saved["model"], str(path))
        if not self.sharded:
            self.model.load_state_dict(saved["model"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"] if saved.get("ema") is not None else saved["model"])
        try:
            if self.sharded:
                load_full_state(self.model, self.optimizer, saved["model"], saved["optimizer"])
            else:
                self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in {path} does not fit this run's optimizer ({e}); "
                                  "resume with that run's config.yaml") from None
        replan(self.scheduler, self.steps_per_epoch * self.cfg.train.epochs)  # the new length, after a change
        self.state = TrainState.from_dict(saved, self.device)
        rngs = saved["rng"]
        set_rng_state(rngs[self.ctx.rank] if self.ctx.rank < len(rngs) else rngs[0])
        if saved.get("streams") is not None and hasattr(self.data.train_loader, "load_stream_state"):
            if len(saved["streams"]) != self.ctx.world_size:
                raise CheckpointError(f"checkpoint {path} was written by {len(saved['streams'])} process(es) "
                                      "reading a streamed dataset; resume it on as many")
            self.data.train_loader.load_stream_state(saved["streams"][self.ctx.rank])
        return path

    def tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run_folder.path / "tensorboard"))

    def run_plan(self, changes) -> RunPlan:
        """What the console announces and reports, fixed now that the run is built."""
        cfg, d = self.cfg, self.data
        theirs = self.model.pretrained_preprocess if d.splits.is_folder else None
        adapting = cfg.train.freeze != "none" or cfg.train.lora is not None
        return RunPlan(
            cfg=cfg, model=self.model_config, parameters=count_parameters(self.model),
            sizes={s: d.size(s) for s in ("train", "val", "test")},
            eval_splits=tuple(s for s in ("val", "test") if getattr(d, s)), classes=len(d.classes),
            channels=d.in_channels, img_size=d.preprocess.img_size, stats=(d.preprocess.mean, d.preprocess.std),
            split_rule=d.splits.rule, batches_per_epoch=len(d.train_loader), steps_per_epoch=self.steps_per_epoch,
            device=str(self.device), world_size=self.ctx.world_size,
            lr=max(g["lr"] for g in self.optimizer.param_groups),
            run_dir=self.run_folder.path, best_weights=self.run_folder.best_weights,
            preprocessing=d.preprocess.describe() if d.splits.is_folder else None,
            weights_stats=(tuple(theirs["mean"]), tuple(theirs["std"])) if theirs else None,
            adapt=describe(self.model, cfg.train) if adapting else None,
            resumed_from=self.resumed_from, changes=tuple(changes))

    # ---------------------------------------------------------------------------------------------------------
    # Checkpoints and run-folder files

    def weights_metadata(self) -> dict:
        """What a weights file carries besides the tensors: the classes, the preprocessing, and the data and
        split rule it was trained and validated on (so ``vitkit eval`` can find its splits again)."""
        d, p = self.cfg.data, self.data.preprocess
        return {"classes": self.data.classes, "preprocess": p.to_dict(), "mean": list(p.mean), "std": list(p.std),
                "dataset": d.dataset, "data": {"dataset": d.dataset, "root": d.root, "val_fraction": d.val_fraction,
                                               "split_seed": d.split_seed, "digest": self.data.splits.digest(),
                                               **{k: getattr(d, k) for k in HF_KEYS if getattr(d, k)}},
                "epoch": self.state.epoch, "step": self.state.step}

    def save_last(self) -> None:
        """``last.state.pt`` (previous one kept) and ``last.safetensors``; rank 0 writes, all ranks wait."""
        rngs = distributed.gather_objects(rng_state())
        stream = getattr(self.data.train_loader, "stream_state", None)  # a streamed dataset's position, per rank
        streams = distributed.gather_objects(stream()) if stream is not None else None
        self.count_time()
        if self.sharded:  # the full states, gathered to rank 0 (collectives: every rank takes part)
            model, optimizer = full_model_state(self.model), full_optimizer_state(self.model, self.optimizer)
        else:
            model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        exported = model if self.sharded else None  # (no EMA with fsdp: the model is what is exported)
        if self.ctx.is_main:
            save_training_state({
                "model": model,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "rng": rngs, **({"streams": streams} if streams is not None else {}),
                **self.state.to_dict(),
                "model_config": self.model_config.to_dict(), "adapt": adapt_settings(self.cfg.train),
                "world_size": self.ctx.world_size, **({"strategy": "fsdp"} if self.sharded else {}),
            }, self.run_folder.checkpoints)
            self.save_pending_config()  # the state it describes is saved
            self.save_weights(self.run_folder.last_weights, exported)
        distributed.barrier()

    def exported_state(self) -> dict | None:
        """The weights :meth:`save_weights` writes, on every rank: the full gathered state of a sharded model
        (a collective: every rank calls this; rank 0 gets the tensors), else None (taken at the save)."""
        return full_model_state(self.eval_model) if self.sharded else None

    def save_weights(self, path, state: dict | None = None) -> None:
        """The evaluated model as a plain ViT (LoRA adapters merged in), at ``path`` (the run's best or last);
        ``state``: :meth:`exported_state`'s, for a sharded model."""
        weights_io.save_weights(self.eval_model, path, self.weights_metadata(),
                                state_dict=state if state is not None else plain_state_dict(self.eval_model))

    def save_pending_config(self) -> None:
        """Write a resumed run's config.yaml once what it describes has happened (see :meth:`run`)."""
        if self.config_pending and self.ctx.is_main:
            save_config(self.cfg.to_dict(), self.run_folder.config_path)
        self.config_pending = False

    def count_time(self) -> None:
        """Add the seconds since the last count to ``state.wall_time`` (the run's, over all its sessions)."""
        now = time.time()
        self.state.wall_time += now - self.clock
        self.clock = now

    def results(self, test: dict | None, completed: bool) -> dict:
        """results.json (see :meth:`vitkit.runs.Run.results_from`), ``test`` the best checkpoint's scores."""
        self.count_time()
        p = self.plan
        facts = {"dataset": p.cfg.data.dataset, "split": p.split_rule, "num_train": p.sizes["train"],
                 "num_val": p.sizes["val"], "num_test": p.sizes["test"], "parameters": p.parameters,
                 "device": p.device, "world_size": p.world_size, "ema": self.ema is not None}
        return self.run_folder.results_from(self.state, test, completed=completed, validated="val" in p.eval_splits,
                                            facts=facts)

    # ---------------------------------------------------------------------------------------------------------
    # The loop

    def after_step(self, step: int, batch: int, running) -> bool:
        """Called after every optimizer step: progress, Ctrl-C, mid-epoch checkpoints. True stops the epoch."""
        s = self.state
        s.step, s.batch, s.running = step, batch, running
        self.console.progress(s)
        stop = distributed.any_rank(self.stop.requested, self.device)
        every = self.cfg.train.checkpoint_every_steps
        if stop or (every and step % every == 0):
            running.check_finite(s.epoch)  # never save what a non-finite step did
            self.save_last()
        return stop

    def run(self) -> int:
        """Train to the configured number of epochs (or until validation stops improving for
        ``train.patience`` epochs); returns the exit code (0, or 130/143 when interrupted)."""
        cfg, ctx, data, run = self.cfg, self.ctx, self.data, self.run_folder
        self.clock = time.time()
        # A resumed run's config.yaml (a longer train.epochs, say) is rewritten only once a checkpoint of the
        # resumed run is saved: until then the folder's files still describe the run as it was.
        self.config_pending = self.resumed_from is not None and run.config_path.is_file()
        if ctx.is_main:
            run.path.mkdir(parents=True, exist_ok=True)
            if not self.config_pending:
                save_config(cfg.to_dict(), run.config_path)
            if data.splits.is_folder and not run.split_path.is_file():
                atomic_write_text(run.split_path, data.splits.split_file_text())
            run.trim_metrics(self.state.epoch)
        self.console.announce(self.state)
        with self.stop:
            while self.state.epoch < cfg.train.epochs and not self.state.stopped_early:
                if not self.train_one_epoch():
                    self.console.stopped(self.state)
                    if ctx.is_main:
                        run.write_results(self.results(None, completed=False))
                    return self.stop.exit_code
        self.finish()
        return 0

    def train_one_epoch(self) -> bool:
        """The epoch ``state.epoch`` (or its rest), its validation, its metrics row and checkpoints; False
        when a signal stopped it."""
        cfg, data, s = self.cfg, self.data, self.state
        started, first_batch = time.time(), s.batch
        self.console.begin_epoch(s)
        try:
            train = train_epoch(
                self.train_model, data.train_loader, self.criterion, self.optimizer, self.device, s.epoch,
                scheduler=self.scheduler, grad_clip=cfg.optim.grad_clip, accum_steps=cfg.optim.accum_steps,
                amp=self.amp, ema=self.ema, step=s.step, start_batch=s.batch, running=s.running,
                on_step=self.after_step, frozen=self.frozen)
        except NonFiniteLossError as e:  # the step it names was never saved
            raise NonFiniteLossError(f"the training loss became non-finite at step {e.step}, so the run stopped "
                                     "with its last good checkpoint intact "
                                     f"({self.run_folder.last_state}); lower optim.lr or set "
                                     "optim.grad_clip", e.step) from None
        finally:
            self.console.end_epoch()
        if self.stop.requested:
            return False
        seconds = time.time() - started
        images = (len(data.train_loader) - first_batch) * cfg.data.batch_size
        val = self.evaluate(data.val) if data.val else None
        s.epoch, s.batch, s.running = s.epoch + 1, 0, None
        row = {"epoch": s.epoch, "step": s.step, "train_loss": train["loss"],
               "train_accuracy": train["accuracy"], "val_loss": val["loss"] if val else None,
               "val_accuracy": val["accuracy"] if val else None, "val_top5": val["top5"] if val else None,
               "lr": max(g["lr"] for g in self.optimizer.param_groups),
               "images_per_s": images / max(seconds, 1e-9), "seconds": seconds}
        self.judge(val)
        if self.ctx.is_main:
            self.run_folder.append_metrics(row)
            if self.tb is not None:
                for k, v in row.items():
                    if v is not None:
                        self.tb.add_scalar(k, v, s.epoch)
        self.console.epoch(row)
        if s.stopped_early:
            self.console.stopping_early(s)
        self.save_last()
        return True

    def judge(self, val: dict | None) -> None:
        """The epoch just ended against the best so far: a better one is saved as ``best`` (with its
        validation predictions); ``train.patience`` worse ones in a row stop the run."""
        s = self.state
        # Better: a higher validation accuracy, or the same with a lower validation loss (small validation
        # splits tie often, and the loss separates the ties).
        if val is None or (val["accuracy"], -val["loss"]) > (s.best_accuracy, -s.best_loss):
            s.best_epoch, s.bad_epochs = s.epoch, 0
            if val:
                s.best_accuracy, s.best_loss = val["accuracy"], val["loss"]
            exported = self.exported_state()
            if self.ctx.is_main:
                self.save_weights(self.run_folder.best_weights, exported)
                if val:
                    self.run_folder.write_predictions("val", self.data.val.sources, val["predictions"],
                                                      self.data.classes)
        else:
            s.bad_epochs += 1
            s.stopped_early = bool(self.cfg.train.patience) and s.bad_epochs >= self.cfg.train.patience

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
        if self.state.step == self.first_step and before.get("completed") and before.get("wall_time") is not None:
            results["wall_time"] = before["wall_time"]  # a resume of a finished run adds no training time
        self.run_folder.write_results(results)
        report = self.write_report(best) if self.cfg.report else False
        if self.tb is not None:
            self.tb.close()
        self.console.summary(results, report)

    def write_report(self, model: nn.Module) -> bool:
        """The report of the best checkpoint on the split the run scored last (a failure there only warns);
        whether it was written."""
        from .. import report as report_module

        split = "test" if self.data.test else ("val" if self.data.val else None)
        try:
            eval_set = getattr(self.data, split) if split else None
            predictions = self.run_folder.read_predictions(split, self.data.classes) if split else None
            report_module.write_report(self.run_folder.path, model, eval_set, predictions, device=self.device)
            return True
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise  # the disk's fault, said as one sentence like any other writer's
            warnings.warn(f"the run report could not be written ({e}); the run folder is complete without it",
                          stacklevel=2)
            return False
        except Exception as e:  # the run itself is complete and saved; the report is a bonus
            warnings.warn(f"the run report could not be written ({type(e).__name__}: {e}); "
                          "the run folder is complete without it", stacklevel=2)
            return False


def build_model(cfg: RunConfig, model_config, data_keys: dict) -> VisionTransformer:
    """The run's model: new (``model_config``), or the ``model.init`` weights (whose architecture then is the
    run's) made to the data's channels, classes and image size (``data_keys``)."""
    if not cfg.model.init:
        return VisionTransformer(model_config)
    return model_from_init(cfg.model.init, cfg.model.given(), **data_keys)


def train(cfg: RunConfig, resume: str | None = None, run_dir: str | Path | None = None, log=print) -> int:
    """Run training for ``cfg``; returns the exit code. ``resume``: None, "auto" or a run folder or checkpoint.

    A new run claims ``out_dir/name`` (or the next free ``name-N``); a resumed run keeps its folder and the
    config it was trained with (see :func:`~vitkit.train.resume.resolve_resume`). The run folder is locked
    while it trains."""
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
            if resume is not None:  # (once the run is ours: a run in use is said first)
                cfg, _, changes = resolve_resume(cfg, resume, run_dir=folder)
            trainer = Trainer(cfg, folder, resume, log, changes)  # every check runs here, before any file is written
        except BaseException:
            if lock is not None and resume is None and run_dir is None:
                lock.release()
                lock = None
                Run(folder).discard_if_unused()
            raise
        code = trainer.run()
        distributed.barrier()  # every rank done (rank 0 writes the report last) before any leaves the group
        return code
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown()
