"""Position information: relative position bias (1-d and 2-d, Swin/BEiT indexing), fixed 2-d sin-cos
embeddings, and resampling of learned embeddings to a new patch grid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import pair


def get_relative_position_index_1d(seq_len: int) -> torch.Tensor:
    """Index ``i - j + seq_len - 1`` of every (query i, key j) pair: (seq_len, seq_len), values in [0, 2L-2]."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len}")
    pos = torch.arange(seq_len)
    return pos[:, None] - pos[None, :] + seq_len - 1


def get_relative_position_index_2d(window_size: tuple[int, int]) -> torch.Tensor:
    """Swin's index of every pair of cells of an (h, w) window: ``(dy + h - 1) * (2w - 1) + (dx + w - 1)``.

    Returns (h*w, h*w) with values in [0, (2h-1)(2w-1) - 1]; cells are numbered row by row.
    """
    h, w = pair(window_size, "window_size")
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))  # (2, h, w)
    coords = coords.flatten(1)  # (2, h*w)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): (dy, dx) of query minus key
    rel = rel.permute(1, 2, 0)  # (N, N, 2)
    return (rel[..., 0] + h - 1) * (2 * w - 1) + (rel[..., 1] + w - 1)


class RelativePositionBias(nn.Module):
    """A learnable bias per head for each relative offset, added to the attention logits.

    ``bias_type="2d"`` indexes offsets on a ``window_size`` grid (Swin), ``"1d"`` on a sequence of ``seq_len``.
    With ``num_prefix_tokens`` > 0 (a [CLS] token, registers) the sequence starts with tokens that have no
    position; following BEiT they share three extra table entries: prefix->patch, patch->prefix and
    prefix->prefix. The table is (num_relative_positions, num_heads); ``forward()`` gives (num_heads, N, N)
    with N the whole sequence, prefix tokens first.
    """

    def __init__(
        self,
        num_heads: int,
        window_size: tuple[int, int] | None = None,
        seq_len: int | None = None,
        bias_type: str = "2d",
        init_std: float = 0.02,
        num_prefix_tokens: int = 0,
    ):
        super().__init__()
        if bias_type == "2d":
            if window_size is None:
                raise ValueError("RelativePositionBias(bias_type='2d') needs window_size=(h, w), got None")
            self.window_size = pair(window_size, "window_size")
            index = get_relative_position_index_2d(self.window_size)
            num_grid = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        elif bias_type == "1d":
            if seq_len is None:
                raise ValueError("RelativePositionBias(bias_type='1d') needs seq_len, got None")
            self.window_size = None
            index = get_relative_position_index_1d(seq_len)
            num_grid = 2 * seq_len - 1
        else:
            raise ValueError(f"bias_type must be '1d' or '2d', got {bias_type!r}")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.num_heads = num_heads
        self.bias_type = bias_type
        self.num_prefix_tokens = num_prefix_tokens
        if num_prefix_tokens:
            p, n = num_prefix_tokens, index.shape[0]
            full = torch.empty(p + n, p + n, dtype=index.dtype)
            full[p:, p:] = index
            full[:p, p:] = num_grid  # prefix (query) -> patch (key)
            full[p:, :p] = num_grid + 1  # patch -> prefix
            full[:p, :p] = num_grid + 2  # prefix -> prefix
            index = full
            num_grid += 3
        self.num_relative_positions = num_grid
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_grid, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=init_std)
        # Derived from the sizes above, so not saved with the weights.
        self.register_buffer("relative_position_index", index, persistent=False)

    @property
    def seq_len(self) -> int:
        return self.relative_position_index.shape[0]

    def forward(self) -> torch.Tensor:
        n = self.seq_len
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, H)
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()  # (H, N, N)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, bias_type={self.bias_type!r}, seq_len={self.seq_len}"


def sincos_2d_pos_embed(grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-d sin-cos embedding of an (h, w) grid as in big_vision / MoCo v3: (h*w, dim)."""
    if dim % 4:
        raise ValueError(f"the sincos2d position embedding needs embed_dim divisible by 4, got {dim}")
    h, w = grid_size
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    omega = torch.arange(dim // 4, dtype=torch.float64) / max(dim // 4 - 1, 1)
    omega = 1.0 / temperature**omega  # (dim/4,)
    x = x.flatten()[:, None] * omega[None, :]  # (h*w, dim/4)
    y = y.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()  # (h*w, dim)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Resample a learned (1, prefix + h*w, D) embedding to a new grid, bicubic with antialiasing (as timm);
    the prefix tokens' embeddings are kept as they are."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot infer the grid of a {n}-patch position embedding; pass old_grid=(h, w)")
        old_grid = (side, side)
    new_grid = tuple(new_grid)
    if tuple(old_grid) == new_grid:
        return pos_embed
    orig_dtype = grid.dtype
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(orig_dtype)  # (1, h'*w', D)
    return torch.cat([prefix, grid], dim=1)
