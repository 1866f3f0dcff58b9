"""Train and evaluate the NumPy ViT from a YAML config: ``vitkit scratch --config configs/scratch.yaml``.

The config has three sections, each optional (a missing key takes the default below, which is also what
``configs/scratch.yaml`` holds)::

    model:     image_size, patch_size, in_channels, dim_model, num_heads, dim_ff, num_layers, num_classes
    data:      n_train, n_test, noise, random_seed          (synthetic stripes, see generate_synthetic_images)
    training:  epochs, batch_size, learning_rate, lr_schedule, seed, dtype, threads

The training loop is the whole of learning: take a batch, compute the logits (forward), the loss and its
gradient, and hand the gradient back through the network (backward), which updates every weight.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from vitkit.typed_config import check_positive, from_dict, load_config
from vitkit.errors import ConfigError

from .data import generate_synthetic_images
from .model import ViTClassifier

__all__ = ["NumpyModelConfig", "SyntheticDataConfig", "TrainingConfig", "ScratchConfig", "ViTRunner",
           "train_classifier", "accuracy", "blas_threads", "main"]


# --------------------------------------------------------------------------------------------------------------
# The config


@dataclass
class NumpyModelConfig:
    """The arguments of :class:`ViTClassifier`; the images of the data have this size, channels and classes."""

    image_size: int = 16
    patch_size: int = 4
    in_channels: int = 3
    dim_model: int = 64
    num_heads: int = 4
    dim_ff: int = 128
    num_layers: int = 2
    num_classes: int = 10

    def __post_init__(self):
        check_positive(self, tuple(f.name for f in dataclasses.fields(self)), "model")
        if self.dim_model % self.num_heads:
            raise ConfigError(f"model.dim_model ({self.dim_model}) must be divisible by model.num_heads "
                              f"({self.num_heads})")
        if self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size ({self.image_size}) must be divisible by model.patch_size "
                              f"({self.patch_size})")


@dataclass
class SyntheticDataConfig:
    """How many synthetic images to draw for training and for the test, how noisy, from which seed."""

    n_train: int = 6000
    n_test: int = 2000
    noise: float = 1.0
    random_seed: int = 0

    def __post_init__(self):
        check_positive(self, ("n_train", "n_test"), "data")
        if self.noise < 0:
            raise ConfigError(f"data.noise must be >= 0, got {self.noise}")


@dataclass
class TrainingConfig:
    """Plain SGD on mini-batches; ``lr_schedule="cosine"`` decays the rate from ``learning_rate`` to 0.

    ``threads`` caps the threads of NumPy's BLAS while training (see :func:`blas_threads`); 0 leaves them as
    they are.
    """

    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 0.1
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    threads: int = 1

    def __post_init__(self):
        check_positive(self, ("epochs", "batch_size"), "training")
        if not self.learning_rate > 0:
            raise ConfigError(f"training.learning_rate must be > 0, got {self.learning_rate}")
        if self.threads < 0:
            raise ConfigError(f"training.threads must be >= 0 (0 = BLAS's own choice), got {self.threads}")


@dataclass
class ScratchConfig:
    model: NumpyModelConfig = field(default_factory=NumpyModelConfig)
    data: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def load(cls, config_path: str | Path | None = None) -> "ScratchConfig":
        """The defaults, overridden by a YAML file's sections; an unknown key or a bad value is a ConfigError."""
        return from_dict(cls, None if config_path is None else load_config(config_path))


# --------------------------------------------------------------------------------------------------------------
# Training


def train_classifier(model: ViTClassifier, images: np.ndarray, labels: np.ndarray, *, epochs: int,
                     batch_size: int, learning_rate: float, lr_schedule: str = "cosine", rng=None,
                     on_epoch: Callable[[int, float, float], None] | None = None) -> float:
    """Train ``model`` with mini-batch SGD; returns the mean training loss of the last epoch.

    Each epoch visits the images in a new random order. ``on_epoch(epoch, mean_loss, learning_rate)`` is
    called after each epoch (epochs count from 1).
    """
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    rng = np.random.default_rng(rng)
    n = len(images)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    step = 0
    mean_loss = float("nan")
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            lr = learning_rate
            if lr_schedule == "cosine":  # from learning_rate down to 0 along half a cosine
                lr = 0.5 * learning_rate * (1.0 + math.cos(math.pi * step / total_steps))
            logits = model.forward(images[batch])  # (B, K)
            loss, grad_logits = ViTClassifier.cross_entropy_loss(logits, labels[batch])
            model.backward(grad_logits, lr)  # every layer updates its weights on the way back
            loss_sum += loss * len(batch)
            step += 1
        mean_loss = loss_sum / n
        if on_epoch is not None:
            on_epoch(epoch, mean_loss, lr)
    return mean_loss


def blas_threads(threads: int):
    """A context that caps NumPy's BLAS at ``threads`` threads (0: no cap).

    The matrices of a small ViT are small: one thread multiplies them as fast as several, and several threads
    that wait for each other on a busy machine can make a step ten times slower. Needs ``threadpoolctl``
    (installed with scikit-learn); without it this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas") if threads else contextlib.nullcontext()


def accuracy(model: ViTClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Accuracy: the fraction of images whose highest logit is their label."""
    return float((model.predict(images, batch_size) == labels).mean())


class ViTRunner:
    """Loads a config, draws the synthetic data, trains a :class:`ViTClassifier` and tests it.

    ``config_path=None`` uses the defaults. After :meth:`run`, ``self.model`` is the trained model.
    """

    def __init__(self, config_path: str | Path | None = None, *, verbose: bool = False):
        self.config = ScratchConfig.load(config_path)
        self.verbose = verbose
        self.model: ViTClassifier | None = None

    def _log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def run(self) -> dict:
        """Train, then test; returns ``{"train_loss": final training loss, "test_accuracy": accuracy on the
        held-out images}``."""
        m, d, t = self.config.model, self.config.data, self.config.training
        start = time.perf_counter()
        images, labels = generate_synthetic_images(d.n_train + d.n_test, m.image_size, m.in_channels,
                                                   m.num_classes, d.random_seed, noise=d.noise)
        train_x, train_y = images[:d.n_train], labels[:d.n_train]
        test_x, test_y = images[d.n_train:], labels[d.n_train:]
        self.model = ViTClassifier(**dataclasses.asdict(m), dtype=np.dtype(t.dtype), rng=t.seed)
        self._log(f"NumPy ViT: {sum(p.size for p in self.model.named_parameters().values()):,} parameters, "
                  f"{d.n_train} training and {d.n_test} test images")

        def on_epoch(epoch: int, loss: float, lr: float) -> None:
            self._log(f"epoch {epoch}/{t.epochs}  train_loss {loss:.4f}  lr {lr:.4f}  "
                      f"({time.perf_counter() - start:.1f} s)")

        with blas_threads(t.threads):
            train_loss = train_classifier(self.model, train_x, train_y, epochs=t.epochs, batch_size=t.batch_size,
                                          learning_rate=t.learning_rate, lr_schedule=t.lr_schedule,
                                          rng=t.seed + 1, on_epoch=on_epoch)
            test_accuracy = accuracy(self.model, test_x, test_y)
        self._log(f"train_loss {train_loss:.4f}  test_accuracy {test_accuracy:.4f}  "
                  f"({time.perf_counter() - start:.1f} s)")
        return {"train_loss": train_loss, "test_accuracy": test_accuracy}


def main(argv: list[str] | None = None) -> int:
    """``vitkit scratch [--config FILE] [--output FILE.json]``; a bad config raises ConfigError (exit 2)."""
    parser = argparse.ArgumentParser(prog="vitkit scratch",
                                     description="Train the NumPy ViT of vitkit.numpy_vit on synthetic images.")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config with model/data/training sections (default: the built-in defaults)")
    parser.add_argument("--output", type=Path, default=None,
                        help="write the results (train_loss, test_accuracy) to this JSON file")
    args = parser.parse_args(argv)
    results = ViTRunner(args.config, verbose=True).run()
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0
