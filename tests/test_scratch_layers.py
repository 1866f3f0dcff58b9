"""vitkit.numpy_vit layers: finite-difference gradient checks (float64) of every input and parameter gradient,
the SGD step, shapes and dtypes."""

import numpy as np
import pytest

from vitkit.numpy_vit import (FeedForward, LayerNorm, Linear, MultiHeadSelfAttention, PatchEmbedding, ViTClassifier,
                            ViTEncoderLayer)

F64 = np.float64
TOL = 1e-6


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to the largest entry: ||a - b||_inf / max(||a||_inf, ||b||_inf)."""
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-12)
    return float(np.abs(a - b).max() / scale)


def numerical_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of x (perturbed in place)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = f()
        x[i] = old - h
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def check_layer(layer, x: np.ndarray, seed: int = 0) -> None:
    """The layer's input gradient and every parameter gradient against finite differences of
    L = sum(forward(x) * R), for a fixed random R (so dL/d(output) = R)."""
    r = np.random.default_rng(seed).standard_normal(layer.forward(x).shape)

    def loss() -> float:
        return float((layer.forward(x) * r).sum())

    loss()
    grad_x = layer.backward(r, lr=0.0)
    assert grad_x.shape == x.shape
    grads = {k: g.copy() for k, g in layer.named_grads().items()}
    params = layer.named_parameters()
    assert grads.keys() == params.keys() and params
    assert rel_error(grad_x, numerical_grad(loss, x)) <= TOL, "input gradient"
    for name, p in params.items():
        assert grads[name].shape == p.shape, name
        err = rel_error(grads[name], numerical_grad(loss, p))
        assert err <= TOL, f"{name}: relative error {err:.2e}"


def randn(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


def test_linear_gradients():
    check_layer(Linear(5, 4, dtype=F64, rng=0), randn(2, 3, 5))


def test_layer_norm_gradients():
    ln = LayerNorm(6, dtype=F64)
    rng = np.random.default_rng(3)  # non-trivial gamma and beta
    ln.params["gamma"][:] = rng.uniform(0.5, 1.5, 6)
    ln.params["beta"][:] = rng.standard_normal(6)
    check_layer(ln, randn(2, 3, 6))


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_attention_gradients(num_heads):
    attn = MultiHeadSelfAttention(8, num_heads, dtype=F64, rng=0)
    rng = np.random.default_rng(4)
    for name, p in attn.named_parameters().items():  # non-zero biases too
        p[:] = rng.standard_normal(p.shape) * (0.5 if "weight" in name else 0.1)
    check_layer(attn, randn(2, 5, 8))


def test_feed_forward_gradients():
    ff = FeedForward(6, 10, dtype=F64, rng=0)
    ff.fc1.params["bias"][:] = np.random.default_rng(5).standard_normal(10) * 0.1
    check_layer(ff, randn(2, 4, 6))


def test_encoder_layer_gradients():
    check_layer(ViTEncoderLayer(8, 2, 12, dtype=F64, rng=0), randn(2, 5, 8))


def test_patch_embedding_gradients():
    check_layer(PatchEmbedding(6, 3, 2, 5, dtype=F64, rng=0), randn(2, 6, 6, 2))


def test_classifier_gradients():
    """The whole classifier, through the cross-entropy loss: image gradient and every parameter gradient."""
    model = ViTClassifier(image_size=4, patch_size=2, in_channels=2, dim_model=8, num_heads=2, dim_ff=12,
                          num_layers=2, num_classes=3, dtype=F64, rng=0)
    rng = np.random.default_rng(6)
    model.params["cls_token"][:] = rng.standard_normal(8) * 0.5
    model.head.params["bias"][:] = rng.standard_normal(3)
    images, labels = randn(3, 4, 4, 2, seed=7), np.array([0, 2, 1])

    def loss() -> float:
        return ViTClassifier.cross_entropy_loss(model.forward(images), labels)[0]

    _, grad_logits = ViTClassifier.cross_entropy_loss(model.forward(images), labels)
    grad_images = model.backward(grad_logits, lr=0.0)
    grads = {k: g.copy() for k, g in model.named_grads().items()}
    params = model.named_parameters()
    assert grads.keys() == params.keys()
    assert len(params) == 2 + 2 + 2 * 12 + 2  # cls, pos; patch proj; 12 per layer; head
    assert rel_error(grad_images, numerical_grad(loss, images)) <= TOL
    for name, p in params.items():
        err = rel_error(grads[name], numerical_grad(loss, p))
        assert err <= TOL, f"{name}: relative error {err:.2e}"


def test_cross_entropy_loss_and_gradient():
    logits = randn(4, 5)
    labels = np.array([0, 4, 2, 2])
    loss, grad = ViTClassifier.cross_entropy_loss(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(probs[np.arange(4), labels]).mean(), rel=1e-12)
    f = lambda: ViTClassifier.cross_entropy_loss(logits, labels)[0]  # noqa: E731
    assert rel_error(grad, numerical_grad(f, logits)) <= TOL
    # Huge logits do not overflow.
    loss, grad = ViTClassifier.cross_entropy_loss(np.array([[1000.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(1000.0) and np.isfinite(grad).all()


def test_backward_takes_one_sgd_step():
    """backward(g, lr) leaves every parameter at p - lr * dL/dp, with gradients taken before the step."""
    model = ViTClassifier(8, 4, 1, 8, 2, 16, 2, 3, dtype=F64, rng=0)
    images, labels = randn(4, 8, 8, 1), np.array([0, 1, 2, 1])
    before = {k: p.copy() for k, p in model.named_parameters().items()}
    _, g = ViTClassifier.cross_entropy_loss(model.forward(images), labels)
    grad_images_no_step = model.backward(g, lr=0.0)
    expected = {k: before[k] - 0.1 * grad for k, grad in model.named_grads().items()}
    assert all(np.array_equal(p, before[k]) for k, p in model.named_parameters().items())  # lr=0: no change
    model.forward(images)
    grad_images = model.backward(g, lr=0.1)
    np.testing.assert_allclose(grad_images, grad_images_no_step, rtol=1e-12, atol=0)
    for k, p in model.named_parameters().items():
        np.testing.assert_allclose(p, expected[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_training_lowers_the_loss():
    model = ViTClassifier(8, 4, 1, 16, 2, 32, 1, 2, rng=0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 2, 16)
    first, _ = ViTClassifier.cross_entropy_loss(model.forward(images), labels)
    for _ in range(30):
        loss, g = ViTClassifier.cross_entropy_loss(model.forward(images), labels)
        model.backward(g, 0.1)
    assert loss < 0.5 * first


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_everywhere(dtype):
    model = ViTClassifier(8, 4, 3, 16, 4, 32, 2, 5, dtype=dtype, rng=0)
    images = randn(3, 8, 8, 3)  # float64 input: cast to the model's dtype
    logits = model.forward(images)
    _, g = ViTClassifier.cross_entropy_loss(logits, np.array([0, 1, 4]))
    grad_images = model.backward(g, 0.01)
    assert logits.dtype == dtype and grad_images.dtype == dtype and logits.shape == (3, 5)
    for name, p in model.named_parameters().items():
        assert p.dtype == dtype, name
    for name, grad in model.named_grads().items():
        assert grad.dtype == dtype, name


def test_shapes_and_patch_order():
    """Patches are cut row by row, each flattened (row, column, channel); unpatchify inverts it."""
    pe = PatchEmbedding(image_size=4, patch_size=2, in_channels=3, dim_model=5, dtype=F64, rng=0)
    images = np.arange(2 * 4 * 4 * 3, dtype=F64).reshape(2, 4, 4, 3)
    patches = pe.patchify(images)
    assert patches.shape == (2, 4, 12)
    np.testing.assert_array_equal(patches[1, 1], images[1, 0:2, 2:4, :].reshape(-1))  # top right patch
    np.testing.assert_array_equal(pe.unpatchify(patches), images)
    assert pe.forward(images).shape == (2, 4, 5)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 4, 4, 3\)"):
        pe.forward(images[:, :, :, :1])


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        PatchEmbedding(10, 3, 1, 8)


def test_same_seed_same_weights():
    a = ViTClassifier(8, 4, 1, 8, 2, 16, 1, 3, rng=5).named_parameters()
    b = ViTClassifier(8, 4, 1, 8, 2, 16, 1, 3, rng=5).named_parameters()
    assert all(np.array_equal(a[k], b[k]) for k in a)
