"""Each seed document's usage example runs with only its import line changed (DESIGN.md: the seeds are the
contract). The examples are read from ../shared/seeds and executed as written."""

import os
import re
from pathlib import Path

import pytest
import torch

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"
IMPORTS = {  # the seed's import line -> vitkit's
    "from modelcraft_expedition.models.transformers.vit import ViT": "from vitkit import ViT",
    "from vision_transformer import VisionTransformer": "from vitkit import VisionTransformer",
}


def python_blocks(prefix: str) -> list[str]:
    if not SEEDS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"seed documents not found at {SEEDS}")
        pytest.skip(f"seed documents not found at {SEEDS}")
    text = next(SEEDS.glob(f"{prefix}_*.txt")).read_text()
    return re.findall(r"```python\n(.*?)(?:```|\Z)", text, flags=re.S)


def run_example(code: str, namespace: dict | None = None) -> dict:
    for theirs, ours in IMPORTS.items():
        code = code.replace(theirs, ours)
    namespace = {"torch": torch, **(namespace or {})}
    with torch.no_grad():
        exec(compile(code, "<seed example>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("seed", ["002", "004"])
def test_paper_vit_examples(seed):
    (block,) = python_blocks(seed)
    ns = run_example(block)
    out = ns.get("output", ns.get("logits"))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_seed_001_examples():
    """Seed 001's API examples; `x` and `images` are used there without being defined, so they are given."""
    import vitkit
    names = {n: getattr(vitkit, n) for n in vitkit.__all__}
    ns = {**names, "x": torch.randn(2, 49, 96), "images": torch.randn(1, 3, 224, 224)}
    blocks = python_blocks("001")
    assert len(blocks) >= 5
    for block in blocks:
        ns = run_example(block, ns)
    assert ns["indices"].shape == (49, 49)  # the last index example: get_relative_position_index_2d((7, 7))
    assert ns["bias"].shape == (8, 49, 49)
    assert ns["output"].shape == (1, 1000)
