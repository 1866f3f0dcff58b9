"""The transformer encoder block and its MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.module import _global_forward_hooks

from .attention import MultiHeadAttention

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # what JAX/big_vision checkpoints were trained with
    "relu": nn.ReLU,
}


def _overwritable(*modules: nn.Module) -> bool:
    """Whether these modules' outputs may be overwritten in place: only without autograd (which may have saved
    them), outside torch.compile / export tracing (which plans its own buffers), and with no forward hook anywhere
    in them (which may hold a reference to them).

    Inference overwrites the MLP's hidden activation and the residual branch outputs instead of allocating new
    tensors: the same kernels give bit-identical values, while fewer fresh tensors mean fewer page faults on
    the CPU (about 8% of ViT-Ti/16's inference time at batch 32; see BENCHMARKS.md).
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or _global_forward_hooks:
        return False
    return not any(m._forward_hooks for module in modules for m in module.modules())


def _residual_add(branch: torch.Tensor, x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``x + branch``; into ``branch``'s storage when allowed, when that changes neither dtype nor shape (under
    autocast a bf16 branch added to an fp32 stream must promote, as ``x + branch`` does), and when ``branch`` is
    a dense tensor of its own (not ``x`` itself, e.g. behind an identity attention)."""
    if (inplace and branch.dtype == x.dtype and branch.shape == x.shape and branch.is_contiguous()
            and branch.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()):
        return branch.add_(x)  # IEEE addition commutes: the same bits as x + branch
    return x + branch


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> linear -> dropout (timm's ``fc1``/``fc2`` keys)."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = ACTIVATIONS[act]()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if type(self.act) in (nn.GELU, nn.ReLU) and _overwritable(self.fc1, self.act):
            # In inference the activation overwrites its input: same kernel, one fewer large tensor.
            h = torch.relu_(h) if isinstance(self.act, nn.ReLU) else torch.ops.aten.gelu_(h, approximate=self.act.approximate)
        else:
            h = self.act(h)
        return self.drop2(self.fc2(self.drop1(h)))


def drop_path_layer(p: float) -> nn.Module:
    """Stochastic depth (drop a whole residual branch per sample), or an identity when ``p`` is 0.

    torchvision's is used; it is imported only when asked for, so that building a model (and starting the
    CLI) does not pay for importing torchvision."""
    if p <= 0:
        return nn.Identity()
    from torchvision.ops import StochasticDepth
    return StochasticDepth(p, "row")


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT), initialised small."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Attention then MLP, each with a residual connection.

    ``norm_style="pre"`` (ViT, timm): ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``.
    ``norm_style="post"`` (the original Transformer, vitkit.scratch): ``norm1(x + attn(x))``,
    ``norm2(x + mlp(x))``. Both keep timm's parameter names, so a state dict fits either.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 use_relative_position: bool = False, rpb_kwargs: dict | None = None, *, qkv_bias: bool = True,
                 attn_drop: float | None = None, drop_path: float = 0.0, layer_scale_init: float | None = None,
                 norm_eps: float = 1e-6, norm_style: str = "pre", act: str = "gelu", fused_attn: bool = True):
        super().__init__()
        if norm_style not in ("pre", "post"):
            raise ValueError(f"norm_style must be 'pre' or 'post', got {norm_style!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.pre_norm = norm_style == "pre"
        self.norm1 = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout, use_relative_position, rpb_kwargs,
                                       qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=dropout,
                                       fused=fused_attn)
        self.ls1 = LayerScale(embed_dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path1 = drop_path_layer(drop_path)
        self.norm2 = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio), act, dropout)
        self.ls2 = LayerScale(embed_dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path2 = drop_path_layer(drop_path)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """(B, N, C) -> (B, N, C); with ``return_attention`` also this block's weights (B, H, N, N)."""
        attn = None
        y = self.norm1(x) if self.pre_norm else x
        if return_attention:
            y, attn = self.attn(y, return_attention=True)
        else:
            y = self.attn(y)
        y = self.drop_path1(self.ls1(y))
        x = _residual_add(y, x, _overwritable(self.attn, self.ls1, self.drop_path1))
        if not self.pre_norm:
            x = self.norm1(x)
        y = self.mlp(self.norm2(x) if self.pre_norm else x)
        y = self.drop_path2(self.ls2(y))
        x = _residual_add(y, x, _overwritable(self.mlp, self.ls2, self.drop_path2))
        if not self.pre_norm:
            x = self.norm2(x)
        return (x, attn) if return_attention else x
