"""Fine-tuning from a backbone: the head-only warm-up (the backbone's weights do not move until it ends, then
warm up and decay), its refusals, and the finetune-clip / finetune-dinov2 / finetune-siglip recipes end to end
on a folder of images, each from a small timm model of its family saved as a state dict."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from test_train_imagefolder import cli, make_layout, one_sentence, sets_args

import vitkit
from vitkit import VisionTransformer
from vitkit.errors import ConfigError
from vitkit.train.config import OptimConfig, RunConfig, check_run_length, load_run_config
from vitkit.train.optim import WarmupCosine, build_optimizer, build_scheduler

# ---------------------------------------------------------------------------------------------------------
# The schedule


def test_warmup_cosine_with_a_start_is_zero_then_the_same_curve_shifted():
    late = WarmupCosine(warmup=2, total=10, min_factor=0.0, start=4)
    plain = WarmupCosine(warmup=2, total=6, min_factor=0.0)
    assert [late(s) for s in range(4)] == [0.0] * 4
    assert [late(s) for s in range(4, 12)] == [plain(s) for s in range(8)]
    assert late(5) == 1.0 and late(10) == pytest.approx(0.0)


def test_a_schedule_saved_before_head_warmups_existed_restores():
    scheduler_state = {"warmup": 2, "total": 10, "min_factor": 0.1}  # a WarmupCosine's __dict__ without start
    f = WarmupCosine(0, 1, 1.0)
    f.__dict__.clear()
    f.__dict__.update(scheduler_state)
    assert [f(s) for s in (0, 1)] == [0.5, 1.0]


def test_head_warmup_trains_the_head_alone_then_the_whole_model():
    """3 steps per epoch, head alone for 1 epoch, warm-up 1 epoch, 4 epochs: the backbone's weights stay bit
    for bit until step 3, its lr then follows warm-up + cosine over the remaining 9 steps; the head's lr is
    the plain schedule from step 0."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=3)
    cfg = OptimConfig(lr=1e-2, min_lr=0.0, head_warmup_epochs=1, warmup_epochs=1, layer_decay=0.5)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=3, epochs=4)
    heads = [g for g in optimizer.param_groups if g["head"]]
    assert sum(p.numel() for g in heads for p in g["params"]) == sum(p.numel() for p in model.head.parameters())
    head_curve, body_curve = WarmupCosine(3, 12, 0.0), WarmupCosine(3, 12, 0.0, start=3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    for step in range(6):
        for g in optimizer.param_groups:
            curve = head_curve if g["head"] else body_curve
            assert g["lr"] == pytest.approx(1e-2 * g["lr_scale"] * curve(step)), (step, g["head"])
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        moved = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
        if step < 3:
            assert moved == {"head.weight", "head.bias"}, step
        else:
            assert "blocks.0.attn.qkv.weight" in moved and "patch_embed.proj.weight" in moved, step


def test_without_head_warmup_the_head_shares_the_groups():
    model = VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    assert len(optimizer.param_groups) == 2 and not any(g["head"] for g in optimizer.param_groups)


def test_head_warmup_needs_weights_and_room_in_the_run():
    with pytest.raises(ConfigError, match="model.init names no weights; set model.init=WEIGHTS"):
        load_run_config(None, ["optim.head_warmup_epochs=1"])
    cfg = load_run_config(None, ["optim.head_warmup_epochs=2", "optim.warmup_epochs=1", "train.epochs=3",
                                 "model.init=weights.safetensors"])
    with pytest.raises(ConfigError, match=r"optim.head_warmup_epochs 2 plus optim.warmup_epochs 1 \(20 \+ 10 "
                                          r"steps\) is not shorter than the run \(3 epochs, 30 steps\)"):
        check_run_length(cfg, 10)
    check_run_length(RunConfig(), 10)
    with pytest.raises(ConfigError, match="head_warmup_epochs"):
        load_run_config(None, ["optim.head_warmup_epochs=-1"])


# ---------------------------------------------------------------------------------------------------------
# The recipes

SMALL = ["data.img_size=32", "data.batch_size=4", "data.eval_batch_size=8", "data.randaugment=false",
         "data.workers=0", "report=false", "device=cpu", "model.num_heads=2"]  # width 32: heads not D // 64
FAMILIES = {  # recipe: (timm architecture, small overrides, the family's mean)
    "finetune-clip": ("vit_base_patch16_clip_224", {}, (0.48145466, 0.4578275, 0.40821073)),
    "finetune-dinov2": ("vit_small_patch14_dinov2", {"init_values": 1e-5},
                        (0.485, 0.456, 0.406)),
    "finetune-siglip": ("vit_base_patch16_siglip_224", {}, (0.5, 0.5, 0.5)),
    "finetune-dinov3": ("vit_small_patch16_dinov3", {}, (0.485, 0.456, 0.406)),
}


def backbone_file(tmp_path, arch: str, overrides: dict):
    """A small timm model of the family (2 blocks, width 32), saved as its state dict: what a user downloads."""
    timm = pytest.importorskip("timm")
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0, **overrides)
    model = timm.create_model(arch, **kwargs).eval()
    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def recipe_model(recipe: str) -> dict:
    """The architecture keys a recipe's model section says (those that are not regularisation)."""
    section = yaml.safe_load((Path(vitkit.__file__).parent / "configs" / f"{recipe}.yaml").read_text())["model"]
    return {k: v for k, v in section.items() if k not in ("drop_path_rate",)}


def backbone_rope(model) -> str:
    return {"RotaryEmbeddingDinoV3": "dinov3"}.get(type(getattr(model, "rope", None)).__name__, "none")


@pytest.mark.parametrize("recipe", sorted(FAMILIES))
def test_finetune_recipe_from_a_backbone_file(recipe, tmp_path, capsys, monkeypatch, recwarn):
    arch, overrides, mean = FAMILIES[recipe]
    backbone, weights = backbone_file(tmp_path, arch, overrides)
    root = tmp_path / "images"
    make_layout(root, "split")
    monkeypatch.chdir(tmp_path)
    sets = SMALL + [f"model.init={weights}", f"data.dataset=imagefolder:{root}", "optim.warmup_epochs=1",
                    "train.epochs=3", "name=ft"]
    code, out, err = cli(capsys, "train", "--config", recipe, *sets_args(sets))
    assert code == 0, err
    assert "the head alone for the first 1 epoch," in out and "layer decay" in out
    assert ("dinov3 rotary embedding)" in out) == (recipe == "finetune-dinov3")  # the console says what it runs
    assert not [w for w in recwarn if "normalised with mean" in str(w.message)]  # the recipe's are the family's
    run = tmp_path / "runs" / "ft"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["optim"]["head_warmup_epochs"] == 1 and config["model"]["init"] == str(weights)
    assert tuple(config["data"]["mean"]) == pytest.approx(mean)
    # The fine-tuned model is the backbone's architecture with a 3-class head, and remembers the recipe's
    # preprocessing for eval and predict.
    tuned = VisionTransformer.from_pretrained(run / "checkpoints" / "best")
    assert tuned.config.depth == 2 and tuned.config.embed_dim == 32 and tuned.num_classes == 3
    # the backbone computes what it did: the fine-tune starts from the source's exact features
    start = VisionTransformer.from_pretrained(weights, img_size=32, num_heads=2, **recipe_model(recipe))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (start.forward_features(x) - backbone.forward_features(x)).abs().max() <= 1e-5
    assert tuned.config.rope == backbone_rope(backbone)
    meta = json.loads((run / "results.json").read_text())
    assert meta["val_accuracy"] is not None
    from vitkit.predictor import Predictor
    assert Predictor.load(run / "checkpoints" / "best").preprocess.mean == pytest.approx(mean)


def test_the_weights_statistics_are_compared_with_the_runs(tmp_path, capsys, monkeypatch):
    """Fine-tuning CLIP weights with ImageNet's statistics trains, with a warning that names both."""
    _, weights = backbone_file(tmp_path, "vit_base_patch16_clip_224", {})
    root = tmp_path / "images"
    make_layout(root, "split")
    monkeypatch.chdir(tmp_path)
    sets = SMALL + [f"model.init={weights}", f"data.dataset=imagefolder:{root}", "train.epochs=3", "name=plain",
                    "data.mean=[0.485, 0.456, 0.406]", "data.std=[0.229, 0.224, 0.225]"]
    with pytest.warns(UserWarning) as caught:
        code, out, err = cli(capsys, "train", "--config", "finetune-clip", *sets_args(sets))
    assert code == 0, err
    warning = [str(w.message) for w in caught if "normalised with mean" in str(w.message)]
    assert len(warning) == 1, [str(w.message) for w in caught]
    assert "(0.4815, 0.4578, 0.4082)" in warning[0] and "(0.485, 0.456, 0.406)" in warning[0], warning
    # What to set, with the values (inside a finetune-* run, "use a finetune-* recipe" told nothing).
    assert "set data.mean=[0.4815, 0.4578, 0.4082] and data.std=[0.2686, 0.2613, 0.2758]" in warning[0], warning
    assert "recipe" not in warning[0], warning


def test_a_from_scratch_recipe_on_weights_names_what_contradicts_them(tmp_path, capsys, monkeypatch):
    _, weights = backbone_file(tmp_path, "vit_base_patch16_clip_224", {})
    root = tmp_path / "images"
    make_layout(root, "split")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "train", "--config", "imagefolder", *sets_args(
        [f"model.init={weights}", f"data.dataset=imagefolder:{root}", "device=cpu", "data.batch_size=4"]))
    assert code == 2 and one_sentence(err), err
    assert "the run's model section sets" in err and "embed_dim" in err and "finetune-" in err, err
    assert not (tmp_path / "runs" / "imagefolder" / "checkpoints").exists()


@pytest.mark.parametrize("recipe", ["imagefolder", "finetune-dinov2"])
def test_weights_of_another_architecture_name_the_mismatch_and_what_to_change(tmp_path, capsys, monkeypatch,
                                                                              recipe):
    """The issue's case: grey 28 px weights in 7-pixel patches as model.init of an RGB 32 px run (the
    from-scratch recipe also sets patch 4) was 'internal error (RuntimeError: shape [1, 7, 7, 96] is
    invalid ...)'. Now one sentence: what the weights are, what the run has, and what to change."""
    from vitkit.checkpoint import save_weights

    weights = tmp_path / "grey28.safetensors"
    save_weights(VisionTransformer(img_size=28, patch_size=7, in_channels=1, num_classes=10, embed_dim=96, depth=1,
                                   num_heads=2), weights)
    root = tmp_path / "images"
    make_layout(root, "split")  # colour images
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "train", "--config", recipe, *sets_args(
        [f"model.init={weights}", f"data.dataset=imagefolder:{root}", "device=cpu", "data.batch_size=4",
         "data.img_size=32", "data.workers=0"]))
    err = "\n".join(line for line in err.splitlines() if ": warning: " not in line)
    assert code == 2 and one_sentence(err), err
    assert f"model.init {weights} is a ViT of 1-channel 28x28 images in 7-pixel patches" in err, err
    assert "but this run has 3-channel 32x32 images" in err
    assert "set data.channels=1" in err and "set data.img_size to a multiple of 7 (such as 28)" in err
    assert ("its model section sets patch_size=4" in err) == (recipe == "imagefolder")
    assert not (tmp_path / "runs" / recipe / "checkpoints").exists()


def test_a_recipe_without_weights_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "train", "--config", "finetune-clip")
    assert code == 2 and one_sentence(err) and "set model.init=WEIGHTS" in err, err
    assert not (tmp_path / "runs").exists()


def test_grad_checkpointing_in_a_run_trains_the_same_weights(tmp_path, capsys, monkeypatch):
    """train.grad_checkpointing recomputes the blocks in backward (dropout and drop-path replay their random
    draws): the run's weights are those of the same run without it."""
    from safetensors.torch import load_file
    root = tmp_path / "images"
    make_layout(root, "split")
    monkeypatch.chdir(tmp_path)
    import vitkit.model
    calls = []
    real = vitkit.model.checkpoint
    monkeypatch.setattr(vitkit.model, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    weights, recomputed = {}, {}
    for on in (False, True):
        calls.clear()
        sets = SMALL + [f"data.dataset=imagefolder:{root}", "model.patch_size=8", "model.embed_dim=16",
                        "model.depth=2", "model.drop_path_rate=0.2", "model.drop_rate=0.1", "train.epochs=2", "optim.warmup_epochs=1",
                        f"train.grad_checkpointing={str(on).lower()}", f"name=gc-{on}"]
        code, out, err = cli(capsys, "train", *sets_args(sets))
        assert code == 0, err
        recomputed[on] = len(calls)
        weights[on] = load_file(str(tmp_path / "runs" / f"gc-{on}" / "checkpoints" / "last.safetensors"))
    assert recomputed[False] == 0 and recomputed[True] == 2 * 2 * 6  # blocks x epochs x steps
    assert weights[False].keys() == weights[True].keys()
    for k in weights[False]:
        assert torch.equal(weights[False][k], weights[True][k]), k
