"""The feed-forward branch of a block: the ViT's two-layer MLP and the gated variant (SwiGLU: DINOv2-giant,
DINOv3 S+/H+, EVA-02, AIMv2), with timm's ``fc1``/``fc2`` keys for both, an optional norm on the hidden
activations (EVA-02's sub-LN, timm's ``mlp.norm``), and the activations they take by name."""

from __future__ import annotations

import torch
from torch import nn

from .norm import make_norm


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the sigmoid approximation of GELU that OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # what JAX/big_vision checkpoints were trained with
    "quick_gelu": QuickGELU,  # OpenAI CLIP
    "silu": nn.SiLU,  # the gate of a SwiGLU
    "relu": nn.ReLU,
}

HEAD_ACTIVATIONS = {"tanh": nn.Tanh, "identity": nn.Identity, **ACTIVATIONS}  # the head's hidden layer (the ViT
# paper's pre-logits: tanh; a projection: identity)


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> [norm] -> linear -> dropout (timm's ``fc1``/``norm``/``fc2`` keys).

    ``norm`` ("layernorm" or "rmsnorm") normalises the hidden activations (EVA-02's sub-LN); ``bias=False``
    leaves out both linears' biases (AIMv2)."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", dropout: float = 0.0, *, norm: str | None = None,
                 norm_eps: float = 1e-6, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = activation(act)
        self.drop1 = nn.Dropout(dropout)
        self.norm = make_norm(norm, hidden_dim, norm_eps) if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class GluMlp(nn.Module):
    """A gated MLP with both input projections packed in one ``fc1`` (timm's ``SwiGLUPacked``, DINOv2's
    ``w12``/``w3``): ``fc2(act(x1) * x2)`` where ``x1, x2`` are the first and second halves of ``fc1(x)``.
    With ``act="silu"`` it is SwiGLU (Shazeer 2020). ``hidden_dim`` is fc1's width, so fc2 reads half of it.
    A split SwiGLU (timm's ``fc1_g``/``fc1_x``, DINOv3's ``w1``/``w2``) is the same map with its gate and value
    projections stacked into ``fc1``. ``norm`` and ``bias`` as for :class:`Mlp`."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "silu", dropout: float = 0.0, *, norm: str | None = None,
                 norm_eps: float = 1e-6, bias: bool = True):
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"a gated MLP splits its hidden width in two halves; {hidden_dim} is odd")
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = activation(act)
        self.drop1 = nn.Dropout(dropout)
        self.norm = make_norm(norm, hidden_dim // 2, norm_eps) if norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim // 2, dim, bias=bias)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.fc1(x).chunk(2, dim=-1)  # (B, N, M) -> 2 x (B, N, M/2); the gate is the first half
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(x1) * x2))))


MLPS = {"mlp": Mlp, "swiglu": GluMlp}
