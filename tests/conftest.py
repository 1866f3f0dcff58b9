"""Shared test fixtures: the real data sets (../shared/data or $VITKIT_DATA), determinism, small threads."""

import os
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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
