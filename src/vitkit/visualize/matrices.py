"""Matrices as heat maps: attention weights per head, the relative position bias, and its learned table."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..geometry import pair

from .canvas import as_numpy, grid_shape, new_figure, save_figure, subplots


def _heads(x, name: str, batch_index: int = 0, head: int | None = None) -> np.ndarray:
    """(N, N), (H, N, N) or (B, H, N, N) -> (H', N, N): the chosen batch item, all heads or just ``head``."""
    a = as_numpy(x)
    if a.ndim == 4:
        if not -a.shape[0] <= batch_index < a.shape[0]:
            raise ValueError(f"batch_index {batch_index} is out of range for a batch of {a.shape[0]}")
        a = a[batch_index]  # (H, N, N)
    elif a.ndim == 2:
        a = a[None]  # (1, N, N)
    elif a.ndim != 3:
        raise ValueError(f"{name} must be (N, N), (H, N, N) or (B, H, N, N), got shape {tuple(a.shape)}")
    if head is not None:
        if not -a.shape[0] <= head < a.shape[0]:
            raise ValueError(f"head {head} does not exist; there are {a.shape[0]} heads")
        a = a[[head]]  # (1, N, N)
    return a

def _matrix_figure(mats: np.ndarray, title: str, cmap: str, symmetric: bool, labels: Sequence[str]):
    """One heat map per (N, N) matrix of ``mats`` (H, N, N), sharing one colour scale and a colour bar."""
    n = len(mats)
    rows, cols = grid_shape(n, 4)
    fig = new_figure(3.2 * cols + 0.8, 3.0 * rows + 0.5)
    axes = subplots(fig, n)
    if symmetric:  # a diverging map centred on zero: positive and negative biases read alike
        lim = float(np.abs(mats).max()) or 1.0
        vmin, vmax = -lim, lim
    else:
        vmin, vmax = float(mats.min()), float(mats.max())
    im = None
    for ax, m, label in zip(axes, mats, labels):
        im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(title)
    return fig

def visualize_attention_weights(attn_weights, save_path=None, title: str = "Attention Weights",
                                cmap: str = "viridis", batch_index: int = 0, head: int | None = None):
    """Heat maps of attention weights (query rows, key columns): one subplot per head.

    ``attn_weights`` is (N, N), (H, N, N) or (B, H, N, N) (as ``model.get_attention_maps`` gives); of a batch,
    item ``batch_index`` is shown; ``head`` picks one head instead of all.
    """
    mats = _heads(attn_weights, "attn_weights", batch_index, head)  # (H', N, N)
    labels = _head_labels(mats, head)
    return save_figure(_matrix_figure(mats, title, cmap, symmetric=False, labels=labels), save_path)

def visualize_relative_position_bias(bias, save_path=None, title: str = "Relative Position Bias",
                                     cmap: str = "coolwarm", head: int | None = None):
    """Heat maps of the bias added to the attention logits, one per head, coloured symmetrically about zero.

    ``bias`` is (N, N) or (H, N, N), or a ``RelativePositionBias`` module (whose ``forward()`` gives it).
    """
    if isinstance(bias, torch.nn.Module):
        with torch.no_grad():
            bias = bias()  # (H, N, N)
    mats = _heads(bias, "bias", 0, head)  # (H', N, N)
    labels = _head_labels(mats, head)
    return save_figure(_matrix_figure(mats, title, cmap, symmetric=True, labels=labels), save_path)

def _head_labels(mats: np.ndarray, head: int | None) -> list[str]:
    if head is not None:
        return [f"head {head}"]
    return [f"head {h}" for h in range(len(mats))] if len(mats) > 1 else [""]

def bias_table_views(bias_table, window_size: tuple[int, int] | None = None,
                     num_prefix_tokens: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split a (num_positions, H) table into what each head's panel shows: ``(grids, extra)``.

    With a 2-d ``window_size`` (h, w) the first (2h-1)(2w-1) rows are offsets (dy, dx) laid out as
    grids (H, 2h-1, 2w-1), row-major as ``get_relative_position_index_2d`` numbers them (dy = -(h-1) at the
    top, dx = -(w-1) at the left); without one, each head is a strip (H, 1, num_grid). ``extra`` (H, 3) holds
    the entries of prefix tokens (prefix->patch, patch->prefix, prefix->prefix) when ``num_prefix_tokens``.
    """
    t = as_numpy(bias_table)
    if t.ndim != 2:
        raise ValueError(f"bias_table must be (num_positions, num_heads), got shape {tuple(t.shape)}")
    num_extra = 3 if num_prefix_tokens else 0
    num_grid = t.shape[0] - num_extra
    if window_size is not None:
        h, w = pair(window_size, "window_size")
        if (2 * h - 1) * (2 * w - 1) != num_grid:
            raise ValueError(f"a window of {h}x{w} has {(2 * h - 1) * (2 * w - 1)} offsets but the table has "
                             f"{num_grid} (+{num_extra} prefix) rows")
        grids = t[:num_grid].T.reshape(t.shape[1], 2 * h - 1, 2 * w - 1)  # (H, 2h-1, 2w-1)
    else:
        grids = t[:num_grid].T[:, None, :]  # (H, 1, num_grid)
    return grids, t[num_grid:].T  # (H, ...), (H, num_extra)

def visualize_bias_table(bias_table, save_path=None, title: str = "Bias Table", head: int | None = None,
                         window_size: tuple[int, int] | None = None, num_prefix_tokens: int = 0,
                         cmap: str = "coolwarm"):
    """The learned relative-position bias table, one panel per head.

    ``bias_table`` is (num_positions, H) or a ``RelativePositionBias`` module (its window and prefix tokens
    are then read from it). For a 2-d bias each panel is the grid of offsets (dy, dx) with (0, 0) in the
    centre, so a head that prefers near neighbours shows a bright centre; a 1-d bias (or a table given
    without ``window_size``) is a strip of offsets. Prefix-token entries are printed under each panel.
    """
    if isinstance(bias_table, torch.nn.Module):
        module = bias_table
        bias_table = module.relative_position_bias_table
        window_size = window_size or module.window_size
        num_prefix_tokens = num_prefix_tokens or module.num_prefix_tokens
    from matplotlib.ticker import MaxNLocator

    grids, extra = bias_table_views(bias_table, window_size, num_prefix_tokens)  # (H, a, b), (H, 3 or 0)
    heads = list(range(len(grids))) if head is None else [head % len(grids)]
    strip = grids.shape[1] == 1
    rows, cols = grid_shape(len(heads), 4)
    fig = new_figure(3.2 * cols + 0.8, (1.4 if strip else 3.0) * rows + 0.6)
    axes = subplots(fig, len(heads))
    lim = float(np.abs(grids).max()) or 1.0
    im = None
    for ax, h in zip(axes, heads):
        g = grids[h]
        if strip:
            n = g.shape[1]
            extent = (-(n // 2) - 0.5, n - n // 2 - 0.5, 0.5, -0.5)  # x = offset i - j
            im = ax.imshow(g, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto", extent=extent,
                           interpolation="nearest")
            ax.set_yticks([])
            ax.set_xlabel("offset")
        else:
            dy, dx = (g.shape[0] - 1) // 2, (g.shape[1] - 1) // 2
            im = ax.imshow(g, cmap=cmap, vmin=-lim, vmax=lim, extent=(-dx - 0.5, dx + 0.5, dy + 0.5, -dy - 0.5),
                           interpolation="nearest")
            ax.set_xlabel("dx")
            ax.set_ylabel("dy")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"head {h}", fontsize=10)
        if extra.shape[1]:
            e = extra[h]
            ax.set_xlabel(f"{ax.get_xlabel()}\ncls→patch {e[0]:+.3f}  patch→cls {e[1]:+.3f}  cls→cls {e[2]:+.3f}",
                          fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(title)
    return save_figure(fig, save_path)
