"""A 2-process gloo run (torchrun) takes the same steps as a 1-process run with the same global batch."""

import os
import subprocess
import sys

import torch
import yaml
from safetensors.torch import load_file

from vitkit.train import load_run_config, train


def test_two_process_gloo_run_matches_one_process(tmp_path):
    cfg = {
        "name": "ddp", "out_dir": str(tmp_path / "runs"), "device": "cpu", "report": False, "seed": 1,
        "data": {"dataset": "digits", "batch_size": 64, "crop_padding": 0},  # rank-independent batches
        "model": {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                  "qkv_bias": False},  # a key bias gets an exactly-zero gradient, which Adam turns into noise
        "optim": {"lr": 3.0e-3, "warmup_epochs": 0.5},
        "train": {"epochs": 1, "threads": 1},
    }
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(cfg))

    threads = torch.get_num_threads()
    try:
        assert train(load_run_config(recipe), run_dir=tmp_path / "single", log=lambda *_: None) == 0
    finally:
        torch.set_num_threads(threads)

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "vitkit", "train", "--config", str(recipe)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout and proc.stdout.count("epoch   1/1") == 1  # rank 0 alone logs

    single = load_file(tmp_path / "single" / "checkpoints" / "last.safetensors")
    multi = load_file(tmp_path / "runs" / "ddp" / "checkpoints" / "last.safetensors")
    assert single.keys() == multi.keys()
    for name in single:
        torch.testing.assert_close(multi[name], single[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(single["head.weight"], torch.zeros_like(single["head.weight"]))
