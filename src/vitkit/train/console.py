"""What a person sees of a run: the announcement of what will run, a progress bar on a terminal or a progress
line every ``PROGRESS_SECONDS`` without one (logs, CI), one line per epoch, and the summary at the end. Only
the main process speaks.

The console is told, in plain values, what happens: the :class:`~vitkit.train.plan.RunPlan` the trainer
makes once, then the :class:`~vitkit.train.state.TrainState`, metrics row or results of each event. It never
looks into the trainer, so every line can be tested with values made by hand.
"""

from __future__ import annotations

import sys
import time
import warnings

from .config import RESUMABLE_CHANGES
from .plan import RunPlan
from .state import TrainState

PROGRESS_SECONDS = 30.0  # without a terminal (logs, CI), a progress line this often
RESULT_EVERY = 10  # steps between the running loss and accuracy shown (summed over the processes)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _epochs(n: float) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def _stats(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


class Console:
    """Prints a run's lines through ``log`` (print by default); a process that is not the main one
    (``speaks=False``) prints nothing. ``clock`` times the progress lines (tests pass their own)."""

    def __init__(self, plan: RunPlan, log=print, speaks: bool = True, clock=time.time):
        self.plan, self.log_fn, self.speaks, self.clock = plan, log, speaks, clock
        self.bar = None
        self.running = None  # the epoch's running {"loss", "accuracy"} over all processes, as last summed
        self.started = self.last_progress = self.epoch_started = clock()
        self.first_step = self.epoch_first_batch = 0  # where this session and this epoch began

    def log(self, text: str) -> None:
        if self.speaks:
            if self.bar is not None:
                self.bar.write(text)
            else:
                self.log_fn(text)

    # ---------------------------------------------------------------------------------------------------------
    # The start

    def announce(self, state: TrainState) -> None:
        """What will run, and from where; the progress lines' clock starts here."""
        p, cfg, m = self.plan, self.plan.cfg, self.plan.model
        self.started = self.last_progress = self.clock()
        self.first_step = state.step
        grid = "x".join(map(str, m.grid_size))
        size = "x".join(map(str, p.img_size))
        where = p.device + (f", {p.world_size} processes" if p.world_size > 1 else "") + \
            (" (fsdp: sharded)" if p.world_size > 1 and p.cfg.train.strategy == "fsdp" else "")
        counts = " / ".join(f"{p.sizes[s]} {s}" for s in ("train", "val", "test") if p.sizes.get(s))
        self.log(f"data:  {cfg.data.dataset}: {counts} images, {p.classes} classes, {p.channels}x{size} pixels")
        self.log(f"split: {p.split_rule}")
        if p.preprocessing is not None:
            self.log(f"preprocessing: {p.preprocessing}")
        self.log(f"model: ViT {p.parameters / 1e6:.2f}M parameters (dim {m.embed_dim}, depth "
                 f"{m.depth}, heads {m.num_heads}, patch {m.patch_size}, {grid} patches"
                 + (f", {m.rope} rotary embedding" if m.rope != "none" else "") + ")"
                 + (f", initialised from {cfg.model.init}" if cfg.model.init else ""))
        if p.adapt is not None:
            self.log(f"adapt: {p.adapt}")
        self.log(f"train: {cfg.train.epochs} epochs x {p.steps_per_epoch} steps, batch {cfg.data.batch_size}, "
                 f"AdamW lr {cfg.optim.lr:g}"
                 + (f", layer decay {cfg.optim.layer_decay:g}" if cfg.optim.layer_decay is not None else "")
                 + (f", the head alone for the first {_epochs(cfg.optim.head_warmup_epochs)}"
                    if cfg.optim.head_warmup_epochs else "") + f", on {where}")
        if self.speaks and p.weights_stats is not None and p.weights_stats != p.stats:
            (mean, std), (our_mean, our_std) = p.weights_stats, p.stats
            warnings.warn(f"the weights of {cfg.model.init} were trained on images normalised with mean "
                          f"{_stats(mean)} and std {_stats(std)}, this run normalises with "
                          f"{_stats(our_mean)} and {_stats(our_std)}; to use theirs, set "
                          f"data.mean={_stats(mean)[1:-1].join('[]')} and data.std={_stats(std)[1:-1].join('[]')}")
        if p.resumed_from is not None:
            self.log(f"resumed from {p.resumed_from} at epoch {state.epoch + 1}, batch {state.batch} "
                     f"(step {state.step})")
        for key, old, new in p.changes:
            why = RESUMABLE_CHANGES[key]
            self.log(f"changed on resume: {key} {old!r} -> {new!r}" + (f" ({why}; lr now {p.lr:.2e})"
                     if key == "train.epochs" else f" ({why})" if why else ""))
        self.log(f"run folder: {p.run_dir}")

    # ---------------------------------------------------------------------------------------------------------
    # An epoch

    def begin_epoch(self, state: TrainState) -> None:
        """An epoch (or the rest of one) starts at ``state``: a progress bar for it, on a terminal only."""
        self.epoch_started, self.epoch_first_batch = self.clock(), state.batch
        self.running = None  # summed again at the epoch's first step (on every process)
        if self.speaks and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.plan.batches_per_epoch, initial=state.batch,
                            desc=f"epoch {state.epoch + 1}/{self.plan.cfg.train.epochs}", leave=False,
                            dynamic_ncols=True)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def progress(self, state: TrainState) -> None:
        """After an optimizer step, on every process: the epoch's running loss and accuracy summed over the
        processes at the epoch's first step and every RESULT_EVERY steps (a collective, so it happens at the
        same steps on every rank, never on one rank's clock or terminal); then, on the main process, the bar
        advanced or a progress line when one is due."""
        if self.running is None or state.step % RESULT_EVERY == 0:
            self.running = state.running.result()
        if self.bar is not None:
            self.bar.update(state.batch - self.bar.n)
            if state.step % RESULT_EVERY == 0:
                self.bar.set_postfix(loss=f"{self.running['loss']:.4f}", acc=f"{self.running['accuracy']:.3f}",
                                     img_s=f"{self.images_per_s(state, self.clock()):.0f}")
        elif self.speaks and self.clock() - self.last_progress >= PROGRESS_SECONDS:
            self.progress_line(state)

    def progress_line(self, state: TrainState) -> None:
        """Where the run stands, for logs and CI (no terminal, no progress bar): a line every PROGRESS_SECONDS."""
        p, now, r = self.plan, self.clock(), self.running
        total = p.steps_per_epoch * p.cfg.train.epochs
        eta = (now - self.started) / max(state.step - self.first_step, 1) * (total - state.step)
        self.log(f"  epoch {state.epoch + 1}/{p.cfg.train.epochs} step {state.step}/{total}: loss {r['loss']:.4f} "
                 f"acc {r['accuracy']:.3f} | {self.images_per_s(state, now):.0f} img/s | ETA {_duration(eta)}")
        self.last_progress = now

    def images_per_s(self, state: TrainState, now: float) -> float:
        images = (state.batch - self.epoch_first_batch) * self.plan.cfg.data.batch_size
        return images / max(now - self.epoch_started, 1e-9)

    def epoch(self, r: dict) -> None:
        """An epoch's row of metrics.csv."""
        val = (f" | val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else "")
        self.log(f"epoch {r['epoch']:>3}/{self.plan.cfg.train.epochs}  train loss {r['train_loss']:.4f} "
                 f"acc {r['train_accuracy']:.4f}{val} | lr {r['lr']:.2e} | {r['images_per_s']:.0f} img/s | "
                 f"{r['seconds']:.1f}s")

    def stopping_early(self, state: TrainState) -> None:
        self.log(f"stopping early: validation accuracy has not improved for {state.bad_epochs} epochs "
                 f"(train.patience {self.plan.cfg.train.patience}); the best was epoch {state.best_epoch}")

    # ---------------------------------------------------------------------------------------------------------
    # The end

    def stopped(self, state: TrainState) -> None:
        """A signal stopped the run at ``state`` (saved there)."""
        self.log(f"stopped at step {state.step} (epoch {state.epoch + 1}, batch {state.batch}); "
                 f"resume with: vitkit train --resume {self.plan.run_dir}")

    def summary(self, r: dict, report: bool = False) -> None:
        """The finished run's results.json in a line, where its files are (``report``: report.html is one),
        and the command that scores its best checkpoint."""
        validated, tested = "val" in self.plan.eval_splits, "test" in self.plan.eval_splits
        chosen = (f"best epoch {r['best_epoch']} of {r['epochs']} (val accuracy {r['val_accuracy']:.4f} on "
                  f"{r['num_val']} images)") if validated else f"the last epoch ({r['epochs']}; no validation split)"
        test = (f"; test accuracy {r['test_accuracy']:.4f} on {r['num_test']} images" if r["test_accuracy"] is not None
                else "; no test split")
        self.log(f"done in {r['wall_time']:.1f}s: {chosen}{test} (checkpoints/best)")
        self.log(f"run folder: {self.plan.run_dir}  (config.yaml, metrics.csv, results.json, "
                 f"checkpoints/best.safetensors{', report.html' if report else ''})")
        split = "" if validated else " --split " + ("test" if tested else "train")
        self.log(f"next: vitkit eval --checkpoint {self.plan.best_weights}{split}")
