"""A run that cannot fit the machine is refused before anything is allocated (vitkit.train.memory), and an
allocation that fails anyway is one sentence, exit 2, not a bug report."""

import re

import pytest

from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.model import VisionTransformer, count_parameters
from vitkit.train import memory
from vitkit.train.memory import parameter_count

TINY = ["device=cpu", "report=false", "model.patch_size=4", "model.embed_dim=16", "model.depth=1", "model.num_heads=2",
        "optim.warmup_epochs=0.5", "train.epochs=1", "train.threads=1"]


def sets(*items) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def one_sentence(err: str) -> bool:
    err = err.strip()
    return bool(err) and "\n" not in err and "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("kw", [
    dict(),  # ViT-B/16
    dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=10),
    dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, pool="map", class_token=False, num_classes=0),
    dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, use_relative_position=True,
         pos_embed="none", layer_scale_init=0.1, qkv_bias="qv", pool="mean"),
    dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, reg_tokens=4, mlp="swiglu", distilled=True,
         no_embed_class=True),
    dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=4, attn_dim=256, head_hidden_dim=96,
         head_norm=True, num_classes=10),
], ids=["vit-b", "small", "map-headless", "beit-like", "registers-swiglu-distilled", "wide-attention-mlp-head"])
def test_the_parameter_count_is_the_models_within_half_a_percent(kw):
    cfg = ViTConfig(**kw)
    assert abs(parameter_count(cfg) / count_parameters(VisionTransformer(cfg)) - 1) < 0.005


@pytest.mark.parametrize("model", [["model.depth=200", "model.embed_dim=4096"],
                                   ["model.embed_dim=100000", "model.depth=100"]], ids=["depth-200", "width-100000"])
def test_a_model_that_cannot_fit_is_refused_before_anything_is_allocated(tmp_path, capsys, model):
    """The issue's two cases: once the kernel's OOM killer (exit 137, a folder holding .lock), once 'internal
    error'. Now one sentence naming the estimate and what is free, exit 2, and no run folder left behind;
    --print-config refuses the same config."""
    out_dir = tmp_path / "runs"
    argv = sets(*TINY, *model, f"out_dir={out_dir}", "name=huge")
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err), err
    assert re.search(r"needs about [\d,.]+ [GTP]iB to train with a batch of \d+ on cpu, but only [\d,.]+ \w+ is free",
                     err), err
    assert not (out_dir / "huge").exists()
    assert main(["train", "--print-config", *argv]) == 2
    err = capsys.readouterr()
    assert err.out == "" and "needs about" in err.err


def test_the_estimate_is_compared_with_the_memory_free_now(tmp_path, capsys, monkeypatch):
    """A tiny model trains with the memory there is; with 1 KiB free it is refused by the same sentence."""
    argv = sets(*TINY, f"out_dir={tmp_path}", "name=tiny")
    assert memory.free_bytes(__import__("torch").device("cpu")) > 2**20  # this machine can tell
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err) and "but only 1.0 KiB is free" in err, err
    monkeypatch.undo()
    assert main(["train", *argv]) == 0


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
                 "allocate 40000000000 bytes."),
    MemoryError(),
], ids=["cpu-allocator", "python"])
def test_an_allocation_failure_anyway_is_one_sentence(tmp_path, capsys, monkeypatch, failure):
    """Memory can still run out (another process took it, the estimate is a lower bound): the allocator's
    error is one sentence and exit 2, not 'internal error ... this is a bug'; no run folder is left."""
    import vitkit.train.trainer as trainer

    def allocate(*args, **kwargs):
        raise failure

    monkeypatch.setattr(trainer, "VisionTransformer", allocate)
    assert main(["train", *sets(*TINY, f"out_dir={tmp_path / 'runs'}", "name=oom")]) == 2
    err = capsys.readouterr().err
    assert one_sentence(err), err
    assert err.startswith("vitkit train: error: the machine ran out of memory") and "enforce fail" not in err
    assert not (tmp_path / "runs" / "oom").exists()
