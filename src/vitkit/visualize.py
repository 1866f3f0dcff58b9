"""Look inside a ViT: attention weights, relative position bias, patches, attention on the image, and a
training run's curves, confusion matrix and mistakes; also the ``vitkit visualize`` command.

Every plotting function returns a matplotlib ``Figure`` and writes it when given ``save_path``. Figures are
built with ``matplotlib.figure.Figure`` on an Agg canvas, never through ``pyplot``: nothing opens a window,
nothing is kept alive in pyplot's global figure list, and matplotlib is imported only when a plot is drawn
(``import vitkit`` does not import it).

Tensors are accepted as they come out of the model: attention (N, N), (H, N, N) or (B, H, N, N), a bias
(H, N, N), a bias table (num_positions, H); torch tensors or NumPy arrays.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------------------------
# Figures


def new_figure(width: float, height: float):
    """A Figure on an Agg canvas (no pyplot, no window), sized in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, save_path: str | Path | None, dpi: int = 110):
    """Write ``fig`` to ``save_path`` (format from the suffix) when a path is given; return the figure."""
    if save_path is not None:
        path = Path(save_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, facecolor="white")
    return fig


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    """(rows, cols) of a grid of ``n`` panels: as few rows as ``max_cols`` columns allow, evenly filled."""
    rows = math.ceil(n / max_cols)
    return rows, math.ceil(n / rows)


def _subplots(fig, n: int, max_cols: int = 4):
    """``n`` axes in a grid; the unused cells of the last row are hidden."""
    rows, cols = _grid(n, max_cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def _numpy(x) -> np.ndarray:
    """A torch tensor or array-like as a float NumPy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _heads(x, name: str, batch_index: int = 0, head: int | None = None) -> np.ndarray:
    """(N, N), (H, N, N) or (B, H, N, N) -> (H', N, N): the chosen batch item, all heads or just ``head``."""
    a = _numpy(x)
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
    rows, cols = _grid(n, 4)
    fig = new_figure(3.2 * cols + 0.8, 3.0 * rows + 0.5)
    axes = _subplots(fig, n)
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
    t = _numpy(bias_table)
    if t.ndim != 2:
        raise ValueError(f"bias_table must be (num_positions, num_heads), got shape {tuple(t.shape)}")
    num_extra = 3 if num_prefix_tokens else 0
    num_grid = t.shape[0] - num_extra
    if window_size is not None:
        h, w = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
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
    rows, cols = _grid(len(heads), 4)
    fig = new_figure(3.2 * cols + 0.8, (1.4 if strip else 3.0) * rows + 0.6)
    axes = _subplots(fig, len(heads))
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


# --------------------------------------------------------------------------------------------------------------
# Images and patches


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


def _imshow(ax, img: np.ndarray, **kwargs):
    """Show a display image (grey ones in grey) without ticks."""
    im = ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def image_patches(image: np.ndarray, patch_size: int | tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut a display image (H, W[, C]) into patches in the model's sequence order (row by row, as the patch
    embedding's ``flatten(2)`` orders them): ``(patches (N, p, q[, C]), (gh, gw))``."""
    p, q = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    h, w = image.shape[:2]
    if h % p or w % q:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}x{q}")
    gh, gw = h // p, w // q
    rest = image.shape[2:]
    x = image.reshape(gh, p, gw, q, *rest)  # (gh, p, gw, q[, C])
    x = np.moveaxis(x, 2, 1)  # (gh, gw, p, q[, C])
    return x.reshape(gh * gw, p, q, *rest), (gh, gw)  # (N, p, q[, C])


def exploded_patches(image: np.ndarray, patch_size, gap: int | None = None) -> tuple[np.ndarray, int]:
    """The image with a white ``gap`` between its patches, so each patch reads as one token:
    ``(canvas (gh*(p+gap)-gap, gw*(q+gap)-gap[, C]), gap)``."""
    patches, (gh, gw) = image_patches(image, patch_size)
    n, p, q = patches.shape[:3]
    gap = max(1, min(p, q) // 8) if gap is None else gap
    canvas = np.ones((gh * (p + gap) - gap, gw * (q + gap) - gap) + patches.shape[3:])
    for k in range(n):
        r, c = divmod(k, gw)  # patch k of the sequence sits at row r, column c
        canvas[r * (p + gap): r * (p + gap) + p, c * (q + gap): c * (q + gap) + q] = patches[k]
    return canvas, gap


def visualize_patches(image, patch_size: int | tuple[int, int], save_path=None, title: str = "Image patches",
                      mean=None, std=None, numbers: bool = True):
    """Seed 004's patch view: the image with its patch grid, and the patches pulled apart and numbered in the
    order the model reads them (0 is the first patch token, after the [CLS] and register tokens).

    ``image`` is anything :func:`to_display` takes; its size must be a multiple of ``patch_size``.
    """
    img = to_display(image, mean, std)
    canvas, gap = exploded_patches(img, patch_size)
    p, q = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    gh, gw = img.shape[0] // p, img.shape[1] // q
    fig = new_figure(9.5, 4.8 * max(0.6, img.shape[0] / img.shape[1]))
    ax_img, ax_patch = fig.subplots(1, 2)
    _imshow(ax_img, img)
    for r in range(1, gh):
        ax_img.axhline(r * p - 0.5, color="white", lw=0.8)
    for c in range(1, gw):
        ax_img.axvline(c * q - 0.5, color="white", lw=0.8)
    ax_img.set_title(f"{img.shape[0]}x{img.shape[1]} image, {p}x{q} patches")
    _imshow(ax_patch, canvas)
    ax_patch.set_title(f"{gh * gw} patch tokens in sequence order")
    if numbers:
        size = max(4.0, min(11.0, 160.0 / max(gh, gw)))
        for k in range(gh * gw):
            r, c = divmod(k, gw)
            ax_patch.text(c * (q + gap) + (q - 1) / 2, r * (p + gap) + (p - 1) / 2, str(k), ha="center",
                          va="center", fontsize=size, color="white", fontweight="bold",
                          bbox=dict(boxstyle="round,pad=0.15", fc="black", ec="none", alpha=0.55))
    fig.suptitle(title)
    return save_figure(fig, save_path)


# --------------------------------------------------------------------------------------------------------------
# Attention on the image


def _batch(x: torch.Tensor) -> torch.Tensor:
    return x[None] if x.ndim == 3 else x  # (C, H, W) -> (1, C, H, W)


@torch.no_grad()
def cls_attention_maps(model, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """How much the [CLS] token attends to each patch in one layer (default the last), per head:
    (B, heads, gh, gw), each head's map summing to at most 1 (the rest goes to prefix tokens).

    A model without a [CLS] token (mean pooling) has no such query; then the mean over all patch queries is
    used, i.e. how much attention each patch receives on average.
    """
    x = _batch(x)
    gh, gw = model.patch_embed.grid_for(*x.shape[-2:])
    p = model.num_prefix_tokens
    attn = model.get_attention_maps(x, layers=[layer])  # {layer: (B, H, T, T)}
    a = next(iter(attn.values()))
    if getattr(model, "cls_token", None) is not None:
        rows = a[:, :, 0, p:]  # (B, H, N): query [CLS], keys = patches
    else:
        rows = a[:, :, p:, p:].mean(dim=2)  # (B, H, N)
    return rows.reshape(rows.shape[0], rows.shape[1], gh, gw)  # (B, H, gh, gw)


def attention_rollout(attentions, head_fusion: str = "mean", residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each input token flows into each output token.

    ``attentions`` is the per-layer attention in layer order: a dict {layer: (B, H, T, T)} (as
    ``model.get_attention_maps`` returns), a list of such tensors, or one (L, B, H, T, T) tensor. Heads are
    fused (``"mean"``, ``"max"`` or ``"min"``); with ``residual`` each layer's matrix becomes
    0.5 A + 0.5 I (the skip connection) with rows renormalised, and the layers are multiplied:
    R = A_L ... A_2 A_1, (B, T, T). Row 0 of R, over the patch columns, is the [CLS] token's rollout map.
    """
    if isinstance(attentions, Mapping):
        layers = [attentions[k] for k in sorted(attentions)]
    else:
        layers = list(attentions)
    if not layers:
        raise ValueError("attention_rollout needs the attention of at least one layer")
    fuse = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1), "min": lambda a: a.amin(dim=1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {', '.join(fuse)}, got {head_fusion!r}")
    rollout = None
    for a in layers:
        a = torch.as_tensor(a).double()
        a = fuse[head_fusion](a[None] if a.ndim == 3 else a)  # (B, T, T)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)  # rows are distributions again
        rollout = a if rollout is None else a @ rollout  # (B, T, T)
    return rollout.float()


@torch.no_grad()
def rollout_maps(model, x: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """The [CLS] token's attention rollout over the patches, (B, gh, gw), each map renormalised to sum 1
    (for a model without [CLS], the mean over patch queries)."""
    x = _batch(x)
    gh, gw = model.patch_embed.grid_for(*x.shape[-2:])
    p = model.num_prefix_tokens
    r = attention_rollout(model.get_attention_maps(x), head_fusion)  # (B, T, T)
    rows = r[:, 0, p:] if getattr(model, "cls_token", None) is not None else r[:, p:, p:].mean(dim=1)  # (B, N)
    rows = rows / rows.sum(dim=-1, keepdim=True)
    return rows.reshape(-1, gh, gw)  # (B, gh, gw)


def upsample_map(m, size: tuple[int, int]) -> np.ndarray:
    """A (gh, gw) patch map bilinearly resized to the image's (H, W), each patch's value at its centre."""
    t = torch.as_tensor(_numpy(m), dtype=torch.float32)[None, None]  # (1, 1, gh, gw)
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()  # (H, W)


def _overlay(ax, img: np.ndarray, heat: np.ndarray, title: str, cmap: str = "inferno", alpha: float = 0.6):
    """The image in grey with a heat map (min-max scaled to [0, 1]) over it."""
    grey = img if img.ndim == 2 else img.mean(axis=-1)
    _imshow(ax, grey)
    up = upsample_map(heat, img.shape[:2])  # (H, W)
    up = (up - up.min()) / (up.max() - up.min() + 1e-12)
    ax.imshow(up, cmap=cmap, alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_title(title, fontsize=9)


def visualize_attention_on_image(model, x: torch.Tensor, save_path=None, mean=None, std=None, layer: int = -1,
                                 title: str | None = None, class_names: Sequence[str] | None = None,
                                 show_heads: bool = True):
    """One image with its attention: the input, the [CLS] rollout over all layers, and the [CLS] attention
    of each head of ``layer`` (default the last), each upsampled to the image and laid over it.

    ``x`` is the normalised input (C, H, W) or (1, C, H, W) of any size the model takes; ``mean``/``std``
    undo the normalisation for display. With ``class_names`` the title names the predicted class.
    """
    x = _batch(x)[:1]
    img = to_display(x[0], mean, std)
    heads = cls_attention_maps(model, x, layer)[0]  # (H, gh, gw)
    roll = rollout_maps(model, x)[0]  # (gh, gw)
    panels = [("input", None), ("rollout (all layers)", roll.numpy())]
    depth = len(model.blocks)
    name = f"layer {layer % depth}"
    if show_heads:
        panels += [(f"{name}, head {h}", heads[h].numpy()) for h in range(len(heads))]
    else:
        panels += [(f"{name}, mean of heads", heads.mean(0).numpy())]
    rows, cols = _grid(len(panels), 6)
    aspect = img.shape[0] / img.shape[1]
    fig = new_figure(2.2 * cols, 2.2 * aspect * rows + 0.6)
    axes = _subplots(fig, len(panels), 6)
    for ax, (label, heat) in zip(axes, panels):
        if heat is None:
            _imshow(ax, img)
            ax.set_title(label, fontsize=9)
        else:
            _overlay(ax, img, heat, label)
    if title is None:
        title = "Attention of the [CLS] token" if getattr(model, "cls_token", None) is not None \
            else "Attention received by each patch"
        if class_names is not None and getattr(model, "num_classes", 0):
            with torch.no_grad():
                probs = model(x).softmax(-1)[0]
            k = int(probs.argmax())
            title += f" — predicted {class_names[k]} ({probs[k]:.0%})"
    fig.suptitle(title)
    return save_figure(fig, save_path)


def visualize_attention_grid(model, images: torch.Tensor, save_path=None, mean=None, std=None,
                             labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                             title: str = "Where the model looks", per_row: int = 2):
    """A few images, ``per_row`` to a row, each as three panels: the input (captioned with the true and
    predicted class when known), the [CLS] rollout, and the last layer's [CLS] attention (mean of heads)."""
    x = _batch(images)
    rolls = rollout_maps(model, x).cpu()  # (B, gh, gw)
    last = cls_attention_maps(model, x, -1).mean(dim=1).cpu()  # (B, gh, gw)
    with torch.no_grad():
        probs = model(x).softmax(-1).cpu() if getattr(model, "num_classes", 0) else None  # (B, classes)
    n = x.shape[0]
    query = "[CLS]" if getattr(model, "cls_token", None) is not None else "patches"
    per_row = max(1, min(per_row, n))
    rows = math.ceil(n / per_row)
    aspect = x.shape[-2] / x.shape[-1]
    fig = new_figure(2.2 * 3 * per_row, 2.5 * aspect * rows + 0.3)
    axes = fig.subplots(rows, 3 * per_row, squeeze=False)
    for ax in axes.ravel()[3 * n:]:
        ax.set_visible(False)
    for i in range(n):
        a = axes[i // per_row, 3 * (i % per_row):]
        img = to_display(x[i], mean, std)
        caption = "input"
        if probs is not None and class_names is not None:
            k = int(probs[i].argmax())
            caption = f"pred {class_names[k]} ({probs[i, k]:.0%})"
            if labels is not None:
                caption = f"true {class_names[int(labels[i])]}\n" + caption
        _imshow(a[0], img)
        a[0].set_title(caption, fontsize=9)
        _overlay(a[1], img, rolls[i].numpy(), "rollout\n(all layers)")
        _overlay(a[2], img, last[i].numpy(), f"last layer {query}\n(mean of heads)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, save_path)


# --------------------------------------------------------------------------------------------------------------
# Runs: curves, predictions, confusion matrix, mistakes


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
    groups = [(name, keys) for name, keys in groups if keys and any(np.isfinite(cols[k]).any() for k in keys)]
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
    probs = _numpy(probs)
    labels = np.asarray(labels)
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    order = np.argsort(-probs[wrong, preds[wrong]], kind="stable")
    return wrong[order[:k]]


def plot_image_grid(images, titles: Sequence[str], captions: Sequence[str] = (), save_path=None, title: str = "",
                    mean=None, std=None, max_cols: int = 4):
    """Images (N, C, H, W) in a grid, each with a title above (green) and a caption below (red)."""
    n = len(images)
    rows, cols = _grid(n, max_cols)
    fig = new_figure(1.9 * cols, 2.25 * rows + 0.4)
    axes = _subplots(fig, n, max_cols)
    for i, ax in enumerate(axes):
        _imshow(ax, to_display(images[i], mean, std))
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
    probs = _numpy(probs)
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


# --------------------------------------------------------------------------------------------------------------
# vitkit visualize


def visualize_image(checkpoint: str | Path, image: str | Path, out_dir: str | Path, layer: int = -1) -> list[Path]:
    """``vitkit visualize --checkpoint --image``: attention.png (per-head [CLS] attention of ``layer``),
    rollout.png (the input next to the rollout), patches.png, and for a model with a relative position
    bias, bias.png and bias_table.png (of ``layer``). The image is preprocessed as the checkpoint's run
    validated its images. Returns the paths written."""
    from .predictor import Predictor

    predictor = Predictor.load(checkpoint)
    model, preprocess = predictor.model, predictor.preprocess
    depth = len(model.blocks)
    if not -depth <= layer < depth:
        raise ConfigError(f"--layer {layer} does not exist; the model has layers 0..{depth - 1}")
    x = preprocess(image)[None]  # (1, C, H, W)
    mean, std = np.asarray(preprocess.mean), np.asarray(preprocess.std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig = visualize_attention_on_image(model, x, mean=mean, std=std, layer=layer, class_names=predictor.classes)
    written.append(_save(fig, out / "attention.png"))
    img = to_display(x[0], mean, std)
    roll = rollout_maps(model, x)[0]  # (gh, gw)
    fig = new_figure(6.4, 3.4 * img.shape[0] / img.shape[1] + 0.5)
    a, b = fig.subplots(1, 2)
    _imshow(a, img)
    a.set_title("input")
    _overlay(b, img, roll.numpy(), "attention rollout, [CLS] over all layers")
    fig.suptitle("Attention rollout (Abnar & Zuidema 2020)")
    written.append(_save(fig, out / "rollout.png"))
    fig = visualize_patches(x[0], model.patch_embed.patch_size, mean=mean, std=std)
    written.append(_save(fig, out / "patches.png"))
    rpb = model.blocks[layer].attn.relative_position_bias
    if rpb is not None:
        i = layer % len(model.blocks)
        written.append(_save(visualize_relative_position_bias(rpb, title=f"Relative position bias, layer {i}"),
                             out / "bias.png"))
        written.append(_save(visualize_bias_table(rpb, title=f"Bias table, layer {i}"), out / "bias_table.png"))
    return written


def run_predictions(run_dir, device="cpu"):
    """(predictor, eval set, predictions) of a run folder's best checkpoint on the split it scored last (test,
    else val), from its ``predictions/<split>.csv``; a run without one is scored once now (said on stderr)."""
    from .predictor import Predictor
    from .runs import Run

    run = Run(run_dir)
    if not run.path.is_dir():
        raise DataError(f"run folder {run.path} does not exist")
    predictor = Predictor.load(run.path, device)
    split = next((s for s in ("test", "val") if run.predictions_path(s).is_file()), None)
    eval_set, _ = predictor.eval_set(split)
    predictions = run.read_predictions(eval_set.split, predictor.classes)
    if predictions is None:
        from .train.loop import evaluate
        print(f"vitkit visualize: {run.path} has no predictions file; scoring its {eval_set.split} split now",
              file=sys.stderr)
        predictions = evaluate(predictor.model, eval_set.loader, torch.nn.CrossEntropyLoss(), predictor.device)[
            "predictions"]
    return predictor, eval_set, predictions


def visualize_run(run_dir: str | Path, out_dir: str | Path | None = None, device="cpu") -> list[Path]:
    """``vitkit visualize --run``: curves.png from metrics.csv, and confusion.png and mistakes.png of the best
    checkpoint on the split the run scored last (see :func:`run_predictions`). Returns the paths written."""
    from .runs import Run

    run = Run(run_dir)
    if not run.path.is_dir():
        raise DataError(f"run folder {run.path} does not exist")
    out = Path(out_dir) if out_dir is not None else run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if run.metrics_path.is_file():
        written.append(_save(plot_training_curves(run.metrics_path), out / "curves.png"))
    predictor, eval_set, predictions = run_predictions(run.path, device)
    cm = confusion_matrix(predictions["label"].numpy(), predictions["pred"].numpy(), len(predictor.classes))
    written.append(_save(plot_confusion_matrix(cm, predictor.classes), out / "confusion.png"))
    written.append(_save(mistakes_figure(eval_set, predictions, title="Most confident mistakes"), out / "mistakes.png"))
    return written


def _save(fig, path: Path) -> Path:
    save_figure(fig, path)
    return path


def cli_main(argv: Iterable[str] | None = None) -> int:
    """``vitkit visualize``: attention, rollout and patch views of one image, or a run's plots."""
    parser = argparse.ArgumentParser(
        prog="vitkit visualize",
        description="Write attention, rollout and patch views of one image (--checkpoint and --image), or the "
                    "training curves, confusion matrix and mistakes of a run (--run).")
    parser.add_argument("--checkpoint", help="weights file, 'RUN/checkpoints/best' or a run folder")
    parser.add_argument("--image", help="image file to look at (with --checkpoint)")
    parser.add_argument("--run", help="run folder written by 'vitkit train'")
    parser.add_argument("--out", help="output folder (default: 'visualize' here for --image, RUN/plots for --run)")
    parser.add_argument("--layer", type=int, default=-1, help="layer of the per-head attention (default: last)")
    parser.add_argument("--report", action="store_true", help="with --run, also rewrite RUN/report.html")
    parser.add_argument("--device", default="cpu", help="device to evaluate on (default: cpu)")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.run and (args.checkpoint or args.image):
        parser.error("give either --run, or --checkpoint with --image, not both")
    if args.run:
        written = visualize_run(args.run, args.out, device=args.device)
        if args.report:
            from .report import write_report

            predictor, eval_set, predictions = run_predictions(args.run, args.device)
            written.append(write_report(args.run, predictor.model, eval_set, predictions, device=args.device))
    elif args.checkpoint and args.image:
        written = visualize_image(args.checkpoint, args.image, args.out or "visualize", args.layer)
    else:
        parser.error("give --run RUN_DIR, or --checkpoint CKPT with --image PATH")
    for path in written:
        print(path)
    return 0
