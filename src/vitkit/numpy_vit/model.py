"""The whole classifier: patches -> tokens -> encoder -> [CLS] token -> class scores, and its loss.

Forward, for a batch of B images of H x W pixels with C channels (channels last):

    images (B, H, W, C)
      -> patch embedding          (B, N, D)      N = (H/P)^2 patches, each a D-vector
      -> prepend [CLS]            (B, N+1, D)    one learned token that will collect the image's summary
      -> + position embedding     (B, N+1, D)    a learned vector per position, so order is not lost
      -> L encoder layers         (B, N+1, D)
      -> take the [CLS] token     (B, D)
      -> linear head              (B, K)         logits, one score per class

Learning is the same path backwards: :meth:`ViTClassifier.cross_entropy_loss` gives dL/dlogits, and
:meth:`ViTClassifier.backward` hands it from layer to layer down to the patch embedding, each layer
updating its own weights on the way (see :mod:`vitkit.numpy_vit.layers`).
"""

from __future__ import annotations

import numpy as np

from .layers import Layer, Linear, PatchEmbedding, ViTEncoderLayer, _rng

__all__ = ["ViTClassifier"]


class ViTClassifier(Layer):
    """A Vision Transformer classifier with a [CLS] token and a learned position embedding.

    ``dtype`` (float32 by default, float64 for gradient checks), ``eps`` (of the layer norms) and ``rng``
    (a seed or a ``numpy.random.Generator``, for the initial weights) are keyword-only extras.

    Parameters of its own: ``cls_token`` (D,) and ``pos_embed`` (N+1, D), the first row for [CLS].
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim_model: int, num_heads: int,
                 dim_ff: int, num_layers: int, num_classes: int, *, eps: float = 1e-5, dtype=np.float32,
                 rng=None):
        super().__init__(dtype)
        rng = _rng(rng)
        self.config = dict(image_size=image_size, patch_size=patch_size, in_channels=in_channels,
                           dim_model=dim_model, num_heads=num_heads, dim_ff=dim_ff, num_layers=num_layers,
                           num_classes=num_classes, eps=eps)
        self.patch_embed = PatchEmbedding(image_size, patch_size, in_channels, dim_model, dtype=dtype, rng=rng)
        num_tokens = self.patch_embed.num_patches + 1
        self.params["cls_token"] = np.zeros(dim_model, self.dtype)
        self.params["pos_embed"] = (0.02 * rng.standard_normal((num_tokens, dim_model))).astype(self.dtype)
        self.layers = [ViTEncoderLayer(dim_model, num_heads, dim_ff, eps=eps, dtype=dtype, rng=rng)
                       for _ in range(num_layers)]
        self.head = Linear(dim_model, num_classes, dtype=dtype, rng=rng)

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Logits (B, num_classes) of images (B, H, W, C)."""
        images = np.asarray(images, dtype=self.dtype)
        patches = self.patch_embed.forward(images)  # (B, N, D)
        b, _, dim = patches.shape
        cls = np.broadcast_to(self.params["cls_token"], (b, 1, dim))  # (B, 1, D): the same token for every image
        x = np.concatenate([cls, patches], axis=1) + self.params["pos_embed"]  # (B, N+1, D)
        for layer in self.layers:
            x = layer.forward(x)  # (B, N+1, D)
        self.num_tokens = x.shape[1]
        return self.head.forward(x[:, 0])  # the [CLS] token alone decides: (B, K)

    def backward(self, grad_logits: np.ndarray, lr: float) -> np.ndarray:
        """Backpropagate dL/dlogits (B, K) through the head, the encoder and the patch embedding, updating
        every weight with SGD; returns dL/dimages (B, H, W, C)."""
        g_cls = self.head.backward(grad_logits, lr)  # (B, D)
        b, dim = g_cls.shape
        g = np.zeros((b, self.num_tokens, dim), self.dtype)  # only [CLS] reached the head; the rest get 0
        g[:, 0] = g_cls
        for layer in reversed(self.layers):
            g = layer.backward(g, lr)  # (B, N+1, D)
        # x = concat(cls, patches) + pos: pos and cls are shared by the batch, so their gradients are sums.
        self.grads["pos_embed"] = g.sum(axis=0)  # (N+1, D)
        self.grads["cls_token"] = g[:, 0].sum(axis=0)  # (D,)
        grad_images = self.patch_embed.backward(g[:, 1:], lr)  # (B, H, W, C)
        self.sgd_step(lr)
        return grad_images

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted class indices (B,), computed in batches."""
        return np.concatenate([self.forward(images[i:i + batch_size]).argmax(axis=1)
                               for i in range(0, len(images), batch_size)])

    @staticmethod
    def cross_entropy_loss(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy of logits (B, K) against integer labels (B,), and its gradient dL/dlogits.

        With p = softmax(logits), the loss of a sample is -log p[label], and its gradient with respect to the
        logits is p - onehot(label): push up the right class, push down the others in proportion to the
        probability they got. Averaging over the batch divides the gradient by B.
        """
        labels = np.asarray(labels)
        b = logits.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)  # (B, K): stable log-softmax
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -log_probs[np.arange(b), labels].mean()
        grad = np.exp(log_probs)  # softmax probabilities (B, K)
        grad[np.arange(b), labels] -= 1.0
        return float(loss), grad / b

    # ----------------------------------------------------------------------------------------------------------
    # The same network in the PyTorch model (vitkit.VisionTransformer)

    def torch_config(self) -> dict:
        """Keyword arguments of ``vitkit.VisionTransformer`` that build this very network (post-norm, ReLU,
        no final norm, the same layer-norm eps), so that :meth:`torch_state_dict` loads into it."""
        c = self.config
        return dict(img_size=c["image_size"], patch_size=c["patch_size"], in_channels=c["in_channels"],
                    num_classes=c["num_classes"], embed_dim=c["dim_model"], depth=c["num_layers"],
                    num_heads=c["num_heads"], mlp_ratio=c["dim_ff"] / c["dim_model"], qkv_bias=True,
                    norm_style="post", act="relu", final_norm=False, norm_eps=c["eps"])

    def torch_state_dict(self) -> dict[str, np.ndarray]:
        """The weights under the PyTorch model's (timm's) names and layouts, as NumPy arrays; load them with
        ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.

        Linear weights are transposed to PyTorch's (out, in); the patch projection (P*P*C, D), whose rows run
        over (row, column, channel) of a patch, becomes the convolution weight (D, C, P, P).
        """
        p, c = self.patch_embed.patch_size, self.patch_embed.in_channels
        dim = self.params["cls_token"].shape[0]

        def linear(prefix: str, layer: Linear) -> dict:
            return {f"{prefix}.weight": layer.params["weight"].T.copy(), f"{prefix}.bias": layer.params["bias"].copy()}

        proj = self.patch_embed.proj.params
        sd = {"patch_embed.proj.weight": proj["weight"].reshape(p, p, c, dim).transpose(3, 2, 0, 1).copy(),
              "patch_embed.proj.bias": proj["bias"].copy(),
              "cls_token": self.params["cls_token"].reshape(1, 1, dim).copy(),
              "pos_embed": self.params["pos_embed"][None].copy()}
        for i, layer in enumerate(self.layers):
            sd.update(linear(f"blocks.{i}.attn.qkv", layer.attn.qkv))
            sd.update(linear(f"blocks.{i}.attn.proj", layer.attn.out))
            sd.update(linear(f"blocks.{i}.mlp.fc1", layer.ff.fc1))
            sd.update(linear(f"blocks.{i}.mlp.fc2", layer.ff.fc2))
            for norm in ("norm1", "norm2"):
                ln = getattr(layer, norm).params
                sd[f"blocks.{i}.{norm}.weight"] = ln["gamma"].copy()
                sd[f"blocks.{i}.{norm}.bias"] = ln["beta"].copy()
        sd.update(linear("head", self.head))
        return sd
