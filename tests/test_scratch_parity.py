"""vitkit.numpy_vit against the PyTorch model configured to compute the same network (post-norm, ReLU, no final
norm): same logits in float64, and the same weights after one SGD step on the same batch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.numpy_vit import ViTClassifier

CONFIGS = {
    "rgb": dict(image_size=8, patch_size=4, in_channels=3, dim_model=16, num_heads=4, dim_ff=32, num_layers=2,
                num_classes=5),
    "grey-patch2": dict(image_size=6, patch_size=2, in_channels=1, dim_model=12, num_heads=3, dim_ff=20,
                        num_layers=3, num_classes=4),
}


def twins(cfg: dict, seed: int = 0):
    """A float64 NumPy model with non-trivial weights everywhere, and the PyTorch model holding a copy."""
    model = ViTClassifier(**cfg, dtype=np.float64, rng=seed)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.named_parameters().items():  # biases, gammas, cls token: all away from their init
        if p.ndim == 1 or name in ("pos_embed",):
            p += 0.1 * rng.standard_normal(p.shape)
    torch_model = vitkit.VisionTransformer(**model.torch_config()).double()
    missing, unexpected = torch_model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in model.torch_state_dict().items()}, strict=True)
    assert not missing and not unexpected
    return model, torch_model


def batch(cfg: dict, n: int = 6, seed: int = 1):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, cfg["image_size"], cfg["image_size"], cfg["in_channels"]))  # (B, H, W, C)
    return images, rng.integers(0, cfg["num_classes"], n)


def to_torch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # channels last -> channels first


def test_torch_config_is_the_scratch_network():
    model = ViTClassifier(**CONFIGS["rgb"], rng=0)
    cfg = vitkit.ViTConfig(**model.torch_config())
    assert (cfg.norm_style, cfg.act, cfg.final_norm, cfg.pool, cfg.class_token) == ("post", "relu", False, "cls", True)
    assert cfg.mlp_dim == CONFIGS["rgb"]["dim_ff"] and cfg.norm_eps == model.config["eps"]


@pytest.mark.parametrize("name", CONFIGS)
def test_same_logits(name):
    cfg = CONFIGS[name]
    model, torch_model = twins(cfg)
    images, _ = batch(cfg)
    with torch.no_grad():
        expected = torch_model.eval()(to_torch(images)).numpy()
    logits = model.forward(images)
    assert logits.shape == expected.shape == (6, cfg["num_classes"])
    assert np.abs(logits - expected).max() <= 1e-6


@pytest.mark.parametrize("name", CONFIGS)
def test_same_loss_gradients_and_weights_after_one_sgd_step(name):
    cfg, lr = CONFIGS[name], 0.5
    model, torch_model = twins(cfg)
    images, labels = batch(cfg)
    before = model.torch_state_dict()

    torch_images = to_torch(images).requires_grad_(True)
    torch_loss = F.cross_entropy(torch_model.train()(torch_images), torch.from_numpy(labels))
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=lr)
    optimizer.zero_grad()
    torch_loss.backward()
    optimizer.step()

    loss, grad_logits = ViTClassifier.cross_entropy_loss(model.forward(images), labels)
    grad_images = model.backward(grad_logits, lr)

    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    np.testing.assert_allclose(grad_images, torch_images.grad.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-9)
    after = model.torch_state_dict()
    torch_after = torch_model.state_dict()
    assert after.keys() == torch_after.keys()
    for key, value in after.items():
        np.testing.assert_allclose(value, torch_after[key].numpy(), rtol=0, atol=1e-9, err_msg=key)
        assert not np.allclose(value, before[key], rtol=0, atol=1e-6), f"{key} did not move"
