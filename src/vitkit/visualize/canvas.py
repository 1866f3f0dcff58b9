"""Figure plumbing shared by every plot: a Figure on an Agg canvas (no pyplot, no window), saving, grids of
axes, and images ready for ``imshow``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..fileio import atomic_path


def new_figure(width: float, height: float):
    """A Figure on an Agg canvas (no pyplot, no window), sized in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig

def save_figure(fig, save_path: str | Path | None, dpi: int = 110):
    """Write ``fig`` to ``save_path`` (format from the suffix) atomically when a path is given (a full disk
    leaves an earlier file of that name as it was); return the figure."""
    if save_path is not None:
        path = Path(save_path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:] or "png", dpi=dpi, facecolor="white")
    return fig

def grid_shape(n: int, max_cols: int) -> tuple[int, int]:
    """(rows, cols) of a grid of ``n`` panels: as few rows as ``max_cols`` columns allow, evenly filled."""
    rows = math.ceil(n / max_cols)
    return rows, math.ceil(n / rows)

def subplots(fig, n: int, max_cols: int = 4):
    """``n`` axes in a grid; the unused cells of the last row are hidden."""
    rows, cols = grid_shape(n, max_cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])

def as_numpy(x) -> np.ndarray:
    """A torch tensor or array-like as a float NumPy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)

def to_display(image, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """An image as a float array in [0, 1] ready for ``imshow``: (H, W) for grey, (H, W, 3) for colour.

    Accepts a (C, H, W) tensor or array (uint8, or float normalised with ``mean``/``std``, which are undone),
    an (H, W) or (H, W, C) array, or a PIL image. Float images outside [0, 1] without ``mean``/``std`` are
    rescaled to their own range.
    """
    if isinstance(image, torch.Tensor):  # vitkit's convention: (C, H, W) or (1, C, H, W)
        a = image.detach().cpu().numpy()
        a = a[0] if a.ndim == 4 else a
        a = a.transpose(1, 2, 0) if a.ndim == 3 else a  # (C, H, W) -> (H, W, C)
    else:  # NumPy or PIL: (H, W, C) unless the first axis is clearly channels
        a = np.asarray(image)
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
            a = a.transpose(1, 2, 0)
        if a.ndim == 3 and a.shape[-1] == 4:
            a = a[..., :3]  # drop alpha
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an image (C, H, W), (H, W, C) or (H, W), got shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        a = a.astype(np.float64) / 255.0
    else:
        a = a.astype(np.float64)
        if mean is not None and std is not None:
            a = a * np.asarray(std, dtype=np.float64) + np.asarray(mean, dtype=np.float64)
        elif a.min() < 0 or a.max() > 1:
            a = (a - a.min()) / (a.max() - a.min() + 1e-12)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]  # (H, W)
    return np.clip(a, 0.0, 1.0)

def imshow(ax, img: np.ndarray, **kwargs):
    """Show a display image (grey ones in grey) without ticks."""
    im = ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    return im
