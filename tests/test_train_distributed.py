"""2-process gloo runs (torchrun): the same steps as a 1-process run with the same global batch, and a run
killed with SIGKILL then resumed with ``--resume auto`` ends bit-identical to an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from conftest import saved_step

from vitkit.train import load_run_config, train
from vitkit.train.checkpoint import load_training_state


def recipe(tmp_path, **overrides):
    cfg = {
        "name": "ddp", "out_dir": str(tmp_path / "runs"), "device": "cpu", "report": False, "seed": 1,
        "data": {"dataset": "digits", "batch_size": 64, "crop_padding": 0},  # rank-independent batches
        "model": {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                  "qkv_bias": False},  # a key bias gets an exactly-zero gradient, which Adam turns into noise
        "optim": {"lr": 3.0e-3, "warmup_epochs": 0.5},
        "train": {"epochs": 1, "threads": 1},
    }
    for section, values in overrides.items():
        cfg[section].update(values)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(path, *args, **popen):
    """A 2-process gloo `vitkit train` (a Popen, so the caller can wait for it or kill it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "vitkit", "train", "--config", str(path), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finished(proc) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def kill_early(proc, run_dir, steps: int) -> int:
    """SIGKILL a torchrun run (torchrun and its workers, in sessions of their own) once it has saved step 3, early
    in its ``steps``; the step it had saved last."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and saved_step(run_dir) < 3:
        time.sleep(0.02)
    for pid in [proc.pid, *descendants(proc.pid)]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_at = saved_step(run_dir)
    assert proc.returncode != 0, f"the run ended before the kill (at step {killed_at})"
    assert 0 < killed_at < steps
    return killed_at


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def weights(run_dir):
    return load_training_state(run_dir / "checkpoints" / "last.state.pt")["model"]


def test_two_process_gloo_run_matches_one_process(tmp_path):
    path = recipe(tmp_path)
    threads = torch.get_num_threads()
    try:
        assert train(load_run_config(path), run_dir=tmp_path / "single", log=lambda *_: None) == 0
    finally:
        torch.set_num_threads(threads)

    out = finished(torchrun(path))
    assert "2 processes" in out and out.count("epoch   1/1") == 1  # rank 0 alone logs

    single = load_file(tmp_path / "single" / "checkpoints" / "last.safetensors")
    multi = load_file(tmp_path / "runs" / "ddp" / "checkpoints" / "last.safetensors")
    assert single.keys() == multi.keys()
    for name in single:
        torch.testing.assert_close(multi[name], single[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(single["head.weight"], torch.zeros_like(single["head.weight"]))


def test_killed_two_process_run_resumes_bit_identical(tmp_path):
    """Random crops (each rank draws its own), dropout and mid-epoch checkpoints: every rank's RNG and loader
    position must come back for the resumed run to equal the uninterrupted one."""
    path = recipe(tmp_path, data={"crop_padding": 1, "batch_size": 32}, model={"drop_rate": 0.1},
                  train={"epochs": 2, "checkpoint_every_steps": 1, "deterministic": True})
    finished(torchrun(path, "--set", "name=reference"))
    steps = 2 * (1295 // 32)  # the digits training split less its validation split

    run_dir = tmp_path / "runs" / "ddp"
    killed_at = kill_early(torchrun(path, "--resume", "auto"), run_dir, steps)

    out = finished(torchrun(path, "--resume", "auto"))
    assert "resumed from" in out
    ours, theirs = weights(run_dir), weights(tmp_path / "runs" / "reference")
    assert load_training_state(run_dir / "checkpoints" / "last.state.pt")["step"] == steps
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs after a resume from step {killed_at}"


def digits_parquet(folder: Path) -> Path:
    """The digits training split as a Parquet dataset (4 train files of unequal sizes and a validation file):
    PNG bytes, a ClassLabel."""
    import io

    import datasets
    from PIL import Image

    from vitkit.data import open_splits
    splits = open_splits("digits", val_fraction=0.2)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=splits.classes)})
    (folder / "data").mkdir(parents=True)
    for split, name, n in (("train", "train", 4), ("val", "validation", 1)):
        part, pngs = splits.parts[split], []
        for image in part.images:  # (1, 8, 8) uint8
            out = io.BytesIO()
            Image.fromarray(image[0].numpy()).save(out, format="PNG")
            pngs.append({"bytes": out.getvalue(), "path": None})
        ds = datasets.Dataset.from_dict({"image": pngs, "label": part.labels.tolist()}, features=features)
        cuts = [0, *[len(ds) * c // 10 for c in (1, 5, 6)][:n - 1], len(ds)] if n == 4 else [0, len(ds)]
        for k in range(n):  # train: files of 10 %, 40 %, 10 % and 40 % of the rows (so the ranks' parts differ)
            ds.select(range(cuts[k], cuts[k + 1])).to_parquet(
                str(folder / "data" / f"{name}-{k:05d}-of-{n:05d}.parquet"))
    return folder


def test_killed_two_process_streamed_dataset_run_resumes_bit_identical(tmp_path):
    """A streamed Hugging Face dataset, split over the two ranks by split_dataset_by_node: each rank's stream
    position (the iterable's state_dict at its window) is saved with the run and loaded back by its rank."""
    data = digits_parquet(tmp_path / "parquet")
    path = recipe(tmp_path, data={"dataset": f"hf:{data}", "streaming": True, "workers": 1, "shuffle_buffer": 32,
                                  "batch_size": 32, "img_size": 8, "randaugment": False, "crop_scale": [0.5, 1.0]},
                  model={"drop_rate": 0.1}, train={"epochs": 2, "checkpoint_every_steps": 1, "deterministic": True})
    out = finished(torchrun(path, "--set", "name=reference"))
    assert "streamed" in out
    steps = 2 * (1150 // 2 // 16)  # training rows // world_size // per-rank batch, for two epochs
    run_dir = tmp_path / "runs" / "ddp"
    killed_at = kill_early(torchrun(path, "--resume", "auto"), run_dir, steps)
    saved = load_training_state(run_dir / "checkpoints" / "last.state.pt")
    streams = saved["streams"]  # each rank's position in its own files: a state_dict (windows of 2 batches)
    assert len(streams) == 2 and streams[0]["batch"] == streams[1]["batch"] == saved["batch"] > 2
    assert all(s["at"]["state"] is not None for s in streams), streams
    finished(torchrun(path, "--resume", "auto"))
    ours, theirs = weights(run_dir), weights(tmp_path / "runs" / "reference")
    assert load_training_state(run_dir / "checkpoints" / "last.state.pt")["step"] == steps
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs after a resume from step {killed_at}"
