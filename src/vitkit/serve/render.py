"""Attention as pictures: the image as the model saw it, a patch map laid over it, and patch features as
colours, as PNG bytes.

The overlay is :func:`vitkit.visualize._overlay`'s picture without the axes: the image in grey, the map
bilinearly upsampled to it (:func:`vitkit.visualize.upsample_map`), min-max scaled and coloured with
``inferno`` at 60 % opacity. Small inputs (8x8 digits, 32x32 CIFAR) are enlarged, pixels kept square, to at
least ``MIN_SIDE`` on their long side so that a page can show them without blurring.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from ..visualize import to_display, upsample_map

MIN_SIDE = 224


def _scale(h: int, w: int) -> int:
    return max(1, math.ceil(MIN_SIDE / max(h, w)))


def _enlarge(img: np.ndarray, k: int) -> np.ndarray:
    return img.repeat(k, axis=0).repeat(k, axis=1)  # nearest neighbour: each pixel a k x k square


def _png(img: np.ndarray) -> bytes:
    """A float image in [0, 1], (H, W) or (H, W, 3), as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_png(image: torch.Tensor) -> bytes:
    """The uint8 (C, H, W) model-size image (``Preprocess.load``), enlarged, as a PNG."""
    img = to_display(image)  # (H, W) or (H, W, 3) in [0, 1]
    return _png(_enlarge(img, _scale(*img.shape[:2])))


def overlay_png(image: torch.Tensor, heat, cmap: str = "inferno", alpha: float = 0.6) -> bytes:
    """A (gh, gw) patch map over the uint8 (C, H, W) image, enlarged, as a PNG."""
    from matplotlib import colormaps

    img = to_display(image)
    grey = img if img.ndim == 2 else img.mean(axis=-1)  # (H, W)
    grey = _enlarge(grey, _scale(*grey.shape))
    up = upsample_map(heat, grey.shape)  # (H', W')
    up = (up - up.min()) / (up.max() - up.min() + 1e-12)
    colour = colormaps[cmap](up)[..., :3]  # (H', W', 3)
    return _png((1 - alpha) * grey[..., None] + alpha * colour)


def patch_colours_png(rgb: np.ndarray, image_hw: tuple[int, int]) -> bytes:
    """(gh, gw, 3) colours in [0, 1], one per patch, as a PNG the size of the enlarged image: each patch a
    square block of its colour (no smoothing, so the patch grid stays visible)."""
    gh, gw = rgb.shape[:2]
    h, w = image_hw
    k = _scale(h, w)
    rows = np.minimum(np.arange(h * k) * gh // (h * k), gh - 1)  # the patch row of each output pixel row
    cols = np.minimum(np.arange(w * k) * gw // (w * k), gw - 1)
    return _png(rgb[rows][:, cols])
