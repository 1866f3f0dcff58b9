"""The layers of a Vision Transformer in NumPy, each with its forward pass and its hand-written backward pass.

Every layer follows one protocol:

- ``forward(x)`` computes the output and keeps (caches) what the backward pass will need.
- ``backward(grad_out, lr)`` receives dL/d(output), the gradient of the loss with respect to the layer's
  output, and returns dL/d(input), which the layer before it receives in turn (the chain rule, applied one
  layer at a time from the loss back to the image). On the way it computes dL/d(parameter) for each of its
  own parameters, stores them in ``self.grads`` and then takes one plain SGD step,
  ``parameter -= lr * gradient``. With ``lr=0`` the weights stay as they are (used to check gradients).

The input gradient is always computed with the weights *before* the update, so a whole backward pass is
exactly one step of SGD on the loss of the batch, as in any framework.

Shapes: ``B`` batch, ``T`` tokens, ``D`` model width (``dim_model``), ``H`` heads, ``d = D / H`` head width,
``F`` the feed-forward width. Everything is vectorised over the batch and the heads (no Python loop over
samples or heads); arrays are float32 by default, float64 when a layer is built with ``dtype=np.float64``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["Layer", "Linear", "LayerNorm", "MultiHeadSelfAttention", "FeedForward", "ViTEncoderLayer",
           "PatchEmbedding"]


class Layer:
    """What every layer shares: its parameters, their last gradients, and the SGD step.

    ``params`` maps a name to an array that the layer owns; ``grads`` maps the same names to the gradients of
    the last backward pass (same shapes). Sub-layers held as attributes (or in a list attribute) are found by
    :meth:`named_parameters` and :meth:`named_grads`, which give dotted names such as ``attn.qkv.weight``.
    """

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def sublayers(self) -> Iterator[tuple[str, "Layer"]]:
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Layer):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Every parameter of this layer and its sub-layers, by dotted name (the arrays themselves, not copies)."""
        out = {prefix + name: p for name, p in self.params.items()}
        for name, layer in self.sublayers():
            out.update(layer.named_parameters(f"{prefix}{name}."))
        return out

    def named_grads(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The gradients of the last backward pass, named as in :meth:`named_parameters`."""
        out = {prefix + name: g for name, g in self.grads.items()}
        for name, layer in self.sublayers():
            out.update(layer.named_grads(f"{prefix}{name}."))
        return out

    def sgd_step(self, lr: float) -> None:
        """Plain SGD on this layer's own parameters (sub-layers step in their own backward), in place."""
        if lr:
            for name, p in self.params.items():
                p -= lr * self.grads[name]


def _rng(rng) -> np.random.Generator:
    """A seed (int or None) or a ``Generator`` as a ``Generator``."""
    return np.random.default_rng(rng)


class Linear(Layer):
    """y = x W + b over the last axis: (..., D_in) -> (..., D_out).

    ``weight`` is (D_in, D_out), so that a row of inputs times the matrix is a row of outputs; PyTorch's
    ``nn.Linear`` stores the transpose, (D_out, D_in). Initialised with N(0, 1/D_in) (LeCun), which keeps
    the output on the scale of the input, and a zero bias.

    Backward (with x and the output gradient g flattened to rows): dW = x^T g, db = sum of the rows of g,
    dx = g W^T.
    """

    def __init__(self, dim_in: int, dim_out: int, *, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = _rng(rng)
        self.params["weight"] = (rng.standard_normal((dim_in, dim_out)) / np.sqrt(dim_in)).astype(self.dtype)
        self.params["bias"] = np.zeros(dim_out, self.dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x  # (..., D_in)
        w, b = self.params["weight"], self.params["bias"]
        y = x.reshape(-1, x.shape[-1]) @ w  # one matrix product for all rows: (rows, D_out)
        y += b
        return y.reshape(*x.shape[:-1], w.shape[1])

    def backward(self, grad_out: np.ndarray, lr: float) -> np.ndarray:
        w = self.params["weight"]
        x2 = self.x.reshape(-1, w.shape[0])  # (rows, D_in)
        g2 = grad_out.reshape(-1, w.shape[1])  # (rows, D_out)
        self.grads["weight"] = x2.T @ g2  # (D_in, D_out): each row's outer product x^T g, summed
        self.grads["bias"] = g2.sum(axis=0)  # (D_out,)
        grad_in = (g2 @ w.T).reshape(self.x.shape)  # (..., D_in), with the weights before the step
        self.sgd_step(lr)
        return grad_in


class LayerNorm(Layer):
    """Layer normalization over the last dimension: y = gamma * (x - mean) / sqrt(var + eps) + beta.

    Each token vector is shifted to mean 0 and scaled to variance 1, then a learned per-channel scale
    (``gamma``, starts at 1) and shift (``beta``, starts at 0) are applied.

    Backward, with x_hat = (x - mean) * r the normalized input, r = 1 / sqrt(var + eps) and
    g_hat = g * gamma: dgamma = sum(g * x_hat), dbeta = sum(g) (summed over every token), and
    dx = r * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)), the means taken over the last axis. The two
    subtracted terms are what the mean and the variance, which depend on every entry of x, feed back.
    """

    def __init__(self, dim: int, eps: float = 1e-5, *, dtype=np.float32):
        super().__init__(dtype)
        self.eps = float(eps)
        self.params["gamma"] = np.ones(dim, self.dtype)
        self.params["beta"] = np.zeros(dim, self.dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
        centered = x - mean
        self.rstd = 1.0 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + self.eps)  # (..., 1)
        self.x_hat = centered * self.rstd  # (..., D): mean 0, variance 1
        return self.x_hat * self.params["gamma"] + self.params["beta"]

    def backward(self, grad_out: np.ndarray, lr: float) -> np.ndarray:
        x_hat = self.x_hat  # (..., D)
        dim = x_hat.shape[-1]
        g_rows = grad_out.reshape(-1, dim)  # every token a row: (rows, D)
        self.grads["gamma"] = (g_rows * x_hat.reshape(-1, dim)).sum(axis=0)  # (D,)
        self.grads["beta"] = g_rows.sum(axis=0)  # (D,)
        g_hat = grad_out * self.params["gamma"]  # dL/dx_hat: (..., D)
        grad_in = self.rstd * (g_hat - g_hat.mean(axis=-1, keepdims=True)
                               - x_hat * (g_hat * x_hat).mean(axis=-1, keepdims=True))
        self.sgd_step(lr)
        return grad_in


class MultiHeadSelfAttention(Layer):
    """Multi-head scaled dot-product self-attention: (B, T, D) -> (B, T, D).

    Every token asks a question (its query q), offers an answer key k and carries a value v, all three linear
    maps of the token. A head compares each query with every key, ``scores = q k^T / sqrt(d)``, turns each row
    into weights that sum to 1 with a softmax, and returns the weighted average of the values. ``H`` heads do
    this in parallel on ``d = D / H`` channels each; their outputs are concatenated and mixed by the output
    projection O.

    The Q, K and V projections are one ``Linear(D, 3D)`` called ``qkv``: columns ``[0:D]`` of its weight
    are Q, ``[D:2D]`` K and ``[2D:3D]`` V (the layout of timm and of the PyTorch model, transposed), so one
    matrix product computes all three. The output projection is ``out``.

    Backward, for one head (the heads run as one batched product), with A the attention weights and g the
    gradient of its output A v: dV = A^T g, dA = g V^T, then through the softmax
    dS = A * (dA - sum_j(dA * A)) (row-wise), and through the scores dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d).
    """

    def __init__(self, dim_model: int, num_heads: int, *, dtype=np.float32, rng=None):
        super().__init__(dtype)
        if dim_model % num_heads:
            raise ValueError(f"dim_model ({dim_model}) must be divisible by num_heads ({num_heads})")
        rng = _rng(rng)
        self.num_heads = num_heads
        self.head_dim = dim_model // num_heads
        self.scale = float(self.head_dim) ** -0.5  # a Python float, so float32 stays float32
        self.qkv = Linear(dim_model, 3 * dim_model, dtype=dtype, rng=rng)  # Q | K | V
        self.out = Linear(dim_model, dim_model, dtype=dtype, rng=rng)  # O

    def forward(self, x: np.ndarray) -> np.ndarray:
        b, t, dim = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv.forward(x).reshape(b, t, 3, h, d).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, d)
        q, k, v = qkv  # each (B, H, T, d)
        scores = q @ k.transpose(0, 1, 3, 2)  # (B, H, T, T): query i against key j
        scores *= self.scale
        scores -= scores.max(axis=-1, keepdims=True)  # softmax is shift-invariant; this avoids overflow
        attn = np.exp(scores)
        attn /= attn.sum(axis=-1, keepdims=True)  # (B, H, T, T): each row sums to 1
        self.q, self.k, self.v, self.attn = q, k, v, attn
        context = attn @ v  # (B, H, T, d): weighted average of the values
        context = context.transpose(0, 2, 1, 3).reshape(b, t, dim)  # heads side by side: (B, T, D)
        return self.out.forward(context)

    def backward(self, grad_out: np.ndarray, lr: float) -> np.ndarray:
        b, t, dim = grad_out.shape
        h, d = self.num_heads, self.head_dim
        q, k, v, attn = self.q, self.k, self.v, self.attn
        g_context = self.out.backward(grad_out, lr)  # (B, T, D)
        g_context = g_context.reshape(b, t, h, d).transpose(0, 2, 1, 3)  # (B, H, T, d)
        g_qkv = np.empty((b, t, 3, h, d), self.dtype)  # dQ, dK, dV side by side, as qkv produced them
        g_qkv[:, :, 2] = (attn.transpose(0, 1, 3, 2) @ g_context).transpose(0, 2, 1, 3)  # dV = A^T g
        g_attn = g_context @ v.transpose(0, 1, 3, 2)  # dA = g V^T: (B, H, T, T)
        # Softmax backward, row by row: dS = A * (dA - <dA, A>), then the 1/sqrt(d) of the scores.
        g_scores = attn * (g_attn - (g_attn * attn).sum(axis=-1, keepdims=True))
        g_scores *= self.scale
        g_qkv[:, :, 0] = (g_scores @ k).transpose(0, 2, 1, 3)  # dQ = dS K: (B, T, H, d)
        g_qkv[:, :, 1] = (g_scores.transpose(0, 1, 3, 2) @ q).transpose(0, 2, 1, 3)  # dK = dS^T Q
        return self.qkv.backward(g_qkv.reshape(b, t, 3 * dim), lr)  # (B, T, D)


class FeedForward(Layer):
    """Position-wise feed-forward network: Linear(D, F) -> ReLU -> Linear(F, D), applied to every token alone.

    Backward: the ReLU passes the gradient where its input was positive and blocks it elsewhere.
    """

    def __init__(self, dim_model: int, dim_hidden: int, *, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = _rng(rng)
        self.fc1 = Linear(dim_model, dim_hidden, dtype=dtype, rng=rng)
        self.fc2 = Linear(dim_hidden, dim_model, dtype=dtype, rng=rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        hidden = self.fc1.forward(x)  # (B, T, F)
        self.active = hidden > 0  # where the ReLU lets its input through
        return self.fc2.forward(hidden * self.active)  # (B, T, D)

    def backward(self, grad_out: np.ndarray, lr: float) -> np.ndarray:
        g_hidden = self.fc2.backward(grad_out, lr) * self.active  # (B, T, F)
        return self.fc1.backward(g_hidden, lr)  # (B, T, D)


class ViTEncoderLayer(Layer):
    """One encoder block, post-norm as in the original Transformer:

        x = norm1(x + attn(x))    # tokens exchange information
        x = norm2(x + ff(x))      # each token is transformed alone

    Backward runs the same steps in reverse. A residual connection ``y = x + f(x)`` sends its gradient both
    straight through and through f, and the two are added: dx = g + f.backward(g).
    """

    def __init__(self, dim_model: int, num_heads: int, dim_ff: int, *, eps: float = 1e-5, dtype=np.float32,
                 rng=None):
        super().__init__(dtype)
        rng = _rng(rng)
        self.attn = MultiHeadSelfAttention(dim_model, num_heads, dtype=dtype, rng=rng)
        self.norm1 = LayerNorm(dim_model, eps, dtype=dtype)
        self.ff = FeedForward(dim_model, dim_ff, dtype=dtype, rng=rng)
        self.norm2 = LayerNorm(dim_model, eps, dtype=dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self.norm1.forward(x + self.attn.forward(x))  # (B, T, D)
        return self.norm2.forward(x + self.ff.forward(x))  # (B, T, D)

    def backward(self, grad_out: np.ndarray, lr: float) -> np.ndarray:
        g = self.norm2.backward(grad_out, lr)  # gradient at x + ff(x)
        g = g + self.ff.backward(g, lr)  # residual: straight through plus through ff
        g = self.norm1.backward(g, lr)  # gradient at x + attn(x)
        return g + self.attn.backward(g, lr)  # (B, T, D)


class PatchEmbedding(Layer):
    """Cut images into non-overlapping P x P patches and project each to a D-dimensional token.

    (B, H, W, C) images (channels last) -> (B, N, D) tokens, N = (H/P) * (W/P), patches in row-major order.
    A patch is flattened in (row, column, channel) order to a vector of P*P*C numbers, and ``proj`` (a
    ``Linear(P*P*C, D)``) maps it to a token: the same linear map for every patch, which is what the strided
    convolution of the PyTorch model computes (its (D, C, P, P) weight is this (P*P*C, D) matrix reshaped).

    Backward: the projection's backward, then the patches put back in their places (the cut is a
    rearrangement, so its backward is the inverse rearrangement).
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim_model: int, *, dtype=np.float32,
                 rng=None):
        super().__init__(dtype)
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid = image_size // patch_size  # patches per side
        self.num_patches = self.grid * self.grid
        self.proj = Linear(patch_size * patch_size * in_channels, dim_model, dtype=dtype, rng=rng)

    def patchify(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, C) -> (B, N, P*P*C): each row one patch, flattened row by row, channels innermost."""
        b, g, p, c = images.shape[0], self.grid, self.patch_size, self.in_channels
        expected = (self.image_size, self.image_size, c)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected images of shape (batch, {', '.join(map(str, expected))}), "
                             f"got {images.shape}")
        x = images.reshape(b, g, p, g, p, c)  # (B, grid row, row in patch, grid column, column in patch, C)
        return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)

    def unpatchify(self, patches: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`patchify`: (B, N, P*P*C) -> (B, H, W, C)."""
        b, g, p, c = patches.shape[0], self.grid, self.patch_size, self.in_channels
        x = patches.reshape(b, g, g, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, g * p, g * p, c)

    def forward(self, images: np.ndarray) -> np.ndarray:
        return self.proj.forward(self.patchify(images))  # (B, N, D)

    def backward(self, grad_out: np.ndarray, lr: float) -> np.ndarray:
        return self.unpatchify(self.proj.backward(grad_out, lr))  # (B, H, W, C)
