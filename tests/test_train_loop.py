"""Config precedence and validation, AdamW groups, layer decay, the schedule, EMA, gradient accumulation and
seed 001's train_epoch / evaluate / save_checkpoint / load_checkpoint."""

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from vitkit import VisionTransformer
from vitkit.data import DeviceLoader, load_dataset
from vitkit.errors import CheckpointError, ConfigError
from vitkit.train import evaluate, load_checkpoint, load_run_config, save_checkpoint, train_epoch
from vitkit.train.ema import ModelEma
from vitkit.train.config import OptimConfig
from vitkit.train.optim import WarmupCosine, build_optimizer, param_groups


def tiny_model(**kw):
    return VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=10, embed_dim=32, depth=2,
                             num_heads=2, mlp_ratio=2.0, **kw)


def test_defaults_then_yaml_then_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"optim": {"lr": 0.01, "min_lr": 0.0}, "train": {"epochs": 7}}))
    cfg = load_run_config(recipe, ["optim.lr=3e-4", "train.ema_decay=0.99", "report=false"])
    assert cfg.optim.lr == 3e-4  # command line beats YAML; '3e-4' is a number on a command line
    assert cfg.optim.min_lr == 0.0 and cfg.train.epochs == 7  # YAML beats defaults
    assert cfg.optim.weight_decay == 0.05 and cfg.data.dataset == "digits"  # defaults
    assert cfg.train.ema_decay == 0.99 and cfg.report is False


@pytest.mark.parametrize("sets, message", [
    (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["train.epochs=ten"], "config key 'train.epochs' must be an integer, got 'ten'"),
    (["model.embed_dimm=8"], "unknown config key 'model.embed_dimm'"),
    (["model.name=vit_tiny_patch16_2244"], "unknown model name 'vit_tiny_patch16_2244'"),
    (["optim"], "--set expects section.key=value"),
])
def test_config_errors_name_the_key(tmp_path, sets, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_run_config(recipe, sets)


def test_no_weight_decay_on_norms_biases_position_embedding_and_cls_token():
    model = tiny_model()
    groups = param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed | plain == set(names.values()) and not decayed & plain
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias", "blocks.0.norm1.weight",
            "blocks.1.attn.qkv.bias", "patch_embed.proj.bias"} <= plain
    assert decayed == {n for n, p in model.named_parameters() if p.ndim >= 2 and n not in ("pos_embed", "cls_token")}


def test_layer_decay_scales_lr_by_depth():
    model = tiny_model()  # depth 2: embeddings 0, blocks 1-2, head 3
    scale = {}
    for g in param_groups(model, 0.05, layer_decay=0.5):
        for p in g["params"]:
            scale[next(n for n, q in model.named_parameters() if q is p)] = g["lr_scale"]
    assert scale["patch_embed.proj.weight"] == scale["pos_embed"] == 0.5 ** 3
    assert scale["blocks.0.attn.qkv.weight"] == 0.5 ** 2 and scale["blocks.1.mlp.fc1.bias"] == 0.5
    assert scale["head.weight"] == scale["norm.bias"] == 1.0


def test_cpu_optimizer_is_fused_adamw_with_the_reference_update():
    """The fused kernel on the CPU takes the same steps as PyTorch's reference AdamW (for-loop)."""
    torch.manual_seed(0)
    model, reference = tiny_model(qkv_bias=False), tiny_model(qkv_bias=False)  # no key bias: see below
    reference.load_state_dict(model.state_dict())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    fused = build_optimizer(model, cfg, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(param_groups(reference, cfg.weight_decay), lr=cfg.lr, foreach=False)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        for m, opt in ((model, fused), (reference, plain)):
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert not torch.equal(p, start[name]), name
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_warmup_then_cosine():
    f = WarmupCosine(warmup=4, total=14, min_factor=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 14))


def test_ema_update():
    model = nn.Linear(2, 2)
    ema = ModelEma(model, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * model.weight)


def test_gradient_accumulation_equals_the_big_batch():
    data = load_dataset("digits", split="train")
    results = []
    for batch, accum in ((64, 1), (32, 2)):
        torch.manual_seed(0)
        model = tiny_model(qkv_bias=False)  # a key bias has an exactly-zero gradient: Adam would amplify noise
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = DeviceLoader(data, batch, shuffle=False, drop_last=True)
        train_epoch(model, loader, nn.CrossEntropyLoss(), opt, "cpu", 0, accum_steps=accum)
        results.append(model.state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_seed_functions_train_evaluate_and_checkpoint(tmp_path):
    train_set, test_set = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    crit = nn.CrossEntropyLoss()
    loader = DataLoader(train_set, batch_size=64, shuffle=True)  # a plain DataLoader of (image, label)
    first = train_epoch(model, loader, crit, opt, torch.device("cpu"), 0)
    for epoch in range(1, 4):
        last = train_epoch(model, loader, crit, opt, torch.device("cpu"), epoch)
    assert set(first) == {"loss", "accuracy"} and last["loss"] < first["loss"] and last["accuracy"] > 0.5
    metrics = evaluate(model, DataLoader(test_set, batch_size=100), crit, "cpu")
    assert 0.5 < metrics["accuracy"] <= metrics["top5"] <= 1.0

    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, opt, 3, metrics, path)
    restored, opt2 = tiny_model(), None
    opt2 = torch.optim.AdamW(restored.parameters(), lr=3e-3)
    epoch, saved = load_checkpoint(restored, opt2, path)
    assert epoch == 3 and saved["accuracy"] == metrics["accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]

    with pytest.raises(CheckpointError, match="does not fit this model.*shape mismatch"):
        load_checkpoint(VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=10, embed_dim=16,
                                          depth=2, num_heads=2), None, path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.pt is truncated"):
        load_checkpoint(model, None, tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        load_checkpoint(model, None, tmp_path / "empty.pt")
