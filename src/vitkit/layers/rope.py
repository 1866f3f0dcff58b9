"""Rotary position embedding (RoPE) over the patch grid (Su et al. 2021; Heo et al. 2024 for images).

Instead of adding a position to each token, attention rotates the query and the key of every patch token by
angles that depend on where the patch sits, so that q . k depends on the offset between two patches. With head
width d, the d/2 channel pairs (a, b) of a query or key each turn by an angle theta:

    a' = a cos(theta) - b sin(theta)        b' = b cos(theta) + a sin(theta)

Half of the pairs take their angle from one grid axis and half from the other, theta = t_axis * w_k, with d/4
frequencies w_k per axis. Prefix tokens ([CLS], registers) are not rotated. The flavours differ in the
coordinates t, the frequencies w, and which channels pair up:

- ``"dinov3"`` (DINOv3): t = 2 (i + 1/2) / n - 1 in [-1, 1] for i < n patches along the axis (``normalize``
  "min"/"max" divides by the shorter/longer side instead), w_k = 2 pi / T^(4k / d), T = 100; channel m pairs
  with m + d/2 (the "half" layout).
- ``"axial"`` (EVA-02, Perception Encoder, RoPE-ViT): t = (i + offset) * ref / n (``ref`` the grid the
  model was trained on, else no rescale), w_k = 1 / T^(4k / d), T = 10000 by default; channel 2j pairs with 2j + 1.
- ``"mixed"`` (RoPE-Mixed): learned frequencies per block and head mix both axes, theta = t_x f_x + t_y f_y
  with integer t; channel 2j pairs with 2j + 1.

``indexing="ij"`` gives the first half of the pairs to the rows, ``"xy"`` to the columns. Every grid is computed
afresh (any image size, non-square too), in float32 with the same operations as timm, so timm's numbers come
out. :func:`rotate` applies the returned ``cat([sin, cos])``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ROPES = ("none", "dinov3", "axial", "mixed")
DEFAULT_TEMPERATURE = {"dinov3": 100.0, "axial": 10000.0, "mixed": 10.0}


def rotate(x: torch.Tensor, emb: torch.Tensor, half: bool) -> torch.Tensor:
    """Rotate ``x`` (..., N, d) by ``emb`` (..., N, 2d) = cat([sin, cos]); ``half``: channel m pairs with
    m + d/2, else 2j with 2j + 1. Computed in ``emb``'s precision, returned in ``x``'s dtype."""
    sin, cos = emb.chunk(2, dim=-1)
    if half:
        x1, x2 = x.chunk(2, dim=-1)
        turned = torch.cat([-x2, x1], dim=-1)  # [-x_{d/2..d}, x_{0..d/2}]
    else:
        turned = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)  # [-x1, x0, -x3, x2, ...]
    return (x * cos + turned * sin).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """The rotation angles of a patch grid for one flavour (see the module docstring).

    ``forward(grid)`` returns cat([sin, cos]) of shape (h*w, 2d), or (depth, heads, h*w, 2d) for ``"mixed"``,
    whose learned ``freqs`` (2, depth, heads, d/2) are the only parameter (timm's ``rope.freqs``).
    ``bf16_periods`` rounds DINOv3's periods to bfloat16, as the original DINOv3 files store them (its own code
    computes with those; timm and Hugging Face recompute them in float32)."""

    def __init__(self, kind: str, head_dim: int, *, num_heads: int = 1, depth: int = 1,
                 temperature: float | None = None, grid_offset: float = 0.0, indexing: str = "ij",
                 ref_grid: tuple[int, int] | None = None, normalize: str = "separate", bf16_periods: bool = False):
        super().__init__()
        if kind not in DEFAULT_TEMPERATURE:
            raise ValueError(f"rope must be one of {', '.join(DEFAULT_TEMPERATURE)}, got {kind!r}")
        if head_dim % 4:
            raise ValueError(f"a 2-d rotary embedding needs a head width divisible by 4, got {head_dim}")
        self.kind, self.head_dim, self.half = kind, head_dim, kind == "dinov3"
        self.temperature = float(DEFAULT_TEMPERATURE[kind] if temperature is None else temperature)
        self.grid_offset, self.indexing, self.ref_grid = grid_offset, indexing, ref_grid
        self.normalize, self.bf16_periods = normalize, bf16_periods
        self._cache: dict[tuple, torch.Tensor] = {}  # (h, w, device): the fixed flavours' angles, not saved
        if kind == "mixed":
            self.freqs = nn.Parameter(mixed_freqs(head_dim, depth, num_heads, self.temperature))

    def forward(self, grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """cat([sin, cos]) for an (h, w) patch grid, on ``device``. The fixed flavours are computed once per grid
        and device (on the CPU, as timm computes them, then moved); RoPE-Mixed's follow its learned freqs."""
        h, w = grid
        if self.kind == "mixed":
            return self._mixed(h, w)
        key = (h, w, str(device))
        if key not in self._cache:
            emb = self._dinov3(h, w) if self.kind == "dinov3" else self._axial(h, w)
            self._cache[key] = emb.to(device) if device is not None else emb
        return self._cache[key]

    def _device(self) -> torch.device:
        return self.freqs.device if self.kind == "mixed" else torch.device("cpu")

    def _order(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(h, w, 2) coordinates of every patch, row-major; channels (row, col) for 'ij', (col, row) for 'xy'."""
        r, c = torch.meshgrid(rows, cols, indexing="ij")  # 2 x (h, w)
        return torch.stack([r, c] if self.indexing == "ij" else [c, r], dim=-1)

    def _dinov3(self, h: int, w: int) -> torch.Tensor:
        periods = dinov3_periods(self.head_dim, self.temperature, self.bf16_periods)  # (d/4,)
        side = {"separate": (h, w), "max": (max(h, w),) * 2, "min": (min(h, w),) * 2}[self.normalize]
        rows = (torch.arange(0.5, h, dtype=torch.float32) + self.grid_offset) / side[0]
        cols = (torch.arange(0.5, w, dtype=torch.float32) + self.grid_offset) / side[1]
        coords = (2.0 * self._order(rows, cols) - 1.0).flatten(0, 1)  # (hw, 2) in [-1, 1]
        angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1)  # (hw, d/2): axis 0, axis 1
        return torch.cat([angles.sin().tile(2), angles.cos().tile(2)], dim=-1)  # (hw, 2d), half layout

    def _axial(self, h: int, w: int) -> torch.Tensor:
        d4 = self.head_dim // 4
        bands = 1.0 / (self.temperature ** (torch.arange(d4, dtype=torch.int64).to(torch.float32) / d4))  # (d/4,)
        rows = torch.arange(h, dtype=torch.int64).to(torch.float32) + self.grid_offset
        cols = torch.arange(w, dtype=torch.int64).to(torch.float32) + self.grid_offset
        if self.ref_grid is not None:  # EVA's rescale: the trained grid spans the same coordinates at any size
            rows, cols = rows / h * self.ref_grid[0], cols / w * self.ref_grid[1]
        angles = (self._order(rows, cols)[..., None] * bands).flatten(-2).flatten(0, -2)  # (h, w, 2, d/4) -> (hw, d/2)
        return torch.cat([angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1)], dim=-1)

    def _mixed(self, h: int, w: int) -> torch.Tensor:
        rows = torch.arange(h, dtype=torch.int64, device=self._device()).to(torch.float32)
        cols = torch.arange(w, dtype=torch.int64, device=self._device()).to(torch.float32)
        t = self._order(rows, cols).reshape(-1, 2)  # (hw, 2): t_x, t_y in timm's naming
        freqs = self.freqs.float()
        angles = t[:, 0, None] * freqs[0][..., None, :] + t[:, 1, None] * freqs[1][..., None, :]  # (depth, H, hw, d/2)
        emb = torch.cat([angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1)], dim=-1)
        return emb.to(self.freqs.dtype)

    def extra_repr(self) -> str:
        return f"{self.kind!r}, head_dim={self.head_dim}, temperature={self.temperature}, indexing={self.indexing!r}"


def dinov3_periods(head_dim: int, temperature: float, bf16: bool = False) -> torch.Tensor:
    """DINOv3's periods T^(4k/d), k < d/4, in float32 (rounded to bfloat16 with ``bf16``, as its files store them)."""
    periods = temperature ** (2.0 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
    return periods.to(torch.bfloat16).float() if bf16 else periods


def mixed_freqs(head_dim: int, depth: int, num_heads: int, temperature: float = 10.0) -> torch.Tensor:
    """RoPE-Mixed's initial frequencies (2, depth, heads, d/2): magnitudes 1 / T^(4k/d) turned by a random angle
    per block and head, one copy for x and a quarter-turned one for y."""
    mag = 1.0 / (temperature ** (torch.arange(0, head_dim, 4, dtype=torch.float32) / head_dim))  # (d/4,)
    angles = torch.rand(depth, num_heads, 1) * 2 * math.pi  # (depth, H, 1)
    fx = torch.cat([mag * torch.cos(angles), mag * torch.cos(angles + math.pi / 2)], dim=-1)  # (depth, H, d/2)
    fy = torch.cat([mag * torch.sin(angles), mag * torch.sin(angles + math.pi / 2)], dim=-1)
    return torch.stack([fx, fy], dim=0)
