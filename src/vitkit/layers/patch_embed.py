"""Patch embedding: cut an image into non-overlapping patches and project each to a vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import pair
from .norm import make_norm


class PatchEmbedding(nn.Module):
    """(B, C, H, W) images -> (B, N, D) patch embeddings with a strided convolution (one linear map per patch).

    With ``strict_img_size`` (the default) an image of another size is an error naming both sizes; without it
    any size divisible by the patch size is accepted (the model then resamples its position embedding).

    Training on a CPU cuts the patches out and runs one matrix product with the same weights
    (:meth:`project_patches`): the same map, but the CPU convolution's weight gradient is slow for a stride
    equal to its kernel (BENCHMARKS.md measures the difference). In eval mode the convolution runs, as in
    timm, so logits stay equal to timm's bit for bit.

    ``bias=False`` leaves out the projection's bias (CLIP). ``norm=True`` is vit-pytorch's patch embedding: a
    LayerNorm over each flattened patch (``pre_norm``, in the weight's (C, P, P) order) before the projection
    and a LayerNorm over its output (``norm``, timm's name for a norm after the projection). The patches are
    then always cut out and multiplied, since the convolution cannot normalise them first. ``embed_norm=True``
    is the norm after the projection alone (AIMv2's RMSNorm; ``norm_layer`` names the kind).
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_channels: int = 3, embed_dim: int = 768,
                 strict_img_size: bool = True, bias: bool = True, norm: bool = False, norm_eps: float = 1e-6,
                 embed_norm: bool = False, norm_layer: str = "layernorm"):
        super().__init__()
        self.img_size = pair(img_size, "img_size")
        self.patch_size = pair(patch_size, "patch_size")
        for side, p, axis in zip(self.img_size, self.patch_size, ("height", "width")):
            if side % p:
                raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size} "
                                 f"(image {axis} {side} is not a multiple of {p})")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_channels = in_channels
        self.strict_img_size = strict_img_size
        patch_dim = in_channels * self.patch_size[0] * self.patch_size[1]
        self.pre_norm = make_norm(norm_layer, patch_dim, norm_eps) if norm else None
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = make_norm(norm_layer, embed_dim, norm_eps) if norm or embed_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.strict_img_size and (h, w) != self.img_size:
            raise ValueError(f"expected {self.img_size[0]}x{self.img_size[1]} images, got {h}x{w} "
                             "(build the model with dynamic_img_size=True or call set_img_size to change it)")
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {self.patch_size}")
        if self.pre_norm is not None or (self.training and x.device.type == "cpu"):
            x = self.project_patches(x)
        else:
            x = self.proj(x)  # (B, D, H/P, W/P)
            x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        return self.norm(x)

    def project_patches(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution as a matrix product (with ``pre_norm`` applied to each patch first):
        (B, C, H, W) -> (B, N, D)."""
        b, c, h, w = x.shape
        (p, q), (gh, gw) = self.patch_size, self.grid_for(h, w)
        x = x.reshape(b, c, gh, p, gw, q).permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, C, P, P)
        x = x.reshape(b, gh * gw, c * p * q)  # (B, N, C*P*P), each row a patch in the weight's (C, P, P) order
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        return F.linear(x, self.proj.weight.flatten(1), self.proj.bias)  # (B, N, D)

    def grid_for(self, h: int, w: int) -> tuple[int, int]:
        """The patch grid of an h x w image."""
        return (h // self.patch_size[0], w // self.patch_size[1])
