"""Interrupted runs: SIGKILL / SIGTERM at random steps then `--resume auto` ends bit-identical to an
uninterrupted run; a corrupt newest checkpoint falls back to the previous one; a non-finite loss stops the
run naming the step and leaves the last good checkpoint intact."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import saved_step

from vitkit.errors import CheckpointError
from vitkit.train import load_run_config, train
from vitkit.train.checkpoint import find_resumable, load_training_state
from vitkit.train.loop import NonFiniteLossError

EPOCHS, STEPS_PER_EPOCH = 4, 1295 // 64  # digits training split less its validation split, batch 64, drop_last


def tiny_recipe(tmp_path: Path, **train_overrides) -> Path:
    """A tiny ViT on digits with dropout (so RNG state matters) and crop augmentation (so loader state does)."""
    cfg = {
        "name": "tiny", "out_dir": str(tmp_path / "runs"), "device": "cpu", "report": False, "seed": 3,
        "data": {"dataset": "digits", "batch_size": 64, "crop_padding": 1},
        "model": {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                  "drop_rate": 0.1},
        "optim": {"lr": 3.0e-3, "warmup_epochs": 0.5},
        "train": {"epochs": EPOCHS, "threads": 1, "checkpoint_every_steps": 1, "deterministic": True,
                  **train_overrides},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_in_process(recipe: Path, run_dir: Path, sets=()) -> int:
    threads = torch.get_num_threads()
    try:
        return train(load_run_config(recipe, list(sets)), run_dir=run_dir, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)


def state_step(run_dir: Path) -> int:
    return load_training_state(run_dir / "checkpoints" / "last.state.pt")["step"]


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    recipe = tiny_recipe(tmp_path)
    reference = tmp_path / "reference"
    assert run_in_process(recipe, reference) == 0

    run_dir = tmp_path / "runs" / "tiny"
    command = [sys.executable, "-m", "vitkit", "train", "--config", str(recipe), "--resume", "auto"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    rng = random.Random(1234)
    interrupted_at = []
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = saved_step(run_dir)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # wait until this session has saved a step
            if saved_step(run_dir) > before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # finished before the signal arrived: nothing left to interrupt
            break
        expected = -signal.SIGKILL if sig == signal.SIGKILL else 143
        assert proc.returncode == expected, err.decode()[-2000:]
        interrupted_at.append(saved_step(run_dir))
    # At least two interruptions mid-training; a later one may land after the last step was saved (while the
    # run evaluates and writes its report), which the resume must finish as well.
    mid = [s for s in interrupted_at if 0 < s < EPOCHS * STEPS_PER_EPOCH]
    assert len(mid) >= 2 and all(0 < s <= EPOCHS * STEPS_PER_EPOCH for s in interrupted_at), interrupted_at

    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resumed from" in final.stdout
    assert state_step(run_dir) == EPOCHS * STEPS_PER_EPOCH
    ours = load_training_state(run_dir / "checkpoints" / "last.state.pt")["model"]
    theirs = load_training_state(reference / "checkpoints" / "last.state.pt")["model"]
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs after resume (interrupted at {interrupted_at})"
    assert torch.equal(load_file(run_dir / "checkpoints" / "last.safetensors")["head.weight"],
                       load_file(reference / "checkpoints" / "last.safetensors")["head.weight"])
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(1, EPOCHS + 1)]  # no duplicated epochs


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
    recipe = tiny_recipe(tmp_path, epochs=1)
    run_dir = tmp_path / "run"
    assert run_in_process(recipe, run_dir) == 0
    ckpt = run_dir / "checkpoints"
    data = (ckpt / "last.state.pt").read_bytes()
    (ckpt / "last.state.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match="previous"):
        path, state = find_resumable(ckpt)
    # `last` was the end-of-epoch save; `previous` the mid-epoch save of the same final step.
    assert path.name == "previous.state.pt"
    assert (state["step"], state["epoch"], state["batch"]) == (STEPS_PER_EPOCH, 0, STEPS_PER_EPOCH)

    (ckpt / "previous.state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="last.state.pt is truncated.* and .*previous.state.pt is empty"):
        find_resumable(ckpt)


def test_nonfinite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    recipe = tiny_recipe(tmp_path, epochs=1)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step (\d+)") as info:
        run_in_process(recipe, run_dir, ["optim.lr=1e30", "optim.weight_decay=0", "optim.grad_clip=null",
                                         "optim.warmup_epochs=0"])
    bad = int(info.value.args[0].split("non-finite at step ")[1].split(",")[0])
    state = load_training_state(run_dir / "checkpoints" / "last.state.pt")
    assert state["step"] == bad - 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
