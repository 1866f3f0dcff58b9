"""The NumPy ViT on a real data set: examples/scratch_digits.py (scikit-learn's 8x8 digits), shortened."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scratch_digits.py"


def test_digits_example_learns_real_images(capsys):
    spec = importlib.util.spec_from_file_location("scratch_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--epochs", "10"])  # the full example runs 30 epochs
    assert results["test_accuracy"] >= 0.85
    assert "test accuracy" in capsys.readouterr().out
