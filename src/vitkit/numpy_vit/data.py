"""Synthetic images whose class can only be told from their spatial pattern."""

from __future__ import annotations

import numpy as np

__all__ = ["generate_synthetic_images"]


def generate_synthetic_images(n_samples: int, image_size: int, in_channels: int, num_classes: int,
                              random_seed: int | None = None, *, noise: float = 1.0,
                              period: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Images of stripes whose orientation is the class: class k has stripes at angle 180° * k / num_classes.

    Each image also gets a random phase (where the stripes fall), a random brightness per channel and
    Gaussian noise of standard deviation ``noise``, so no single pixel and no average colour tells the class;
    only the direction of the pattern does. The stripes have a ``period`` of that many pixels.

    Returns ``images`` (n_samples, image_size, image_size, in_channels) float32 and ``labels`` (n_samples,)
    int64 in [0, num_classes); the same ``random_seed`` gives the same arrays, and every seed draws from the
    same classes.
    """
    if min(n_samples, image_size, in_channels, num_classes) < 1:
        raise ValueError("n_samples, image_size, in_channels and num_classes must be positive integers, got "
                         f"{n_samples}, {image_size}, {in_channels}, {num_classes}")
    rng = np.random.default_rng(random_seed)
    labels = rng.integers(0, num_classes, size=n_samples)  # (n,)
    angle = np.pi * labels / num_classes  # (n,): the stripes' direction
    phase = rng.uniform(0.0, 2.0 * np.pi, size=n_samples)  # (n,): where the stripes fall
    gain = rng.uniform(0.5, 1.5, size=(n_samples, in_channels))  # (n, C): brightness per channel
    rows, cols = np.mgrid[0:image_size, 0:image_size]  # (S, S) pixel coordinates
    # Distance of each pixel along the direction perpendicular to the stripes: (n, S, S).
    along = cols * np.cos(angle)[:, None, None] + rows * np.sin(angle)[:, None, None]
    stripes = np.sin(2.0 * np.pi * along / period + phase[:, None, None])  # (n, S, S) in [-1, 1]
    images = stripes[..., None] * gain[:, None, None, :]  # (n, S, S, C)
    images += noise * rng.standard_normal(images.shape)
    return images.astype(np.float32), labels.astype(np.int64)
