"""A training run's figures: curves from metrics.csv, the confusion matrix, and the most confident mistakes."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .canvas import as_numpy, grid_shape, imshow, new_figure, save_figure, subplots, to_display


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """``metrics.csv`` as {column: float array}, columns by name; empty or non-numeric cells are NaN."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metrics file {path} does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}

    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    return {name: np.array([number(r.get(name)) for r in rows]) for name in rows[0]}

def plot_training_curves(metrics, save_path=None, title: str = "Training curves"):
    """Loss, accuracy and learning rate per epoch, from a ``metrics.csv`` path or a {column: values} dict.

    Columns are found by name: any ``*loss*`` column goes to the loss panel, ``*acc*`` and ``*top5*`` to the
    accuracy panel, ``lr`` (or ``learning_rate``) to its own panel on a log scale; a panel with no column is left out.
    """
    cols = read_metrics(metrics) if isinstance(metrics, (str, Path)) else {k: np.asarray(v, float)
                                                                          for k, v in metrics.items()}
    n = len(next(iter(cols.values()))) if cols else 0
    x = cols.get("epoch", np.arange(1, n + 1, dtype=float))
    groups = [("loss", [k for k in cols if "loss" in k.lower()]),
              ("accuracy", [k for k in cols if "acc" in k.lower() or "top5" in k.lower()]),
              ("learning rate", [k for k in cols if k.lower() in ("lr", "learning_rate")])]
    groups = [(name, [k for k in keys if np.isfinite(cols[k]).any()]) for name, keys in groups]  # an empty
    groups = [(name, keys) for name, keys in groups if keys]  # column (val_top5 of 5 classes or fewer) is not drawn
    if not groups:
        raise DataError("the metrics have no loss, accuracy or lr column to plot; "
                        f"columns are: {', '.join(cols) or 'none'}")
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(4.2 * len(groups), 3.4)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (name, keys) in zip(axes, groups):
        for k in keys:
            ok = np.isfinite(cols[k])
            ax.plot(x[ok], cols[k][ok], marker="o" if ok.sum() <= 30 else None, ms=3, lw=1.8, label=k)
        if name == "learning rate":
            values = np.concatenate([cols[k][np.isfinite(cols[k])] for k in keys])
            if (values > 0).all() and values.max() > 10 * values.min():
                ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(keys) > 1 or name != "learning rate":
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, save_path)

def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)

def plot_confusion_matrix(cm, class_names: Sequence[str] | None = None, save_path=None,
                          title: str = "Confusion matrix", cmap: str = "Blues"):
    """The confusion matrix coloured by the fraction of each true class (row), with the counts written in
    the cells when there are at most 20 classes."""
    cm = np.asarray(cm)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # (n, n): each row sums to 1
    side = min(11.0, max(4.0, 0.42 * n + 1.8))
    fig = new_figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8 if n > 12 else 9,
                            color="white" if frac[i, j] > 0.5 else "#222")
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title} — accuracy {acc:.1%} on {cm.sum()} images", fontsize=11)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    return save_figure(fig, save_path)

def most_confident_mistakes(labels, probs, k: int = 16) -> np.ndarray:
    """Indices of the (at most) ``k`` misclassified images whose wrong prediction was most confident."""
    probs = as_numpy(probs)
    labels = np.asarray(labels)
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    order = np.argsort(-probs[wrong, preds[wrong]], kind="stable")
    return wrong[order[:k]]

def plot_image_grid(images, titles: Sequence[str], captions: Sequence[str] = (), save_path=None, title: str = "",
                    mean=None, std=None, max_cols: int = 4):
    """Images (N, C, H, W) in a grid, each with a title above (green) and a caption below (red)."""
    n = len(images)
    rows, cols = grid_shape(n, max_cols)
    fig = new_figure(1.9 * cols, 2.25 * rows + 0.4)
    axes = subplots(fig, n, max_cols)
    for i, ax in enumerate(axes):
        imshow(ax, to_display(images[i], mean, std))
        ax.set_title(titles[i], fontsize=8, color="#1a7f37")
        if i < len(captions):
            ax.set_xlabel(captions[i], fontsize=7, color="#cf222e")
    fig.suptitle(title)
    return save_figure(fig, save_path)

def plot_mistakes(images, labels, probs, class_names: Sequence[str] | None = None, save_path=None,
                  k: int = 16, title: str = "Most confident mistakes", mean=None, std=None, max_cols: int = 4):
    """A grid of the ``k`` most confidently misclassified images, each captioned with its true class and
    the predicted class with its probability. ``images`` (N, C, H, W) line up with ``labels`` (N,) and
    ``probs`` (N, classes)."""
    idx = most_confident_mistakes(labels, probs, k)
    probs = as_numpy(probs)
    names = list(class_names) if class_names is not None else [str(i) for i in range(probs.shape[1])]
    if len(idx) == 0:
        fig = new_figure(5, 1.4)
        fig.text(0.5, 0.5, "No mistakes on these images.", ha="center", va="center", fontsize=12)
        return save_figure(fig, save_path)
    preds = probs[idx].argmax(axis=1)
    return plot_image_grid([images[i] for i in idx], [f"true {names[int(labels[i])]}" for i in idx],
                           [f"pred {names[p]} ({probs[i, p]:.0%})" for i, p in zip(idx, preds)], save_path,
                           title, mean, std, max_cols)

def mistakes_figure(eval_set, predictions: dict, k: int = 16, save_path=None, title: str = ""):
    """The ``k`` most confident mistakes of a scored split, each captioned with its true and predicted class,
    the confidence and its file. ``eval_set`` (:class:`vitkit.data.splits.EvalSet`) shows the images as the
    model saw them; ``predictions`` holds "label", "pred" and "confidence" per image, in its order."""
    classes = eval_set.classes
    labels, preds = predictions["label"].numpy(), predictions["pred"].numpy()
    confidence = predictions["confidence"].numpy()
    sources = predictions.get("source") or eval_set.sources
    wrong = np.flatnonzero(preds != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")[:k]]
    if len(worst) == 0:
        fig = new_figure(5, 1.4)
        fig.text(0.5, 0.5, "No mistakes on these images.", ha="center", va="center", fontsize=12)
        return save_figure(fig, save_path)
    short = lambda s: s if len(s) <= 28 else "…" + s[-27:]  # noqa: E731
    return plot_image_grid(eval_set.view(worst.tolist()), [f"true {classes[labels[i]]}" for i in worst],
                           [f"pred {classes[preds[i]]} ({confidence[i]:.0%})\n{short(sources[i])}" for i in worst],
                           save_path, title)
