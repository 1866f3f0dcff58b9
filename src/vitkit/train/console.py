"""What a person sees of a run: the announcement of what will run, a progress bar on a terminal or a progress
line every ``PROGRESS_SECONDS`` without one (logs, CI), one line per epoch, and the summary at the end. Only
the main process speaks."""

from __future__ import annotations

import sys
import time
import warnings

from ..model import count_parameters
from .adapt import describe
from .config import RESUMABLE_CHANGES

PROGRESS_SECONDS = 30.0  # without a terminal (logs, CI), a progress line this often


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _epochs(n: float) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def _stats(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


class Console:
    """Prints for a :class:`~vitkit.train.trainer.Trainer` (``run``), through ``log`` (print by default)."""

    def __init__(self, run, log=print):
        self.run, self.log_fn, self.bar = run, log, None
        self.last_progress = time.time()

    def log(self, text: str) -> None:
        if self.run.ctx.is_main:
            if self.bar is not None:
                self.bar.write(text)
            else:
                self.log_fn(text)

    def open_bar(self, epoch: int) -> None:
        """A progress bar for the epoch, on a terminal only."""
        t = self.run
        if t.ctx.is_main and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=len(t.data.train_loader), initial=t.batch, desc=f"epoch {epoch + 1}/"
                            f"{t.cfg.train.epochs}", leave=False, dynamic_ncols=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def step(self, step: int, batch: int, running) -> None:
        """After an optimizer step: advance the bar, or print a progress line when one is due."""
        t = self.run
        if self.bar is not None:
            self.bar.update(batch - t.batch)
            if step % 10 == 0:
                r = running.result()
                seen = (batch - t.epoch_start_batch) * t.cfg.data.batch_size
                self.bar.set_postfix(loss=f"{r['loss']:.4f}", acc=f"{r['accuracy']:.3f}",
                                     img_s=f"{seen / max(time.time() - t.epoch_t0, 1e-9):.0f}")
        elif time.time() - self.last_progress >= PROGRESS_SECONDS:
            self.progress_line(step, batch, running)

    def progress_line(self, step: int, batch: int, running) -> None:
        """Where the run stands, for logs and CI (no terminal, no progress bar): a line every PROGRESS_SECONDS."""
        t, now = self.run, time.time()
        r = running.result()
        images = (batch - t.epoch_start_batch) * t.cfg.data.batch_size
        rate = images / max(now - t.epoch_t0, 1e-9)
        total = t.steps_per_epoch * t.cfg.train.epochs
        per_step = (now - t.t_start) / max(step - t.first_step, 1)
        eta = per_step * (total - step)
        self.log(f"  epoch {t.epoch + 1}/{t.cfg.train.epochs} step {step}/{total}: loss {r['loss']:.4f} "
                 f"acc {r['accuracy']:.3f} | {rate:.0f} img/s | ETA {_duration(eta)}")
        self.last_progress = now

    def announce(self) -> None:
        t = self.run
        cfg, d, m = t.cfg, t.data, t.model_config
        grid = "x".join(map(str, m.grid_size))
        size = "x".join(map(str, d.preprocess.img_size))
        where = f"{t.device}" + (f", {t.ctx.world_size} processes" if t.ctx.distributed else "")
        counts = " / ".join(f"{d.size(s)} {s}" for s in ("train", "val", "test") if d.size(s))
        self.log(f"data:  {cfg.data.dataset}: {counts} images, {len(d.classes)} classes, {d.in_channels}x{size} "
                 f"pixels")
        self.log(f"split: {d.splits.rule}")
        if d.splits.is_folder:
            self.log(f"preprocessing: {d.preprocess.describe()}")
        self.log(f"model: ViT {count_parameters(t.model) / 1e6:.2f}M parameters (dim {m.embed_dim}, depth "
                 f"{m.depth}, heads {m.num_heads}, patch {m.patch_size}, {grid} patches"
                 + (f", {m.rope} rotary embedding" if m.rope != "none" else "") + ")"
                 + (f", initialised from {cfg.model.init}" if cfg.model.init else ""))
        if cfg.train.freeze != "none" or cfg.train.lora is not None:
            self.log(f"adapt: {describe(t.model, cfg.train)}")
        self.log(f"train: {cfg.train.epochs} epochs x {t.steps_per_epoch} steps, batch {cfg.data.batch_size}, "
                 f"AdamW lr {cfg.optim.lr:g}"
                 + (f", layer decay {cfg.optim.layer_decay:g}" if cfg.optim.layer_decay is not None else "")
                 + (f", the head alone for the first {_epochs(cfg.optim.head_warmup_epochs)}"
                    if cfg.optim.head_warmup_epochs else "") + f", on {where}")
        if t.ctx.is_main and d.splits.is_folder and t.model.pretrained_preprocess:
            theirs = t.model.pretrained_preprocess
            if (tuple(theirs["mean"]), tuple(theirs["std"])) != (d.preprocess.mean, d.preprocess.std):
                warnings.warn(f"the weights of {cfg.model.init} were trained on images normalised with mean "
                          f"{_stats(theirs['mean'])} and std {_stats(theirs['std'])}, this run normalises with "
                          f"{_stats(d.preprocess.mean)} and {_stats(d.preprocess.std)}; to use theirs, set "
                          f"data.mean={_stats(theirs['mean'])[1:-1].join('[]')} and "
                          f"data.std={_stats(theirs['std'])[1:-1].join('[]')}")
        if t.resumed_from is not None:
            self.log(f"resumed from {t.resumed_from} at epoch {t.epoch + 1}, batch {t.batch} "
                     f"(step {t.step})")
        for key, old, new in t.changes:
            why = RESUMABLE_CHANGES[key]
            self.log(f"changed on resume: {key} {old!r} -> {new!r}" + (f" ({why}; lr now "
                     f"{max(g['lr'] for g in t.optimizer.param_groups):.2e})" if key == "train.epochs" else
                     f" ({why})" if why else ""))
        self.log(f"run folder: {t.run_dir}")

    def epoch(self, r: dict) -> None:
        val = (f" | val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else "")
        self.log(f"epoch {r['epoch']:>3}/{self.run.cfg.train.epochs}  train loss {r['train_loss']:.4f} "
                 f"acc {r['train_accuracy']:.4f}{val} | lr {r['lr']:.2e} | {r['images_per_s']:.0f} img/s | "
                 f"{r['seconds']:.1f}s")


    def summary(self, r: dict) -> str:
        chosen = (f"best epoch {r['best_epoch']} of {r['epochs']} (val accuracy {r['val_accuracy']:.4f} on "
                  f"{r['num_val']} images)") if self.run.data.val else f"the last epoch ({r['epochs']}; no validation split)"
        test = (f"; test accuracy {r['test_accuracy']:.4f} on {r['num_test']} images" if r["test_accuracy"] is not None
                else "; no test split")
        return f"done in {r['wall_time']:.1f}s: {chosen}{test} (checkpoints/best)"

