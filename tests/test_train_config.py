"""Run integrity: every training config either trains or stops with ONE sentence (exit 2, one line on stderr, no
traceback) before anything is written; a resume and a run folder never mix two runs; a full disk, a held lock
or a bug in vitkit each end the command the way the `vitkit` dispatcher promises. Tiny digits runs only."""

import csv
import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import vitkit.fileio
import vitkit.train.checkpoint
import vitkit.train.config
import vitkit.train.console
import vitkit.train.trainer
from vitkit.checkpoint import read_header
from vitkit.cli import main
from vitkit.runs import Run
from vitkit.train.checkpoint import load_training_state
from vitkit.train.config import DataConfig, LoopConfig, OptimConfig, RunConfig, reference

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2
TINY_MODEL = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
# On top of the packaged digits recipe (`vitkit train` with no --config): a one-epoch run of a tiny model.
TINY_SETS = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "train.epochs=1", "optim.warmup_epochs=0.5",
             "report=false"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # train.threads calls torch.set_num_threads
    yield
    torch.set_num_threads(threads)


def write_recipe(folder: Path, name: str = "tiny", out_dir: Path | None = None, **train) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "out_dir": str(out_dir or folder / "runs"), "device": "cpu", "report": False,
        "data": {"dataset": "digits", "batch_size": 128},
        "model": dict(TINY_MODEL),
        "optim": {"lr": 3.0e-3, "warmup_epochs": 0.5},
        "train": {"epochs": EPOCHS, "threads": 1, **train},
    }))
    return path


def train_args(out: Path, *sets: str, tiny: bool = True) -> list[str]:
    args = ["train", "--set", f"out_dir={out}"]
    for text in (TINY_SETS if tiny else []) + list(sets):
        args += ["--set", text]
    return args


def one_error_line(capsys, *expected: str):
    """Exactly one line on stderr, holding every ``expected`` fragment; returns what was captured."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in: {err}"
    return captured


def nothing_written(out: Path) -> list[str]:
    """Whatever a refused run left under out_dir (run folders, checkpoints, lock files)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


def metrics(folder: Path) -> list[dict]:
    with (folder / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch tiny run: (run folder, its recipe). Tests that change it work on a copy."""
    tmp = tmp_path_factory.mktemp("finished")
    recipe = write_recipe(tmp)
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--config", str(recipe)]) == 0
    finally:
        torch.set_num_threads(threads)
    return tmp / "runs" / "tiny", recipe


def copy_run(finished, tmp_path: Path) -> Path:
    folder, _ = finished
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".lock", "tensorboard"))
    return copy


# ---------------------------------------------------------------------------------------------------------------
# Refused configs: one sentence naming the key, the value and what is allowed; exit 2; nothing written

REFUSED = [
    ("grad_clip", ["optim.grad_clip=-1"], ["optim.grad_clip", "-1", "(0, ∞)"]),
    ("weight_decay", ["optim.weight_decay=-1"], ["optim.weight_decay", "-1", "[0, ∞)"]),
    ("min_lr_above_lr", ["optim.min_lr=0.1"], ["optim.min_lr (0.1)", "must not exceed optim.lr (0.003)"]),
    ("warmup_longer_than_run", ["optim.warmup_epochs=5"],
     ["optim.warmup_epochs 5", "not shorter than the run (1 epochs", "lower optim.warmup_epochs"]),
    ("batch_larger_than_split", ["data.batch_size=1296"],
     ["data.batch_size 1296", "1295 training images", "no step", "lower data.batch_size"]),
    ("num_classes", ["model.num_classes=5"], ["model.num_classes is 5", "the data has 10 classes"]),
    ("in_channels", ["model.in_channels=3"], ["model.in_channels is 3", "the data has 1 channels"]),
    ("model_img_size", ["model.img_size=16"], ["model.img_size is 16", "the data has 8 pixels per side"]),
    ("data_img_size_builtin", ["data.img_size=16"], ["data.img_size", "16", "image folders only"]),
    ("empty_name", ["name=''"], ["name ''", "cannot name a run folder", "letters, digits"]),
    ("name_with_path", ["name=../x"], ["name '../x'", "cannot name a run folder", "no path separators"]),
    ("threads", ["train.threads=-1"], ["train.threads", "-1", "[1, 1024]"]),
    ("betas", ["optim.betas=[2,3]"], ["optim.betas", "[2.0, 3.0]", "[0, 1)"]),
    ("seed", ["seed=-5"], ["seed", "-5", "[0, 4294967295]"]),
    ("nan_lr", ["optim.lr=.nan"], ["optim.lr", "nan", "finite number"]),
    ("inf_lr", ["optim.lr=.inf"], ["optim.lr", "inf", "finite number"]),
    ("minus_inf_val_fraction", ["data.val_fraction=-.inf"], ["data.val_fraction", "-inf", "finite number"]),
    ("nan_drop_rate", ["model.drop_rate=.nan"], ["model.drop_rate", "nan", "finite number"]),
    ("nan_word", ["optim.lr=nan"], ["optim.lr", "'nan'", "number"]),
    ("misspelt_key", ["train.epoch=3"], ["unknown config key 'train.epoch'", "did you mean 'train.epochs'?"]),
    ("ema_window_longer_than_run", ["train.ema_decay=0.999"],
     ["train.ema_decay 0.999", "the run has 20", "use train.ema_decay <= "]),
]


@pytest.mark.parametrize("sets, expected", [pytest.param(s, e, id=i) for i, s, e in REFUSED])
def test_refused_config_is_one_sentence_and_writes_nothing(tmp_path, monkeypatch, capsys, sets, expected):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    assert main(train_args(out, *sets)) == 2
    assert one_error_line(capsys, "vitkit train: error: ", *expected).out == ""
    assert nothing_written(out) == [], "a refused config left files under out_dir"


def test_preset_name_contradicting_the_recipe_is_one_sentence(tmp_path, monkeypatch, capsys):
    """The digits recipe sets patch_size 4, embed_dim 128 ...: a preset name cannot silently override them."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    assert main(train_args(out, "model.name=vit_tiny_patch16_224", "train.epochs=1", tiny=False)) == 2
    one_error_line(capsys, "model.name vit_tiny_patch16_224 fixes the architecture",
                   "patch_size 4 (the preset has 16)", "embed_dim 128 (the preset has 192)",
                   "remove model.name or those keys")
    assert nothing_written(out) == [], "a refused config left files under out_dir"


def test_png_as_config_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.new("L", (8, 8)).save(tmp_path / "digit.png")
    assert main(["train", "--config", "digit.png"]) == 2
    one_error_line(capsys, "config file digit.png is not a text file", "YAML recipe")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit.png"]


def test_folder_that_is_not_a_recipe_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    assert main(["train", "--config", "experiments"]) == 2
    one_error_line(capsys, "config 'experiments' is neither a file nor a recipe", "recipes: ", "digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments"]


def test_export_with_an_old_opset_is_one_sentence_and_writes_nothing(finished, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder, _ = finished
    before = sorted(p.name for p in (folder / "checkpoints").iterdir())
    output = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(folder / "checkpoints" / "best"), "--opset", "14",
                 "--output", str(output)]) == 2
    one_error_line(capsys, "vitkit export: error: ", "opset 14", "--opset 18")
    assert not output.exists() and list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == before


def test_models_with_no_match_is_one_line_and_exit_1(capsys):
    assert main(["models", "resnet*"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no architecture matches 'resnet*'" in err and "vit_base_*" in err


def test_every_file_of_a_run_folder_has_the_umasks_mode(finished):
    """Checkpoints were 0600 while the rest of the run folder was 0644: one mode for all, the umask's."""
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    folder, _ = finished
    modes = {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in folder.rglob("*")
             if p.is_file() and p.name != ".lock" and "tensorboard" not in p.parts}
    assert "checkpoints/best.safetensors" in modes and "checkpoints/last.state.pt" in modes
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes


def test_models_takes_a_bare_word_as_a_substring_and_lines_up_its_columns(capsys):
    """`vitkit models dinov2` found nothing while '*dinov2*' found every DINOv2 preset; the columns broke on
    names longer than 28 characters."""
    assert main(["models", "*dinov2*"]) == 0
    globbed = capsys.readouterr().out
    assert main(["models", "dinov2"]) == 0
    assert capsys.readouterr().out == globbed and len(globbed.splitlines()) >= 7
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line.split()[0]) for line in lines) > 28  # long names exist ...
    assert len({line.index(" dim=") for line in lines}) == 1  # ... and every column starts at one place


# ---------------------------------------------------------------------------------------------------------------
# --config NAME, --print-config, vitkit config


def test_a_folder_named_like_a_recipe_does_not_hide_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion-mnist").mkdir()  # e.g. the data set's own folder
    assert main(["train", "--config", "fashion-mnist", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "fashion-mnist" and printed["data"]["dataset"] == "fashion-mnist"
    assert printed["model"]["patch_size"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["fashion-mnist"] and not any((tmp_path / "fashion-mnist").iterdir())


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, out_dir=Path("runs"))
    assert main(["train", "--config", str(recipe), "--set", "optim.lr=0.002", "train.epochs=3",
                 "--set", "data.mixup_alpha=0.2", "--print-config"]) == 0  # one --set takes several values
    captured = capsys.readouterr()
    assert captured.err == ""
    printed = yaml.safe_load(captured.out)
    # every key of every dataclass section, in the order of the dataclasses
    assert list(printed) == [f.name for f in RunConfig.__dataclass_fields__.values()]
    for section, cls in (("data", DataConfig), ("optim", OptimConfig), ("train", LoopConfig)):
        assert list(printed[section]) == list(cls.__dataclass_fields__), section
    # recipe < --set; defaults filled in
    assert printed["name"] == "tiny" and printed["out_dir"] == "runs" and printed["report"] is False
    assert printed["optim"]["lr"] == 0.002 and printed["train"]["epochs"] == 3 and printed["data"]["mixup_alpha"] == 0.2
    assert printed["optim"]["warmup_epochs"] == 0.5 and printed["data"]["batch_size"] == 128
    assert printed["model"] == TINY_MODEL
    assert printed["optim"]["eps"] == 1e-8 and printed["optim"]["betas"] == [0.9, 0.999]
    assert printed["data"]["val_fraction"] == 0.1 and printed["train"]["patience"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # no runs/ folder


def test_print_config_of_the_default_recipe_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--print-config", "--set", "seed=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "digits" and printed["seed"] == 7 and printed["train"]["epochs"] == 25
    assert list(tmp_path.iterdir()) == []


REFUSED_BY_TRAINING = {  # model sections --print-config once printed (exit 0) and training then refused
    "heads not dividing the width": (["model.embed_dim=100", "model.num_heads=3"], "divisible by num_heads"),
    "patch not dividing the image": (["model.patch_size=5"], "img_size 8 must be divisible by patch_size 5"),
    "no block": (["model.depth=0"], "depth must be a positive integer"),
    "drop path above 1": (["model.drop_path_rate=2"], "drop_path_rate must lie in [0, 1)"),
    "cls pooling without [CLS]": (["model.pool=cls", "model.class_token=false"], "pool='cls' needs class_token"),
}


@pytest.mark.parametrize("case", list(REFUSED_BY_TRAINING))
def test_print_config_refuses_what_training_refuses(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    sets, words = REFUSED_BY_TRAINING[case]
    argv = ["train", "--config", str(write_recipe(tmp_path))] + [a for s in sets for a in ("--set", s)]
    for args in (argv + ["--print-config"], argv):
        assert main(args) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert captured.out == "" and len(err.splitlines()) == 1 and words in err, err
    assert nothing_written(tmp_path / "runs") == []


@pytest.mark.parametrize("where", ["section", "top level", "--set value"])
def test_a_key_given_twice_is_refused(tmp_path, monkeypatch, capsys, where):
    """YAML keeps the last of two equal keys without a word: a recipe saying epochs twice is refused, naming
    the key and both lines, for training and --print-config alike."""
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path)
    text = recipe.read_text()
    sets = []
    if where == "section":
        text = text.replace("  epochs: 2\n", "  epochs: 2\n  epochs: 5\n")
        words = "key 'epochs' appears twice"
    elif where == "top level":
        text += "name: other\n"
        words = "key 'name' appears twice"
    else:
        sets = ["--set", "data.mean={a: 1, a: 2}"]
        words = "data.mean: value"
    recipe.write_text(text)
    for extra in (["--print-config"], []):
        assert main(["train", "--config", str(recipe), *sets, *extra]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert captured.out == "" and len(err.splitlines()) == 1 and words in err, err
        if where == "section":
            assert "lines" in err and "keep one" in err
    assert nothing_written(tmp_path / "runs") == []


def test_vitkit_config_prints_the_reference_and_docs_match_it(capsys):
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert text == reference()
    assert (REPO / "docs" / "config.md").read_text(encoding="utf-8") == reference(), \
        "docs/config.md is out of date: regenerate it with `vitkit config > docs/config.md`"
    for cls, section in ((DataConfig, "data"), (OptimConfig, "optim"), (LoopConfig, "train")):
        for name in cls.__dataclass_fields__:
            assert f"| `{section}.{name}` |" in text, f"{section}.{name}"
    for key in vitkit.train.config.RESUMABLE_CHANGES:
        assert f"- `{key}`" in text


# ---------------------------------------------------------------------------------------------------------------
# Resume semantics


def test_resume_refuses_a_change_of_the_learning_rate(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.csv", "results.json")}
    state = (run / "checkpoints" / "last.state.pt").read_bytes()
    assert main(["train", "--resume", str(run), "--set", "optim.lr=1e-3"]) == 2
    one_error_line(capsys, "optim.lr 0.003 -> 0.001", "start a new run")
    assert {name: (run / name).read_bytes() for name in before} == before
    assert (run / "checkpoints" / "last.state.pt").read_bytes() == state


def test_print_config_of_a_resume_refuses_what_the_resume_refuses(finished, tmp_path, capsys):
    """--print-config with --resume prints the config the resume trains with: the run's own, changed only as
    a resume may change it."""
    run = copy_run(finished, tmp_path)
    assert main(["train", "--resume", str(run), "--set", "optim.lr=1e-3", "--print-config"]) == 2
    assert one_error_line(capsys, "optim.lr 0.003 -> 0.001", "start a new run").out == ""
    assert main(["train", "--resume", str(run), "--set", "train.epochs=4", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 4 and printed["optim"]["lr"] == 0.003 and printed["name"] == "tiny"


def test_resume_with_more_epochs_follows_the_longer_schedule(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    _, recipe = finished
    reference_dir = tmp_path / "reference"
    assert main(["train", "--config", str(recipe), "--set", "train.epochs=4", "--set", f"out_dir={reference_dir}"]) == 0
    capsys.readouterr()

    assert main(["train", "--resume", str(run), "--set", "train.epochs=4"]) == 0
    out = capsys.readouterr().out
    assert "changed on resume: train.epochs 2 -> 4" in out
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"] and rows[-1]["step"] == "40"
    uninterrupted = metrics(reference_dir / "tiny")
    assert [r["lr"] for r in rows[2:]] == [r["lr"] for r in uninterrupted[2:]]
    assert float(rows[2]["lr"]) > float(rows[3]["lr"])  # epoch 3 is mid-decay, not already at min_lr
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    assert results(run)["epochs"] == 4 and results(run)["steps"] == 40


def finished_run_resumed(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    before = results(run)
    assert main(["train", "--resume", str(run)]) == 0
    assert "resumed from" in capsys.readouterr().out
    return before, results(run)


def test_resuming_a_finished_run_keeps_its_results(finished, tmp_path, capsys):
    before, after = finished_run_resumed(finished, tmp_path, capsys)
    assert set(after) == set(before)
    newly_null = [k for k in before if before[k] is not None and after[k] is None]
    assert newly_null == []
    changed = {k: (before[k], after[k]) for k in before if k != "wall_time" and before[k] != after[k]}
    assert changed == {}


def test_resuming_a_finished_run_keeps_its_wall_time(finished, tmp_path, capsys):
    """results.json's wall_time is a number too: a resume that trains nothing must not rewrite it."""
    before, after = finished_run_resumed(finished, tmp_path, capsys)
    assert after["wall_time"] == before["wall_time"]


@pytest.mark.parametrize("how", ["folder", "auto"])
def test_resume_falls_back_to_previous_state_when_last_is_truncated(tmp_path, monkeypatch, capsys, how):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path)
    assert main(["train", "--config", str(recipe)]) == 0
    run = tmp_path / "runs" / "tiny"
    last = run / "checkpoints" / "last.state.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    argv = ["train", "--resume", str(run)] if how == "folder" else \
        ["train", "--config", str(recipe), "--resume", "auto"]
    with pytest.warns(UserWarning, match="resuming from the previous checkpoint"):
        assert main(argv) == 0
    assert f"resumed from {run / 'checkpoints' / 'previous.state.pt'}" in capsys.readouterr().out
    assert load_training_state(last)["step"] == 20  # epoch 2 trained again, and saved
    assert [r["epoch"] for r in metrics(run)] == ["1", "2"]


# ---------------------------------------------------------------------------------------------------------------
# One run, one folder


def test_a_locked_folder_sends_a_new_run_to_the_next_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, epochs=1)
    held = Run(tmp_path / "runs" / "tiny").lock()  # another process starting a run of that name
    try:
        assert main(["train", "--config", str(recipe)]) == 0
    finally:
        held.release()
    assert f"run folder: {tmp_path / 'runs' / 'tiny-2'}" in capsys.readouterr().out
    assert (tmp_path / "runs" / "tiny-2" / "results.json").is_file()
    assert not (tmp_path / "runs" / "tiny" / "config.yaml").exists()


@pytest.mark.parametrize("how", ["folder", "auto"])
def test_resuming_a_locked_run_is_one_sentence(finished, tmp_path, monkeypatch, capsys, how):
    monkeypatch.chdir(tmp_path)
    run = copy_run(finished, tmp_path)
    _, recipe = finished
    before = (run / "checkpoints" / "last.state.pt").read_bytes()
    held = Run(run).lock()
    try:
        argv = (["train", "--resume", str(run)] if how == "folder" else
                ["train", "--config", str(recipe), "--set", f"out_dir={run.parent}", "--resume", "auto"])
        assert main(argv) == 2
    finally:
        held.release()
    one_error_line(capsys, f"run folder {run} is in use")
    assert (run / "checkpoints" / "last.state.pt").read_bytes() == before


def test_out_dir_that_is_a_file_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    assert main(train_args(tmp_path / "runs")) == 2
    one_error_line(capsys, f"out_dir {tmp_path / 'runs'} is a file")
    assert (tmp_path / "runs").read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------------------------
# A full disk while saving, and a bug


def failing_torch_save(monkeypatch, nth: int, error: Exception) -> list:
    """torch.save (as save_training_state calls it) raising ``error`` on its ``nth`` call."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == nth:
            raise error
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(vitkit.train.checkpoint.torch, "save", save)
    return calls


@pytest.mark.parametrize("how", ["ENOSPC", "RuntimeError-on-a-full-disk"])
def test_full_disk_while_saving_is_one_sentence_and_keeps_the_last_state(tmp_path, monkeypatch, capsys, how):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, checkpoint_every_steps=1)
    if how == "ENOSPC":
        error = OSError(errno.ENOSPC, "No space left on device")
    else:  # what torch.save's zip writer raises when a write fails
        error = RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                             "data/3: file write failed")
        monkeypatch.setattr(vitkit.fileio.shutil, "disk_usage",
                            lambda path: shutil._ntuple_diskusage(2**30, 2**30, 4096))
    calls = failing_torch_save(monkeypatch, 3, error)
    assert main(["train", "--config", str(recipe)]) == 2
    assert len(calls) == 3
    one_error_line(capsys, "vitkit train: error: no space is left on the device")
    checkpoints = tmp_path / "runs" / "tiny" / "checkpoints"
    assert load_training_state(checkpoints / "last.state.pt")["step"] == 2  # the save of step 3 failed
    assert load_training_state(checkpoints / "previous.state.pt")["step"] == 1
    assert not list(checkpoints.glob("*.tmp"))


def fail_writing(monkeypatch, module, name: str, error: Exception, when=lambda *args: True) -> list:
    """``module.name`` (a writer) raising ``error`` when ``when(*its arguments)``; returns the calls."""
    real, calls = getattr(module, name), []

    def writer(*args, **kwargs):
        calls.append(args)
        if when(*args):
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, writer)
    return calls


def no_space(path="") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


WRITERS = ("safetensors", "torch", "YAML", "CSV", "report")


@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_disk_under_any_writer_of_a_resume_is_one_sentence_and_changes_nothing(
        finished, tmp_path, monkeypatch, capsys, writer):
    """The issue's case: `--resume --set train.epochs=4` on a full disk was a bug report (exit 1) from
    safetensors' SafetensorError, and had already rewritten config.yaml to 4 epochs. Whichever writer meets
    the full disk, it is one sentence, exit 2, and the run's files still describe the run as it was (the
    report, written last, leaves the rest of a completed run)."""
    import safetensors
    import safetensors.torch

    import vitkit.typed_config
    import vitkit.report
    import vitkit.runs

    monkeypatch.chdir(tmp_path)
    run = copy_run(finished, tmp_path)
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "results.json")}
    if writer == "safetensors":
        fail_writing(monkeypatch, safetensors.torch, "save_file", safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"))
    elif writer == "torch":  # what torch.save's zip writer raises on a full disk
        fail_writing(monkeypatch, vitkit.train.checkpoint.torch, "save", RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: file write "
            "failed"))
        monkeypatch.setattr(vitkit.fileio.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 0))
    elif writer == "YAML":
        fail_writing(monkeypatch, vitkit.typed_config, "atomic_write_text", no_space())
    elif writer == "CSV":
        fail_writing(monkeypatch, vitkit.runs, "atomic_write_text", no_space(), lambda path, text: ".csv" in str(path))
    else:
        fail_writing(monkeypatch, vitkit.report, "atomic_write_text", no_space())
    extra = ["--set", "report=true"] if writer == "report" else []
    assert main(["train", "--resume", str(run), "--set", "train.epochs=4", *extra]) == 2
    one_error_line(capsys, "vitkit train: error: no space is left on the device")
    assert not list(run.rglob("*.tmp"))
    if writer == "report":  # the run trained to its end and saved all of it; only the report is missing
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
        assert json.loads((run / "results.json").read_text())["epochs"] == 4
        assert not (run / "report.html").exists()
        return
    # Whatever failed, what was saved is whole, and config.yaml says 4 epochs only once a checkpoint of the
    # 4-epoch run was saved (its own write failing keeps the old one).
    state = load_training_state(run / "checkpoints" / "last.state.pt")
    read_header(run / "checkpoints" / "best")
    if writer == "YAML" or state["epoch"] == EPOCHS:
        assert (run / "config.yaml").read_bytes() == before["config.yaml"], "config.yaml changed"
    else:
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    assert (run / "results.json").read_bytes() == before["results.json"]


def test_a_full_disk_under_safetensors_in_a_real_process_is_one_line(finished, tmp_path):
    """The issue's command as a process of its own: a sitecustomize makes safetensors' writer fail as it does
    on a full disk; stderr is one line, the exit code 2, and config.yaml still says 2 epochs unless a
    checkpoint of the longer run was saved."""
    import subprocess
    import sys

    run = copy_run(finished, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import safetensors, safetensors.torch\n"
        "def full(*args, **kwargs):\n"
        "    raise safetensors.SafetensorError('Error while serializing: I/O error: No space left on device '\n"
        "                                      '(os error 28)')\n"
        "safetensors.torch.save_file = full\n")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(site), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    before = (run / "config.yaml").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "vitkit", "train", "--resume", str(run), "--set", "train.epochs=4"],
                          env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("vitkit train: error: no space is left on the device for "), err
    assert str(run / "checkpoints") in err and "Traceback" not in err
    if load_training_state(run / "checkpoints" / "last.state.pt")["epoch"] == EPOCHS:
        assert (run / "config.yaml").read_bytes() == before


def test_an_unexpected_exception_is_reported_as_a_bug_with_its_traceback(tmp_path, monkeypatch, capsys):
    import tempfile

    import vitkit.train.loop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    recipe = write_recipe(tmp_path)

    def broken(self, *args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(vitkit.train.loop.RunningMetrics, "add", broken)
    assert main(["train", "--config", str(recipe)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("vitkit train: internal error (ZeroDivisionError: division by zero)")
    assert "this is a bug in vitkit" in err
    match = re.search(r"its traceback is in (\S+)$", err)
    assert match, err
    saved = Path(match.group(1))
    assert saved.parent == tmp_path and saved.is_file()
    text = saved.read_text()
    assert text.startswith("Traceback") and "ZeroDivisionError: division by zero" in text
    assert "in broken" in text and "train_epoch" in text


# ---------------------------------------------------------------------------------------------------------------
# Progress without a terminal

PROGRESS = re.compile(r"  epoch (\d)/2 step (\d+)/40: loss (\d+\.\d{4}) acc (\d\.\d{3}) \| (\d+) img/s \| "
                      r"ETA \d+m\d\ds")


def test_progress_lines_without_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vitkit.train.console, "PROGRESS_SECONDS", 0)
    recipe = write_recipe(tmp_path)
    assert main(["train", "--config", str(recipe), "--set", "data.batch_size=64"]) == 0  # 20 steps per epoch
    import sys
    assert not sys.stderr.isatty()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  epoch ")]
    assert lines, "no progress line"
    parsed = []
    for line in lines:
        match = PROGRESS.fullmatch(line)
        assert match, line
        epoch, step, loss = int(match.group(1)), int(match.group(2)), float(match.group(3))
        assert math.isfinite(loss)
        parsed.append((epoch, step))
    assert (1, 3) in parsed and (2, 40) in parsed
    assert [step for _, step in parsed] == list(range(1, 41))  # PROGRESS_SECONDS 0: a line per step
    assert all(epoch == (1 if step <= 20 else 2) for epoch, step in parsed)
