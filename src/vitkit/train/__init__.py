"""Training: the loop (``train_epoch``, ``evaluate``, ``save_checkpoint``, ``load_checkpoint``),
the run config, optimizer and schedule, resumable checkpoints, and the trainer behind ``vitkit train``.

    >>> from vitkit.train import load_run_config, train
    >>> cfg = load_run_config("configs/digits.yaml", ["train.epochs=5"])
    >>> train(cfg)   # writes runs/digits/
"""

from ..typed_config import load_config, save_config
from ..evaluation import evaluate
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DataConfig, LoopConfig, OptimConfig, RunConfig, load_run_config
from .loop import NonFiniteLossError, train_epoch
from .optim import build_optimizer, build_scheduler, param_groups
from .trainer import Trainer, train

__all__ = [
    "train_epoch", "evaluate", "save_checkpoint", "load_checkpoint", "load_config", "save_config",
    "RunConfig", "DataConfig", "OptimConfig", "LoopConfig", "load_run_config",
    "NonFiniteLossError", "param_groups", "build_optimizer", "build_scheduler", "Trainer", "train",
]
