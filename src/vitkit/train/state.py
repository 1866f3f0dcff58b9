"""Where a training run stands: the one record of it that a checkpoint saves and a resume restores.

The training state file (:mod:`vitkit.train.checkpoint`) holds the model, EMA, optimizer, scheduler and RNG
states next to :meth:`TrainState.to_dict`; everything else a stopped run needs to go on exactly is a field
here. The keys on disk are the field names, so files written before this record existed read back as they
were (a field a file lacks takes its default).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .loop import RunningMetrics


@dataclass
class TrainState:
    """A run's position and its early-stopping bookkeeping."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches consumed in the current epoch
    step: int = 0  # optimizer steps taken
    best_accuracy: float = -1.0  # the best epoch's validation accuracy (-1 before any)
    best_loss: float = math.inf  # its validation loss (the tie-break)
    best_epoch: int = 0  # the epoch ``checkpoints/best`` holds (0 before any)
    bad_epochs: int = 0  # epochs since the best one, for train.patience
    stopped_early: bool = False
    wall_time: float = 0.0  # seconds trained, over every session of the run
    running: RunningMetrics | None = None  # the current epoch's sums; None until its first step

    def to_dict(self) -> dict:
        """The fields as plain values (the running sums only mid-epoch, where a resume needs them)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["running"] = self.running.values() if self.running is not None and self.batch else None
        return d

    @classmethod
    def from_dict(cls, d: dict, device) -> TrainState:
        """The state :meth:`to_dict` wrote (``device`` holds the running sums); missing fields take defaults."""
        fields = {f.name: d[f.name] for f in dataclasses.fields(cls) if d.get(f.name) is not None}
        if fields.get("running") is not None and fields.get("batch"):
            fields["running"] = RunningMetrics(device, fields["running"])
        else:
            fields.pop("running", None)
        return cls(**fields)
