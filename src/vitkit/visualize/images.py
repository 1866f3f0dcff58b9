"""Images: the patches a ViT reads, and where it looks (attention rollout and [CLS] attention laid over the
image)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import pair

from ..attention_maps import read_attention
from .canvas import as_numpy, grid_shape, imshow, new_figure, save_figure, subplots, to_display


def image_patches(image: np.ndarray, patch_size: int | tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut a display image (H, W[, C]) into patches in the model's sequence order (row by row, as the patch
    embedding's ``flatten(2)`` orders them): ``(patches (N, p, q[, C]), (gh, gw))``."""
    p, q = pair(patch_size, "patch_size")
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
    """The patch view: the image with its patch grid, and the patches pulled apart and numbered in the
    order the model reads them (0 is the first patch token, after the [CLS] and register tokens).

    ``image`` is anything :func:`to_display` takes; its size must be a multiple of ``patch_size``.
    """
    img = to_display(image, mean, std)
    canvas, gap = exploded_patches(img, patch_size)
    p, q = pair(patch_size, "patch_size")
    gh, gw = img.shape[0] // p, img.shape[1] // q
    fig = new_figure(9.5, 4.8 * max(0.6, img.shape[0] / img.shape[1]))
    ax_img, ax_patch = fig.subplots(1, 2)
    imshow(ax_img, img)
    for r in range(1, gh):
        ax_img.axhline(r * p - 0.5, color="white", lw=0.8)
    for c in range(1, gw):
        ax_img.axvline(c * q - 0.5, color="white", lw=0.8)
    ax_img.set_title(f"{img.shape[0]}x{img.shape[1]} image, {p}x{q} patches")
    imshow(ax_patch, canvas)
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

def upsample_map(m, size: tuple[int, int]) -> np.ndarray:
    """A (gh, gw) patch map bilinearly resized to the image's (H, W), each patch's value at its centre."""
    t = torch.as_tensor(as_numpy(m), dtype=torch.float32)[None, None]  # (1, 1, gh, gw)
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()  # (H, W)

def overlay(ax, img: np.ndarray, heat: np.ndarray, title: str, cmap: str = "inferno", alpha: float = 0.6):
    """The image in grey with a heat map (min-max scaled to [0, 1]) over it."""
    grey = img if img.ndim == 2 else img.mean(axis=-1)
    imshow(ax, grey)
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
    x = (x[None] if x.ndim == 3 else x)[:1]  # (1, C, H, W)
    img = to_display(x[0], mean, std)
    seen = read_attention(model, x)  # one pass: logits, rollout and every layer's [CLS] attention
    heads = seen.layers[layer % len(model.blocks)][0]  # (H, gh, gw)
    roll = seen.rollout[0]  # (gh, gw)
    panels = [("input", None), ("rollout (all layers)", roll.numpy())]
    depth = len(model.blocks)
    name = f"layer {layer % depth}"
    if show_heads:
        panels += [(f"{name}, head {h}", heads[h].numpy()) for h in range(len(heads))]
    else:
        panels += [(f"{name}, mean of heads", heads.mean(0).numpy())]
    rows, cols = grid_shape(len(panels), 6)
    aspect = img.shape[0] / img.shape[1]
    fig = new_figure(2.2 * cols, 2.2 * aspect * rows + 0.6)
    axes = subplots(fig, len(panels), 6)
    for ax, (label, heat) in zip(axes, panels):
        if heat is None:
            imshow(ax, img)
            ax.set_title(label, fontsize=9)
        else:
            overlay(ax, img, heat, label)
    if title is None:
        title = "Attention of the [CLS] token" if getattr(model, "cls_token", None) is not None \
            else "Attention received by each patch"
        if class_names is not None and getattr(model, "num_classes", 0):
            probs = seen.logits.softmax(-1)[0]
            k = int(probs.argmax())
            title += f" — predicted {class_names[k]} ({probs[k]:.0%})"
    fig.suptitle(title)
    return save_figure(fig, save_path)

def visualize_attention_grid(model, images: torch.Tensor, save_path=None, mean=None, std=None,
                             labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                             title: str = "Where the model looks", per_row: int = 2):
    """A few images, ``per_row`` to a row, each as three panels: the input (captioned with the true and
    predicted class when known), the [CLS] rollout, and the last layer's [CLS] attention (mean of heads)."""
    x = images[None] if images.ndim == 3 else images  # (B, C, H, W)
    seen = read_attention(model, x)  # one pass
    rolls = seen.rollout.cpu()  # (B, gh, gw)
    last = seen.layers[len(model.blocks) - 1].mean(dim=1).cpu()  # (B, gh, gw)
    probs = seen.logits.softmax(-1).cpu() if getattr(model, "num_classes", 0) else None  # (B, classes)
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
        imshow(a[0], img)
        a[0].set_title(caption, fontsize=9)
        overlay(a[1], img, rolls[i].numpy(), "rollout\n(all layers)")
        overlay(a[2], img, last[i].numpy(), f"last layer {query}\n(mean of heads)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, save_path)
