"""A Vision Transformer written from scratch in NumPy, with every gradient worked out by hand.

Read it top to bottom to see how a ViT learns:

1. :mod:`vitkit.numpy_vit.layers`: the layers, each with ``forward(x)`` and ``backward(grad_out, lr)``, which
   returns the gradient for the layer before it and updates the layer's own weights with SGD:
   :class:`LayerNorm`, :class:`MultiHeadSelfAttention`, :class:`FeedForward`, :class:`ViTEncoderLayer`,
   :class:`PatchEmbedding` (and the :class:`Linear` map they are made of).
2. :mod:`vitkit.numpy_vit.model`: :class:`ViTClassifier`, patches to class scores with a [CLS] token, and
   its ``cross_entropy_loss``.
3. :mod:`vitkit.numpy_vit.data`: :func:`generate_synthetic_images`, stripes whose orientation is the class.
4. :mod:`vitkit.numpy_vit.runner`: the training loop, :class:`ViTRunner` and the ``vitkit scratch`` command.

    >>> from vitkit.numpy_vit import ViTClassifier, generate_synthetic_images
    >>> images, labels = generate_synthetic_images(64, 16, 3, 10, random_seed=0)
    >>> model = ViTClassifier(16, 4, 3, dim_model=32, num_heads=4, dim_ff=64, num_layers=2, num_classes=10)
    >>> loss, grad = ViTClassifier.cross_entropy_loss(model.forward(images), labels)
    >>> _ = model.backward(grad, lr=0.1)  # one step of SGD

NumPy only: importing this package never imports torch. The same network in PyTorch is
``vitkit.VisionTransformer(**model.torch_config())`` with the weights of ``model.torch_state_dict()``.
"""

from .data import generate_synthetic_images
from .layers import FeedForward, Layer, LayerNorm, Linear, MultiHeadSelfAttention, PatchEmbedding, ViTEncoderLayer
from .model import ViTClassifier
from .runner import ViTRunner, accuracy, blas_threads, main, train_classifier

__all__ = ["Layer", "Linear", "LayerNorm", "MultiHeadSelfAttention", "FeedForward", "ViTEncoderLayer",
           "PatchEmbedding", "ViTClassifier", "generate_synthetic_images", "ViTRunner", "train_classifier",
           "accuracy", "blas_threads", "main"]
