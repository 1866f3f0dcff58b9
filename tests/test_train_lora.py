"""train.freeze and train.lora: a frozen backbone (a linear probe) and the first K blocks frozen bit for bit, out
of the optimiser and in eval mode; LoRA through peft, its weights files merged into plain vitkit checkpoints
that compute what peft's adapted model computes, an interrupted LoRA run resumed bit-identical, EMA, gradient
checkpointing, torch.compile and two processes with adapters; and the refusals, one sentence each."""

import copy
import functools
import json
import signal
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_train_imagefolder import cli, one_sentence, sets_args

from vitkit import VisionTransformer
from vitkit.checkpoint import save_weights
from vitkit.errors import ConfigError
from vitkit.train import load_run_config, train
from vitkit.train.adapt import PEFT_MISSING, adapt_model, plain_state_dict
from vitkit.train.checkpoint import load_training_state
from vitkit.train.config import LoopConfig, LoraSettings, OptimConfig
from vitkit.train.loop import train_epoch
from vitkit.train.optim import build_optimizer
from vitkit.train.trainer import Trainer

peft = pytest.importorskip("peft")

TINY = dict(img_size=8, patch_size=4, in_channels=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
            num_classes=10, drop_rate=0.1, drop_path_rate=0.1)  # a digits model with dropout and drop-path
STEPS = 1295 // 64  # optimizer steps per epoch: digits' training split less validation, batch 64


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """Random "pre-trained" weights of a tiny digits ViT (what model.init fine-tunes from)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("init") / "backbone.safetensors"
    save_weights(VisionTransformer(**TINY), path)
    return path


def recipe(tmp_path, init, **train_keys):
    cfg = {"name": "lora", "out_dir": str(tmp_path / "runs"), "device": "cpu", "report": False, "seed": 3,
           "data": {"dataset": "digits", "batch_size": 64, "crop_padding": 1},
           "model": {"init": str(init)}, "optim": {"lr": 3.0e-3, "warmup_epochs": 0.5},
           "train": {"epochs": 1, "threads": 1, **train_keys}}
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(path, run_dir, sets=(), resume=None) -> int:
    threads = torch.get_num_threads()
    try:
        return train(load_run_config(path, list(sets)), resume=resume, run_dir=run_dir, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)


LORA = {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": ["qkv", "proj", "fc1", "fc2"]}


def adapted(train_cfg: LoopConfig, state: dict | None = None) -> VisionTransformer:
    """A tiny model adapted as a run adapts it, with a training state's weights when given."""
    model = VisionTransformer(**TINY)
    adapt_model(model, train_cfg)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# LoRA: the weights files are plain vitkit checkpoints that compute what peft computes


def test_lora_checkpoint_is_the_merged_adapters_and_computes_what_peft_computes(tmp_path, init):
    run_dir = tmp_path / "run"
    assert run(recipe(tmp_path, init, lora=LORA, epochs=2), run_dir) == 0
    state = load_training_state(run_dir / "checkpoints" / "last.state.pt")["model"]
    peft_model = adapted(LoopConfig(lora=LoraSettings(**LORA)), state)
    assert isinstance(peft_model.blocks[1].mlp.fc2, peft.tuners.lora.LoraLayer)
    assert all(state[k].abs().max() > 0 for k in state if "lora_B" in k)  # every adapter has moved

    file = run_dir / "checkpoints" / "last.safetensors"
    saved = load_file(file)
    plain = VisionTransformer(**TINY)
    assert saved.keys() == plain.state_dict().keys()  # vitkit's keys: no base_layer, lora_A or lora_B
    merged = VisionTransformer.from_pretrained(file)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), peft_model(x), rtol=1e-5, atol=1e-5)
        base = VisionTransformer.from_pretrained(init)
        assert (base.blocks[0].attn.qkv(x.new_ones(1, 32)) - merged.blocks[0].attn.qkv(x.new_ones(1, 32))).abs().max() > 1e-3
    # peft's own merge, layer by layer, gives the saved tensors bit for bit
    peft_merged = copy.deepcopy(peft_model)
    for module in peft_merged.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.merge()
    for key, value in peft_merged.state_dict().items():
        if ".lora_" not in key:
            assert torch.equal(saved[key.replace(".base_layer.", ".")], value), key
    # the frozen base stayed the init weights bit for bit; the head trained
    start = load_file(init)
    for key, value in state.items():
        if ".lora_" not in key:
            assert torch.equal(value, start[key.replace(".base_layer.", ".")]) != key.startswith("head."), key


def test_interrupted_lora_run_resumes_bit_identical(tmp_path, init, monkeypatch):
    """Stopped mid-epoch (as SIGTERM stops it) then resumed: adapters, frozen base, optimizer, RNG come back."""
    path = recipe(tmp_path, init, lora=LORA, epochs=2, checkpoint_every_steps=7, deterministic=True)
    assert run(path, tmp_path / "reference") == 0
    real = Trainer.after_step

    def stop_at(self, step, batch, running):
        if step == STEPS + 5:
            self.stop.signum = signal.SIGTERM
        return real(self, step, batch, running)

    monkeypatch.setattr(Trainer, "after_step", stop_at)
    run_dir = tmp_path / "interrupted"
    assert run(path, run_dir) == 143
    monkeypatch.setattr(Trainer, "after_step", real)
    assert load_training_state(run_dir / "checkpoints" / "last.state.pt")["step"] == STEPS + 5
    assert run(path, run_dir, resume=str(run_dir)) == 0
    ours = load_training_state(run_dir / "checkpoints" / "last.state.pt")
    theirs = load_training_state(tmp_path / "reference" / "checkpoints" / "last.state.pt")
    assert any(".lora_A." in k for k in ours["model"]) and ours["model"].keys() == theirs["model"].keys()
    for key in ours["model"]:
        assert torch.equal(ours["model"][key], theirs["model"][key]), key
    for name in ("best", "last"):
        a, b = (load_file(d / "checkpoints" / f"{name}.safetensors") for d in (run_dir, tmp_path / "reference"))
        assert all(torch.equal(a[k], b[k]) for k in b), name
    loss = lambda d: [r.split(",")[2] for r in (d / "metrics.csv").read_text().splitlines()[1:]]  # noqa: E731
    assert loss(run_dir) == loss(tmp_path / "reference")


def test_lora_with_ema_and_grad_checkpointing(tmp_path, init):
    """Gradient checkpointing trains the same adapters bit for bit; with an EMA the weights files are the
    average's adapters merged."""
    weights = {}
    for on in (False, True):
        run_dir = tmp_path / f"gc-{on}"
        assert run(recipe(tmp_path, init, lora=LORA, grad_checkpointing=on, ema_decay=0.9), run_dir) == 0
        weights[on] = load_training_state(run_dir / "checkpoints" / "last.state.pt")
    for key, value in weights[False]["model"].items():
        assert torch.equal(value, weights[True]["model"][key]), key
    ema = adapted(LoopConfig(lora=LoraSettings(**LORA)), weights[True]["ema"])
    saved = load_file(tmp_path / "gc-True" / "checkpoints" / "last.safetensors")
    assert not torch.equal(weights[True]["ema"]["head.weight"], weights[True]["model"]["head.weight"])
    for key, value in plain_state_dict(ema).items():
        assert torch.equal(saved[key], value), key


def test_lora_compiles(tmp_path, init, monkeypatch):
    """train.compile with adapters: the run traces peft's layers (aot_eager here, inductor's C++ build of the
    same graphs takes a minute on a CPU) and trains what the eager run trains."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    sets = ["train.lora={rank: 2, targets: [qkv, fc1]}", "train.deterministic=true"]
    assert run(recipe(tmp_path, init), tmp_path / "eager", sets) == 0
    assert run(recipe(tmp_path, init), tmp_path / "compiled", sets + ["train.compile=true"]) == 0
    eager, compiled = (load_file(tmp_path / d / "checkpoints" / "last.safetensors") for d in ("eager", "compiled"))
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_process_lora_run_matches_one_process(tmp_path, init):
    from test_train_distributed import finished, torchrun

    path = recipe(tmp_path, init, lora={"rank": 4, "targets": ["proj", "fc1"]})
    yaml_cfg = yaml.safe_load(path.read_text())
    yaml_cfg["data"]["crop_padding"] = 0  # rank-independent batches and no dropout (each rank draws its own)
    yaml_cfg["model"].update(drop_rate=0.0, drop_path_rate=0.0)
    path.write_text(yaml.safe_dump(yaml_cfg))
    assert run(path, tmp_path / "single") == 0
    out = finished(torchrun(path))
    assert "2 processes" in out and "LoRA rank 4" in out
    single = load_file(tmp_path / "single" / "checkpoints" / "last.safetensors")
    multi = load_file(tmp_path / "runs" / "lora" / "checkpoints" / "last.safetensors")
    for key in single:
        torch.testing.assert_close(multi[key], single[key], rtol=1e-4, atol=1e-6, msg=key)


# ---------------------------------------------------------------------------------------------------------
# Freezing


def test_frozen_backbone_trains_the_head_alone(tmp_path, init, monkeypatch):
    """A linear probe with weight decay, dropout and drop-path: every backbone tensor is the init's bit for
    bit, the blocks ran in eval mode, the head moved, and the optimizer holds the head's two tensors only."""
    import vitkit.train.trainer as trainer_module

    modes = set()

    def watched(model, *args, **kwargs):
        model.blocks[1].register_forward_hook(lambda m, i, o: modes.add(m.training))
        return train_epoch(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", watched)
    run_dir = tmp_path / "probe"
    assert run(recipe(tmp_path, init, freeze="backbone"), run_dir, ["optim.weight_decay=0.1"]) == 0
    assert modes == {False}
    start, end = load_file(init), load_file(run_dir / "checkpoints" / "last.safetensors")
    assert end.keys() == start.keys()
    for key in start:
        assert torch.equal(start[key], end[key]) != key.startswith("head."), key
    state = load_training_state(run_dir / "checkpoints" / "last.state.pt")
    assert sum(len(g["params"]) for g in state["optimizer"]["param_groups"]) == 2
    assert json.loads((run_dir / "results.json").read_text())["completed"]


def test_frozen_modules_run_in_eval_mode():
    """The loop's model.train() leaves the frozen trunk in eval mode (no dropout inside it) and the head's
    dropout in training mode."""
    torch.manual_seed(0)
    model = VisionTransformer(**TINY)
    frozen = adapt_model(model, LoopConfig(freeze="blocks:1"))
    seen = {}
    for name in ("patch_embed", "pos_drop", "blocks.0", "blocks.1", "head_drop"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: m.training}))
    optimizer = build_optimizer(model, OptimConfig(), torch.device("cpu"))
    batches = [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))]
    train_epoch(model, batches, torch.nn.CrossEntropyLoss(), optimizer, "cpu", 0, frozen=frozen)
    assert seen == {"patch_embed": False, "pos_drop": False, "blocks.0": False, "blocks.1": True,
                    "head_drop": True}


@pytest.mark.parametrize("k", [1, 2])
def test_blocks_k_freezes_the_embedding_and_exactly_the_first_k_blocks(k):
    torch.manual_seed(0)
    model = VisionTransformer(**{**TINY, "depth": 3, "reg_tokens": 1})
    adapt_model(model, LoopConfig(freeze=f"blocks:{k}"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    before = ("patch_embed.", "cls_token", "reg_token", "pos_embed") + tuple(f"blocks.{i}." for i in range(k))
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(before)}
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    start = {n: p.clone() for n, p in model.named_parameters()}
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
        optimizer.zero_grad()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved.isdisjoint(frozen) and f"blocks.{k}.attn.qkv.weight" in moved


def test_lora_after_frozen_blocks_adapts_only_the_later_blocks():
    model = VisionTransformer(**{**TINY, "depth": 3, "pool": "map"})  # the attention pool has proj and mlp.fc1 too
    adapt_model(model, LoopConfig(freeze="blocks:1", lora=LoraSettings(targets=("proj", "fc1"))))
    adapted_layers = {n for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert adapted_layers == {f"blocks.{i}.{t}" for i in (1, 2) for t in ("attn.proj", "mlp.fc1")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_" in n} | {"head.weight", "head.bias"}


# ---------------------------------------------------------------------------------------------------------
# Refusals: one sentence each, nothing written


REFUSED = [
    (["train.lora={rank: 0}"], "train.lora.rank must be at least 1, got 0"),
    (["train.lora={alpha: 0}"], "train.lora.alpha must be above 0"),
    (["train.lora={dropout: 1}"], "train.lora.dropout must lie in [0, 1)"),
    (["train.lora={targets: [qkv, q]}"], "config key 'train.lora.targets[1]' must be one of 'qkv', 'proj'"),
    (["train.lora={targets: []}"], "train.lora.targets must name at least one of qkv, proj, fc1, fc2"),
    (["train.lora={rank: 4}", "train.freeze=backbone"], "train.freeze=backbone trains the head alone, so the "
                                                        "adapters of train.lora would never train"),
    (["train.freeze=blocks:1", "train.lora={rank: 4}", "model.init=null"], "train.freeze and train.lora keep the "
                                                                           "backbone's weights as they start"),
    (["train.freeze=blocks:0"], "train.freeze must be none, backbone or blocks:K"),
    (["train.freeze=head"], "train.freeze must be none, backbone or blocks:K"),
    (["train.freeze=blocks:3"], "train.freeze=blocks:3 freezes 3 blocks, but the model has 2"),
    (["train.freeze=blocks:2", "train.lora={rank: 4}"], "freezes all 2 blocks, so train.lora has no block to adapt"),
    (["train.freeze=backbone", "optim.head_warmup_epochs=1"], "but train.freeze=backbone trains nothing else"),
    (["train.lora={rank: 4}", "model.init=null"], "train.lora keeps the backbone's weights as they start, but "
                                                  "model.init names no weights"),
]


@pytest.mark.parametrize("sets, sentence", REFUSED, ids=[" ".join(s) for s, _ in REFUSED])
def test_conflicting_settings_are_one_sentence(sets, sentence, tmp_path, init, capsys):
    path = recipe(tmp_path, init)
    if "model.init=null" in sets:
        config = yaml.safe_load(path.read_text())
        config["model"] = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
        path.write_text(yaml.safe_dump(config))
        sets = [s for s in sets if s != "model.init=null"]
    code, out, err = cli(capsys, "train", "--config", str(path), *sets_args(sets))
    assert code == 2 and one_sentence(err) and sentence in err, err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/checkpoints/*"))


def test_missing_peft_is_one_sentence(tmp_path, init, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    for extra in ([], ["--print-config"]):
        code, out, err = cli(capsys, "train", "--config", str(recipe(tmp_path, init, lora={"rank": 4})), *extra)
        assert code == 2 and one_sentence(err) and PEFT_MISSING in err, err
    with pytest.raises(ConfigError, match="optional peft extra"):
        adapt_model(VisionTransformer(**TINY), LoopConfig(lora=LoraSettings()))


def test_lora_on_a_separate_qv_bias_is_refused():
    model = VisionTransformer(**{**TINY, "qkv_bias": "qv"})
    with pytest.raises(ConfigError, match="cannot adapt qkv in this model: its separate q and v biases"):
        adapt_model(model, LoopConfig(lora=LoraSettings()))
    adapt_model(model, LoopConfig(lora=LoraSettings(targets=("proj",))))  # the other layers adapt


@pytest.mark.parametrize("change", ["train.lora={rank: 4}", "train.freeze=blocks:1", "train.lora.rank=2"])
def test_a_resume_that_changes_the_adaptation_is_refused(change, tmp_path, init, capsys):
    lora = {"rank": 4} if change.startswith("train.lora.") else None
    path = recipe(tmp_path, init, **({"lora": lora} if lora else {}))
    assert run(path, None) == 0
    code, out, err = cli(capsys, "train", "--config", str(path), "--resume", "auto", "--set", change)
    assert code == 2 and one_sentence(err) and "a resume trains with the run's own config" in err, err
    assert change.split("=")[0].split(".")[1] in err.split("changes ")[1], err


def test_a_state_of_other_adaptation_settings_is_refused(tmp_path, init, capsys):
    """A config.yaml edited by hand (train.lora dropped) no longer describes the run's training state."""
    path = recipe(tmp_path, init, lora={"rank": 4})
    assert run(path, None) == 0
    config_path = tmp_path / "runs" / "lora" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["train"]["lora"] = None
    config_path.write_text(yaml.safe_dump(config))
    code, out, err = cli(capsys, "train", "--config", str(config_path), "--resume", "auto")
    assert code == 2 and one_sentence(err) and "written by a run with other train.freeze or train.lora" in err, err


def test_the_lora_dinov2_recipe_from_a_backbone_file(tmp_path, capsys, monkeypatch):
    """The packaged recipe on a small timm DINOv2 saved as a state dict: the run trains adapters and a new
    3-class head, and its best checkpoint is a plain ViT whose backbone moved only by the merged adapters."""
    from test_train_finetune import SMALL, backbone_file
    from test_train_imagefolder import make_layout

    _, weights = backbone_file(tmp_path, "vit_small_patch14_dinov2", {"init_values": 1e-5})
    root = tmp_path / "images"
    make_layout(root, "split")
    monkeypatch.chdir(tmp_path)
    sets = SMALL + [f"model.init={weights}", f"data.dataset=imagefolder:{root}", "train.epochs=2", "name=lo"]
    code, out, err = cli(capsys, "train", "--config", "lora-dinov2", *sets_args(sets))
    assert code == 0, err
    assert "adapt: LoRA rank 8 alpha 16 on qkv, proj" in out
    tuned = VisionTransformer.from_pretrained(tmp_path / "runs" / "lo" / "checkpoints" / "best")
    start = VisionTransformer.from_pretrained(weights, img_size=32, num_heads=2)
    assert tuned.num_classes == 3
    tuned_state, start_state = tuned.state_dict(), start.state_dict()
    moved = {k for k in start_state if not k.startswith("head.") and not torch.equal(tuned_state[k], start_state[k])}
    assert moved == {f"blocks.{i}.attn.{t}.weight" for i in range(2) for t in ("qkv", "proj")}
