"""Shared test fixtures: the real data sets (../shared/data or $VITKIT_DATA), determinism, small threads."""

import os
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Where the real data sets live: $VITKIT_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("VITKIT_DATA", REPO.parent / "shared" / "data"))


def require_data(name: str) -> Path:
    """The folder of a real data set; a skip when it is absent, but a failure under CI=true."""
    path = data_root() / name
    if not path.is_dir():
        msg = f"data set {name!r} not found at {path} (set VITKIT_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def chromium() -> str:
    """Headless Chromium's executable; a skip when it is absent, but a failure under CI=true."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed (apt-get install chromium; 'make test' does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def train_tiny_digits(tmp: Path, *, depth: int = 1, epochs: int = 2) -> tuple[Path, Path, str]:
    """A tiny ViT trained on the digits with ``vitkit train``: (run folder, recipe, what it printed)."""
    import contextlib
    import io

    import yaml

    from vitkit.cli import main

    recipe = tmp / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "out_dir": str(tmp / "runs"), "device": "cpu", "report": False,
        "data": {"dataset": "digits", "batch_size": 64},
        "model": {"patch_size": 4, "embed_dim": 32, "depth": depth, "num_heads": 2, "mlp_ratio": 2.0},
        "optim": {"lr": 3.0e-3, "warmup_epochs": 0.5},
        "train": {"epochs": epochs, "threads": 1},
    }))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "--config", str(recipe)]) == 0
    return tmp / "runs" / "tiny", recipe, out.getvalue()


def saved_step(run_dir: Path) -> int:
    """The step a resume of the run folder would start from (0: none saved yet). A kill, or a poll, can fall
    between the two renames of a save, when only previous.state.pt exists."""
    from vitkit.errors import CheckpointError
    from vitkit.train.checkpoint import load_training_state
    for name in ("last", "previous"):
        try:
            return load_training_state(run_dir / "checkpoints" / f"{name}.state.pt")["step"]
        except CheckpointError:
            continue
    return 0


def sigterm_early(args: list[str], run_dir: Path) -> tuple[int, str]:
    """Start ``python -m vitkit train ARGS`` in a session of its own, send the session SIGTERM once the run has
    saved step 2, wait for it to stop; (the step it saved last, its stderr)."""
    import signal
    import subprocess
    import sys
    import time
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "train", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and saved_step(run_dir) < 2:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return saved_step(run_dir), err.decode(errors="replace")


def same_last_weights(a: Path, b: Path) -> bool:
    """Whether two run folders' last.safetensors hold bit-identical tensors."""
    from safetensors.torch import load_file
    ours, theirs = (load_file(d / "checkpoints" / "last.safetensors") for d in (a, b))
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
