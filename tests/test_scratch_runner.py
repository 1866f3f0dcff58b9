"""vitkit.numpy_vit runner, data and command line: YAML config with defaults, bad configs (one line, exit 2),
training to high accuracy, JSON output, and no torch import."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vitkit.cli import main as cli_main
from vitkit.typed_config import load_config
from vitkit.errors import ConfigError
from vitkit.numpy_vit import ViTRunner, generate_synthetic_images
from vitkit.numpy_vit.runner import ScratchConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src" / "vitkit" / "configs" / "scratch.yaml"

# A small version of the shipped config that trains in about a second.
SMALL = {
    "model": {"image_size": 16, "patch_size": 4, "in_channels": 1, "dim_model": 32, "num_heads": 4, "dim_ff": 64,
              "num_layers": 1, "num_classes": 4},
    "data": {"n_train": 2000, "n_test": 500, "noise": 0.7},
    "training": {"epochs": 3},
}


def write(tmp_path: Path, config: dict, name: str = "scratch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


# --------------------------------------------------------------------------------------------------------------
# Data


def test_synthetic_images_are_deterministic_per_seed():
    images, labels = generate_synthetic_images(50, 12, 3, 6, random_seed=3)
    assert images.shape == (50, 12, 12, 3) and images.dtype == np.float32
    assert labels.shape == (50,) and labels.dtype == np.int64 and set(labels) <= set(range(6))
    again = generate_synthetic_images(50, 12, 3, 6, random_seed=3)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(labels, again[1])
    other = generate_synthetic_images(50, 12, 3, 6, random_seed=4)
    assert not np.array_equal(images, other[0])


def test_synthetic_classes_differ_by_pattern_not_by_pixels():
    """Without noise, images of one class are one stripe direction: a pattern, not a colour or a pixel."""
    images, labels = generate_synthetic_images(400, 16, 1, 4, random_seed=0, noise=0.0)
    for k in range(4):
        mean_image = images[labels == k].mean(axis=0)
        assert np.abs(mean_image).mean() < 0.2  # random phases average the stripes away
    # Class 0 is vertical stripes (constant down a column), class 2 horizontal ones (constant along a row).
    assert np.allclose(np.diff(images[labels == 0], axis=1), 0, atol=1e-5)
    assert np.allclose(np.diff(images[labels == 2], axis=2), 0, atol=1e-5)


def test_bad_data_sizes_are_errors():
    with pytest.raises(ValueError, match="positive"):
        generate_synthetic_images(0, 8, 1, 2)


# --------------------------------------------------------------------------------------------------------------
# Config


def test_defaults_are_the_shipped_config():
    shipped = ScratchConfig.load(SHIPPED)
    assert shipped == ScratchConfig() == ViTRunner().config
    # every key of every section is spelled out in the shipped file
    data = load_config(SHIPPED)
    for section in dataclasses.fields(ScratchConfig):
        assert set(data[section.name]) == {f.name for f in dataclasses.fields(getattr(shipped, section.name))}


def test_partial_config_keeps_defaults(tmp_path):
    config = ViTRunner(write(tmp_path, {"training": {"epochs": 2}})).config
    assert config.training.epochs == 2 and config.model == ScratchConfig().model


@pytest.mark.parametrize("config, message", [
    ({"model": {"dim_modle": 32}}, "unknown config key 'model.dim_modle'; expected one of: image_size"),
    ({"modle": {}}, "unknown config key 'modle'; expected one of: model, data, training"),
    ({"model": {"dim_model": 30, "num_heads": 4}},
     r"model.dim_model \(30\) must be divisible by model.num_heads \(4\)"),
    ({"model": {"image_size": 10, "patch_size": 4}},
     r"model.image_size \(10\) must be divisible by model.patch_size \(4\)"),
    ({"training": {"learning_rate": "fast"}}, "config key 'training.learning_rate' must be a number"),
    ({"training": {"dtype": "float16"}}, "training.dtype' must be one of 'float32', 'float64'"),
    ({"data": {"n_train": 0}}, "data.n_train must be a positive integer"),
])
def test_bad_config_is_one_clear_config_error(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        ViTRunner(write(tmp_path, config))


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ViTRunner(tmp_path / "nope.yaml")


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, {"model": {"dim_model": 30, "num_heads": 4}})
    assert cli_main(["scratch", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "vitkit scratch: error: model.dim_model (30) must be divisible by model.num_heads (4)"


@pytest.mark.parametrize("entry", [["-m", "vitkit.numpy_vit"], ["-m", "vitkit", "scratch"]])
def test_bad_config_exit_code_2_without_traceback(tmp_path, entry):
    path = write(tmp_path, {"model": {"image_size": 10, "patch_size": 4}})
    proc = run_python(*entry, "--config", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "vitkit scratch: error: model.image_size (10) must be divisible by model.patch_size (4)"]
    assert "Traceback" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------------------------
# Training


def test_runner_learns_the_synthetic_task(tmp_path):
    runner = ViTRunner(write(tmp_path, SMALL))
    results = runner.run()
    assert set(results) == {"train_loss", "test_accuracy"}
    assert results["test_accuracy"] >= 0.95
    assert results["train_loss"] < 0.2


def test_cli_writes_json_results(tmp_path, capsys):
    out = tmp_path / "out" / "results.json"
    assert cli_main(["scratch", "--config", str(write(tmp_path, SMALL)), "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"train_loss", "test_accuracy"} and results["test_accuracy"] >= 0.95
    printed = capsys.readouterr().out
    assert "epoch 3/3" in printed and "test_accuracy" in printed


def test_python_dash_m_runs_and_never_imports_torch(tmp_path):
    """``python -m vitkit.numpy_vit`` trains; neither importing vitkit.numpy_vit nor a whole run imports torch."""
    out = tmp_path / "results.json"
    small = dict(SMALL, data={"n_train": 200, "n_test": 50}, training={"epochs": 1})
    code = ("import runpy, sys\n"
            "import vitkit.numpy_vit\n"
            "assert 'torch' not in sys.modules, 'import vitkit.numpy_vit imported torch'\n"
            f"sys.argv = ['vitkit.numpy_vit', '--config', {str(write(tmp_path, small))!r}, '--output', {str(out)!r}]\n"
            "try:\n"
            "    runpy.run_module('vitkit.numpy_vit', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'a vitkit.numpy_vit run imported torch'\n")
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(out.read_text())) == {"train_loss", "test_accuracy"}
