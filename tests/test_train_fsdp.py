"""``train.strategy: fsdp`` (FSDP2) on 2 gloo processes, and a run over two "machines" (two torchrun node
processes on 127.0.0.1): the same training as one process and as DDP, ordinary checkpoints, and a run killed
with SIGKILL then resumed that ends bit-identical to an uninterrupted one."""

import csv
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_train_distributed import finished, kill_early, recipe, torchrun

from vitkit import VisionTransformer
from vitkit.errors import ConfigError
from vitkit.train import load_run_config, train
from vitkit.train.checkpoint import load_training_state

FSDP = {"strategy": "fsdp"}
TINY = {"data": {"batch_size": 128}, "model": {"depth": 2}}  # 10 steps an epoch, 2 blocks to shard


def last(run_dir):
    return load_file(run_dir / "checkpoints" / "last.safetensors")


def losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


def assert_close(ours, theirs, **tol):
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], msg=name, **tol)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One digits epoch three ways: one process, 2-process DDP, 2-process FSDP (the same global batches)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    path = recipe(tmp, **TINY)
    threads = torch.get_num_threads()
    try:
        assert train(load_run_config(path), run_dir=tmp / "single", log=lambda *_: None) == 0
    finally:
        torch.set_num_threads(threads)
    finished(torchrun(path, "--set", "name=ddp"))
    out = finished(torchrun(path, "--set", "name=fsdp", "--set", "train.strategy=fsdp"))
    assert "2 processes" in out and out.count("epoch   1/1") == 1  # rank 0 alone logs
    return tmp, path


def test_fsdp_trains_as_one_process_and_as_ddp(runs):
    """optim.grad_clip is 1.0 and clips these steps (without it the weights differ by ~7e-3), so the clipping
    of the sharded gradients (DTensors) is checked too."""
    tmp, _ = runs
    single, ddp, fsdp = tmp / "single", tmp / "runs" / "ddp", tmp / "runs" / "fsdp"
    assert_close(last(fsdp), last(single), rtol=1e-4, atol=1e-6)
    assert_close(last(fsdp), last(ddp), rtol=1e-4, atol=1e-6)
    assert losses(fsdp) == pytest.approx(losses(ddp), rel=1e-5)
    assert losses(fsdp) == pytest.approx(losses(single), rel=1e-5)


def test_one_process_fsdp_is_an_ordinary_run(runs):
    tmp, path = runs
    threads = torch.get_num_threads()
    try:
        cfg = load_run_config(path, ["train.strategy=fsdp"])
        assert train(cfg, run_dir=tmp / "single-fsdp", log=lambda *_: None) == 0
    finally:
        torch.set_num_threads(threads)
    assert_close(last(tmp / "single-fsdp"), last(tmp / "single"), rtol=0, atol=0)
    assert "strategy" not in load_training_state(tmp / "single-fsdp" / "checkpoints" / "last.state.pt")


def test_fsdp_checkpoints_are_full_plain_models(runs):
    """best and last hold the full tensors under the model's own keys (no FSDP prefix, nothing sharded), as
    does the training state, whose optimizer state is the full one keyed by parameter name."""
    run_dir = runs[0] / "runs" / "fsdp"
    state = load_training_state(run_dir / "checkpoints" / "last.state.pt")
    assert state["strategy"] == "fsdp"
    model = VisionTransformer.from_pretrained(str(run_dir / "checkpoints" / "best"))
    assert model.state_dict().keys() == state["model"].keys()
    for name, tensor in model.state_dict().items():  # one epoch: best is last
        assert torch.equal(tensor, state["model"][name]), name
    assert set(state["optimizer"]["state"]) == {n for n, p in model.named_parameters()}
    assert state["optimizer"]["state"]["head.weight"]["exp_avg"].shape == model.head.weight.shape


def test_fsdp_with_grad_checkpointing_computes_the_same(runs):
    tmp, path = runs
    finished(torchrun(path, "--set", "name=fsdp-gc", "--set", "train.strategy=fsdp",
                      "--set", "train.grad_checkpointing=true"))
    assert_close(last(tmp / "runs" / "fsdp-gc"), last(tmp / "runs" / "fsdp"), rtol=0, atol=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_as_one_node_with_two_processes(runs):
    """torchrun on each of two "machines" (one process each), meeting at a c10d rendezvous on 127.0.0.1; they
    share the filesystem, so both read the same data, and rank 0 alone writes the run folder."""
    tmp, path = runs
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--rdzv-id", "vitkit-test", "-m", "vitkit", "train", "--config", str(path), "--set", "name=nodes",
         "--set", "train.strategy=fsdp"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)]
    outs = [finished(node) for node in nodes]
    assert sum("2 processes" in out for out in outs) == 1  # one rank 0, on whichever node it landed
    assert sorted(p.name for p in (tmp / "runs").iterdir() if p.name.startswith("nodes")) == ["nodes"]
    assert_close(last(tmp / "runs" / "nodes"), last(tmp / "runs" / "fsdp"), rtol=0, atol=0)


def test_killed_fsdp_run_resumes_bit_identical(tmp_path):
    """The full model and optimizer states saved by rank 0, re-sharded on the resume: the same world size
    reduces in the same order, so the resumed run equals the uninterrupted one exactly."""
    path = recipe(tmp_path, data={"crop_padding": 1, "batch_size": 128}, model={"drop_rate": 0.1, "depth": 2},
                  train={"epochs": 2, "checkpoint_every_steps": 1, "deterministic": True, **FSDP})
    finished(torchrun(path, "--set", "name=reference"))
    steps = 2 * 10

    run_dir = tmp_path / "runs" / "ddp"
    kill_early(torchrun(path, "--resume", "auto"), run_dir, steps)

    out = finished(torchrun(path, "--resume", "auto"))
    assert "resumed from" in out
    ours = load_training_state(run_dir / "checkpoints" / "last.state.pt")
    theirs = load_training_state(tmp_path / "runs" / "reference" / "checkpoints" / "last.state.pt")
    assert ours["step"] == steps
    assert_close(ours["model"], theirs["model"], rtol=0, atol=0)
    for name, moments in theirs["optimizer"]["state"].items():
        assert_close(ours["optimizer"]["state"][name], moments, rtol=0, atol=0)
    assert_close(last(run_dir), last(tmp_path / "runs" / "reference"), rtol=0, atol=0)


@pytest.mark.parametrize("key, value, says", [
    ("train.ema_decay", "0.99", "train.strategy=fsdp does not support train.ema_decay"),
    ("train.lora.rank", "4", "train.strategy=fsdp does not support train.lora"),
    ("train.strategy", "zero3", "train.strategy"),
])
def test_fsdp_refusals_are_one_sentence(key, value, says):
    with pytest.raises(ConfigError) as e:
        load_run_config(None, [f"{key}={value}", "train.strategy=fsdp"] if key != "train.strategy"
                        else [f"{key}={value}"])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_an_fsdp_state_resumes_only_as_it_was_trained(runs):
    from vitkit.errors import CheckpointError
    tmp, _ = runs
    run_dir = tmp / "runs" / "fsdp"
    threads = torch.get_num_threads()
    try:
        with pytest.raises(CheckpointError) as e:  # one process cannot continue a sharded run's state
            train(load_run_config(run_dir / "config.yaml"), resume=str(run_dir), log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert "another train.strategy or number of processes" in str(e.value) and "\n" not in str(e.value)
