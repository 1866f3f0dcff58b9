"""The run folder: what ``vitkit train`` writes, and how everything else (``eval``, ``predict``, ``visualize``,
the report, a resume) reads it back. Paths and file formats live here and nowhere else::

    RUN/config.yaml                 the fully resolved config (re-run or resume from it)
        split.csv                   image folders: which file is in which split (split,class,path)
        metrics.csv                 one row per epoch
        results.json                the run's numbers: the best checkpoint on its validation and test splits
        predictions/val.csv         per image: source, label, prediction, confidence, loss (best epoch)
        predictions/test.csv        the same for the test split, scored once at the end
        checkpoints/best.safetensors, last.safetensors   weights + architecture + classes + preprocessing
        checkpoints/last.state.pt, previous.state.pt     everything needed to resume exactly
        report.html                 the run report
        .lock                       held by the process training the run (one run, one folder)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import yaml

from .errors import ConfigError, DataError
from .fileio import atomic_write_text

METRICS_COLUMNS = ["epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5", "lr",
                   "images_per_s", "seconds"]
PREDICTION_COLUMNS = ["source", "label", "pred", "confidence", "loss"]
CHECKPOINTS = "checkpoints"  # the folder of a run's weights and training states
LAST_STATE, PREVIOUS_STATE = "last.state.pt", "previous.state.pt"  # in it: the newest training state, the one before


class Run:
    """A run folder (it need not exist yet)."""

    def __init__(self, path):
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS
        self.config_path = self.path / "config.yaml"
        self.split_path = self.path / "split.csv"
        self.metrics_path = self.path / "metrics.csv"
        self.results_path = self.path / "results.json"
        self.report_path = self.path / "report.html"

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @classmethod
    def of_checkpoint(cls, checkpoint) -> "Run | None":
        """The run a checkpoint belongs to (``RUN/checkpoints/best``, its ``.safetensors`` or ``RUN`` itself),
        or None for a weights file outside a run folder."""
        p = Path(checkpoint)
        for candidate in (p, p.parent.parent):
            if (candidate / "config.yaml").is_file() and cls(candidate).has_checkpoints():
                return cls(candidate)
        return None

    @classmethod
    def holding(cls, path) -> "Run | None":
        """The run whose checkpoints folder ``path`` is in, told by its place alone (no file is read), or None."""
        p = Path(path)
        return cls(p.parent.parent) if p.parent.name == CHECKPOINTS else None

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir()

    def holds_a_run(self) -> bool:
        return self.config_path.is_file() or self.has_checkpoints()

    def lock(self):
        """Take the run's exclusive lock (a ``filelock.FileLock``, to be released when the run ends), or raise
        :class:`RunInUse` when another process holds it."""
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunInUse(f"run folder {self.path} is in use by another 'vitkit train'; wait for it to finish "
                           "or stop it first") from None
        return lock

    def discard_if_unused(self) -> None:
        """Remove the folder of a run that was claimed but never started (it holds nothing but its lock)."""
        if self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {".lock"}:
            (self.path / ".lock").unlink(missing_ok=True)
            self.path.rmdir()

    @property
    def best_weights(self) -> Path:
        """``checkpoints/best`` (the weights file is ``best.safetensors``): what eval, predict and serve load."""
        return self.checkpoints / "best"

    @property
    def last_weights(self) -> Path:
        """``checkpoints/last`` (``last.safetensors``): the weights of the newest epoch."""
        return self.checkpoints / "last"

    @property
    def last_state(self) -> Path:
        """``checkpoints/last.state.pt``: everything a resume needs (see :mod:`vitkit.train.checkpoint`)."""
        return self.checkpoints / LAST_STATE

    def relative(self, path) -> str:
        """``path`` as the run's own files name it: relative to the run folder, with '/' (``checkpoints/best``)."""
        return Path(path).relative_to(self.path).as_posix()

    def predictions_path(self, split: str) -> Path:
        return self.path / "predictions" / f"{split}.csv"

    # ----------------------------------------------------------------------------------------------------------
    # Reading

    def read_config(self) -> dict:
        return _read_mapping(self.config_path, yaml.safe_load, yaml.YAMLError, "YAML")

    def read_results(self) -> dict:
        return _read_mapping(self.results_path, json.loads, json.JSONDecodeError, "JSON")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        with self.metrics_path.open(newline="") as f:
            return list(csv.DictReader(f))

    def read_predictions(self, split: str, classes: list[str]) -> dict | None:
        """A predictions file as {"source": [...], "label", "pred" (int64), "confidence", "loss" (float32)},
        or None when the run has none for ``split``."""
        path = self.predictions_path(split)
        if not path.is_file():
            return None
        index = {c: i for i, c in enumerate(classes)}
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        try:
            return {"source": [r["source"] for r in rows],
                    "label": torch.tensor([index[r["label"]] for r in rows], dtype=torch.int64),
                    "pred": torch.tensor([index[r["pred"]] for r in rows], dtype=torch.int64),
                    "confidence": torch.tensor([float(r["confidence"]) for r in rows]),
                    "loss": torch.tensor([float(r["loss"]) for r in rows])}
        except (KeyError, ValueError) as e:
            raise DataError(f"predictions file {path} is damaged ({e!r}); rerun the evaluation") from None

    # ----------------------------------------------------------------------------------------------------------
    # Writing

    def write_results(self, results: dict) -> None:
        atomic_write_text(self.results_path, json.dumps(results, indent=2) + "\n")

    def results_from(self, state, test: dict | None, *, completed: bool, validated: bool, facts: dict) -> dict:
        """results.json: the ``best`` checkpoint's validation numbers (the last epoch's when not
        ``validated``), its ``test`` scores once scored, the last epoch's training numbers, where ``state``
        (a :class:`~vitkit.train.state.TrainState`) stands, then the run's ``facts`` (data set, split sizes,
        device ...). Epoch numbers come from metrics.csv, so a resumed run reports the same numbers as one
        that never stopped."""
        rows = self.read_metrics()
        last = rows[-1] if rows else {}
        best = next((r for r in rows if int(r["epoch"]) == state.best_epoch), {}) if validated else last
        number = lambda row, key: float(row[key]) if row.get(key) not in (None, "") else None  # noqa: E731
        score = lambda key: float(f"{test[key]:.6g}") if test and test[key] is not None else None  # noqa: E731
        return {
            "model": self.relative(self.best_weights),
            "best_epoch": state.best_epoch or None,
            "chosen_on": "val" if validated else "last epoch (no validation split)",
            "val_accuracy": number(best, "val_accuracy"), "val_loss": number(best, "val_loss"),
            "val_top5": number(best, "val_top5"),
            "test_accuracy": score("accuracy"), "test_loss": score("loss"), "test_top5": score("top5"),
            "train_loss": number(last, "train_loss"), "train_accuracy": number(last, "train_accuracy"),
            "images_per_s": number(last, "images_per_s"),
            "epochs": state.epoch, "steps": state.step, "wall_time": round(state.wall_time, 3),
            "completed": completed, "stopped_early": state.stopped_early, **facts,
        }

    def write_predictions(self, split: str, sources: list[str], predictions: dict, classes: list[str]) -> Path:
        return write_predictions(self.predictions_path(split), sources, predictions, classes)

    def append_metrics(self, row: dict) -> None:
        """One row more (floats to 6 significant digits, None empty), the file rewritten atomically: a full
        disk leaves the rows already there as they were."""
        before = self.metrics_path.read_text() if self.metrics_path.exists() else _csv_text([METRICS_COLUMNS])
        cell = lambda v: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)  # noqa: E731
        atomic_write_text(self.metrics_path, before + _csv_text([[cell(row.get(c)) for c in METRICS_COLUMNS]]))

    def trim_metrics(self, epoch: int) -> None:
        """Drop rows of epochs after ``epoch`` (written after the checkpoint a resume starts from)."""
        rows = [r for r in self.read_metrics() if int(r["epoch"]) <= epoch]
        if self.metrics_path.exists():
            atomic_write_text(self.metrics_path, _csv_text([METRICS_COLUMNS] + [[r.get(c, "") for c in METRICS_COLUMNS]
                                                                                 for r in rows]))


class RunInUse(ConfigError):
    """Another process is training in this run folder."""


def claim_new_run(out_dir, name: str):
    """``out_dir/name`` for a new run, or ``name-2``, ``name-3`` ... when that folder holds a run or another
    process is using it: ``(Run, its lock)``. Taking the lock is what claims a folder, so two runs started
    together with the same name never share one."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"out_dir {out_dir} is a file; expected a folder to hold run folders")
    for n in range(1, 10_000):
        run = Run(Path(out_dir) / (name if n == 1 else f"{name}-{n}"))
        if run.path.exists() and not run.path.is_dir():
            continue
        if run.holds_a_run():
            continue
        try:
            lock = run.lock()
        except RunInUse:
            continue
        if run.holds_a_run():  # written by another process between the check and the lock
            lock.release()
            continue
        return run, lock
    raise ConfigError(f"{out_dir} holds runs named {name} up to {name}-9999; choose another name")


def write_predictions(path, sources: list[str], predictions: dict, classes: list[str]) -> Path:
    """One row per image (``source,label,pred,confidence,loss``, classes by name), written atomically."""
    rows = zip(sources, predictions["label"].tolist(), predictions["pred"].tolist(),
               predictions["confidence"].tolist(), predictions["loss"].tolist())
    return atomic_write_text(path, _csv_text([PREDICTION_COLUMNS] + [[s, classes[y], classes[p], f"{c:.6f}", f"{l:.6f}"]
                                                                     for s, y, p, c, l in rows]))


def _csv_text(rows) -> str:
    import io
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _read_mapping(path: Path, parse, error: type[Exception], kind: str) -> dict:
    """The mapping a run file holds: {} when the file is missing or holds no mapping; a damaged file is one
    DataError naming it."""
    if not path.is_file():
        return {}
    try:
        data = parse(path.read_text())
    except error as e:
        raise DataError(f"{path} is not valid {kind} ({e})") from None
    return data if isinstance(data, dict) else {}
