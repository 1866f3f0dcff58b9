"""A linear probe: multinomial logistic regression on frozen features, its regularisation chosen on validation.

Features are standardised with the training split's statistics, z = (x - mu) / sigma (sigma = 1 where a feature
is constant), and for each C of the grid scikit-learn's ``LogisticRegression`` (lbfgs, multinomial) minimises

    (1 / 2) |W|^2 + C sum_i -log softmax(W z_i + b)_{y_i}

on the training split. The C with the highest validation accuracy is kept (equal accuracies: the smaller C,
the stronger regularisation); its model is not refitted, so the recorded validation accuracy is the kept
model's. The scaler is folded into the head exactly: W' = W / sigma, b' = b - W' mu, so logits = W' x + b'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError

DEFAULT_CS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class ProbeSettings:
    """``--set probe.KEY=VALUE``."""

    Cs: list[float] = field(default_factory=lambda: list(DEFAULT_CS))  # inverse regularisation strengths tried
    max_iter: int = 1000  # lbfgs iterations per C
    standardize: bool = True  # z-score the features with the training split's statistics (folded into the head)

    def __post_init__(self):
        if not self.Cs or any(not c > 0 for c in self.Cs):
            raise ConfigError(f"probe.Cs must be a non-empty list of numbers above 0, got {self.Cs}")
        if self.max_iter < 1:
            raise ConfigError(f"probe.max_iter must be 1 or more, got {self.max_iter}")
        self.Cs = sorted(float(c) for c in self.Cs)


@dataclass
class Probe:
    """The kept probe as a linear head on the raw features: logits = features @ weight.T + bias."""

    weight: torch.Tensor  # (classes, F) float32
    bias: torch.Tensor  # (classes,)
    C: float
    grid: list[dict]  # [{"C", "val_accuracy", "train_accuracy", "iterations"}] in grid order
    classifier: object  # the fitted LogisticRegression (on standardised features)
    mean: np.ndarray  # (F,) the scaler's statistics (0 and 1 without standardisation)
    scale: np.ndarray


def standardizer(train: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    if not enabled:
        return np.zeros(train.shape[1]), np.ones(train.shape[1])
    mean, scale = train.mean(axis=0), train.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              settings: ProbeSettings, num_classes: int) -> Probe:
    """Fit one classifier per C on the training split and keep the best on the validation split."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    missing = sorted(set(range(num_classes)) - set(train_y.tolist()))
    if missing:
        raise ConfigError(f"the training split has no image of class {missing[0]} (of {num_classes}), so a "
                          "linear probe cannot learn it")
    x, y = train_x.double().numpy(), train_y.numpy()
    mean, scale = standardizer(x, settings.standardize)
    z, zv = (x - mean) / scale, (val_x.double().numpy() - mean) / scale
    grid, best = [], None
    for C in settings.Cs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = LogisticRegression(C=C, max_iter=settings.max_iter, solver="lbfgs").fit(z, y)
        row = {"C": C, "val_accuracy": float((clf.predict(zv) == val_y.numpy()).mean()),
               "train_accuracy": float((clf.predict(z) == y).mean()), "iterations": int(np.max(clf.n_iter_)),
               "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught)}
        grid.append(row)
        if best is None or row["val_accuracy"] > best[0]["val_accuracy"]:
            best = (row, clf)
    row, clf = best
    weight, bias = fold(clf.coef_, clf.intercept_, mean, scale)
    return Probe(weight, bias, row["C"], grid, clf, mean, scale)


def fold(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray):
    """The head on raw features of a classifier on standardised ones: W' = W / sigma, b' = b - W' mu."""
    if coef.shape[0] == 1:  # scikit-learn's binary case: one row for class 1; as two classes' logits
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    w = coef / scale  # (classes, F)
    b = intercept - w @ mean  # (classes,)
    return torch.from_numpy(w).float(), torch.from_numpy(b).float()


def logits(probe: Probe, features: torch.Tensor) -> torch.Tensor:
    """(N, classes) float32, as the head of the probe's checkpoint computes them."""
    return torch.nn.functional.linear(features.float(), probe.weight, probe.bias)
