"""Patch features as colour: the first three principal components of the patch tokens as red, green and
blue, the view DINO papers show of dense features. Patches the model sees alike get alike colours, so parts
of an object (and the object against its background) stand out without any label.

The components are fitted on all patches of all the images given together, so colours compare across them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .canvas import as_numpy, imshow, new_figure, save_figure, to_display


def feature_pca(dense, n_components: int = 3) -> np.ndarray:
    """Dense features (D, h, w) or (B, D, h, w) -> their principal components (h, w, k) or (B, h, w, k), each
    min-max scaled to [0, 1] over all the patches (k = ``n_components``).

    With X the patches as rows (B h w, D) and X_c = X - mean(X), the components are the top right singular
    vectors V_k of X_c, each signed so that its largest-magnitude entry is positive (scikit-learn's PCA
    convention), and the picture is X_c V_k. Components without variance (a model narrower than k, fewer
    patches than k, identical patches) are left at 0.
    """
    x = torch.as_tensor(as_numpy(dense), dtype=torch.float64)
    single = x.ndim == 3
    x = x[None] if single else x  # (B, D, h, w)
    b, d, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(b * h * w, d)  # (B h w, D)
    centred = rows - rows.mean(dim=0)
    _, sv, vt = torch.linalg.svd(centred, full_matrices=False)  # vt: (min(Bhw, D), D)
    vt = vt[:n_components][sv[:n_components] > 1e-9 * sv[:1].clamp(min=1e-300)]  # directions with variance
    sign = torch.sign(vt.gather(1, vt.abs().argmax(dim=1, keepdim=True)))  # (k, 1)
    proj = centred @ (vt * sign).T  # (B h w, k')
    lo, hi = proj.min(dim=0).values, proj.max(dim=0).values
    proj = (proj - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    out = torch.zeros(b * h * w, n_components, dtype=torch.float64)
    out[:, :proj.shape[1]] = proj
    out = out.reshape(b, h, w, n_components).numpy()  # (B, h, w, k)
    return out[0] if single else out


def dense_features(model, x: torch.Tensor) -> torch.Tensor:
    """Normalised inputs (B, C, H, W) -> the model's final normed patch tokens on their grid (B, D, gh, gw)."""
    with torch.no_grad():
        return model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0].float().cpu()


def visualize_feature_pca(model, images: torch.Tensor, save_path=None, mean=None, std=None,
                          captions: Sequence[str] | None = None, title: str = "Patch features, first three "
                          "principal components as RGB", per_row: int = 4):
    """Each image next to its patch features in colour (:func:`feature_pca`, fitted on all the images
    together). ``images`` are normalised inputs (C, H, W) or (B, C, H, W); ``mean``/``std`` undo the
    normalisation for display."""
    x = images[None] if images.ndim == 3 else images  # (B, C, H, W)
    rgb = feature_pca(dense_features(model, x))  # (B, gh, gw, 3)
    n = x.shape[0]
    cols = min(n, per_row)
    rows = -(-n // cols)
    img0 = to_display(x[0], mean, std)
    aspect = img0.shape[0] / img0.shape[1]
    fig = new_figure(2.2 * 2 * cols, 2.2 * aspect * rows + 0.7)
    axes = fig.subplots(rows, 2 * cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for i in range(n):
        img = to_display(x[i], mean, std)
        imshow(axes[2 * i], img)
        axes[2 * i].set_title(captions[i] if captions else "input", fontsize=9)
        axes[2 * i + 1].imshow(rgb[i], interpolation="nearest", extent=(-0.5, img.shape[1] - 0.5,
                                                                       img.shape[0] - 0.5, -0.5))
        axes[2 * i + 1].set_title("features (PCA)", fontsize=9)
    fig.suptitle(title)
    return save_figure(fig, save_path)
