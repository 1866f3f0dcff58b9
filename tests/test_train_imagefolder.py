"""Training on your own images, through the CLI and the run folder: both folder layouts, streamed and decoded
once; `vitkit eval` and `vitkit predict` see exactly the run's split and preprocessing; the test split is
scored once on `best` and never picks a checkpoint; a streamed run with loader workers resumes bit for bit
after SIGKILL / SIGTERM and stops once on Ctrl-C; a GPU recipe refuses a CPU. Folders are built with PIL."""

import contextlib
import csv
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import saved_step

from vitkit.cli import main
from vitkit.data import open_splits
from vitkit.train.checkpoint import load_training_state

CLASSES = ["dark", "mid", "light"]  # learnable: class k has mean brightness 30 + 95 k
SIZES = [(13, 17), (20, 24), (24, 20), (17, 13), (16, 16)]  # (height, width), mixed within every folder
TINY = ["data.img_size=16", "data.batch_size=4", "data.eval_batch_size=8", "data.randaugment=false",
        "model.patch_size=8", "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.mlp_ratio=2.0",
        "optim.lr=1e-2", "optim.warmup_epochs=0.5", "report=false", "device=cpu"]


def make_images(folder: Path, per_class: int, modes, seed: int) -> list[Path]:
    """``folder/<class>/<i>.png`` for the three classes; image i has mode modes[i % len(modes)] ("L" or "RGB")
    and size SIZES[i % len(SIZES)], a 2-pixel white-and-black frame around noise of its class's brightness."""
    rng = np.random.default_rng(seed)
    files = []
    for k, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = SIZES[i % len(SIZES)]
            pixels = np.clip(30 + 95 * k + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
            pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:] = 255, 0, 255, 0  # a frame: crops show
            mode = modes[i % len(modes)]
            img = Image.fromarray(pixels[..., 0], "L") if mode == "L" else Image.fromarray(pixels, "RGB")
            path = folder / name / f"{i:02d}.png"
            img.save(path)
            files.append(path)
    return files


def make_layout(root: Path, layout: str) -> dict:
    """"split": ROOT/train + val + test, grey and colour images (3 channels); "flat": ROOT/<class>/, grey only
    (1 channel). Returns the expected split sizes and channels."""
    if layout == "split":
        make_images(root / "train", 8, ["L", "RGB"], 0)
        make_images(root / "val", 3, ["RGB", "L"], 1)
        make_images(root / "test", 3, ["L"], 2)
        return {"num_train": 24, "num_val": 9, "num_test": 9, "channels": 3}
    make_images(root, 10, ["L"], 3)
    return {"num_train": 24, "num_val": 6, "num_test": 0, "channels": 1}  # round(0.2 * 10) = 2 of each class


def sets_args(sets) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence(text: str) -> bool:
    text = text.strip()
    return bool(text) and "\n" not in text and not re.search(r"\.\s+[A-Z]", text) and "Traceback" not in text


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class TrainedRun:
    def __init__(self, root, run, layout, cache, expected):
        self.root, self.run, self.layout, self.cache, self.expected = root, run, layout, cache, expected
        self.best = run / "checkpoints" / "best"
        self.results = json.loads((run / "results.json").read_text())
        self.metrics = read_csv(run / "metrics.csv")
        self.split_rows = read_csv(run / "split.csv")

    def files(self, split: str) -> list[str]:
        return [r["path"] for r in self.split_rows if r["split"] == split]


@pytest.fixture(scope="module", params=[("split", "none"), ("split", "memory"), ("flat", "none"), ("flat", "memory")],
                ids=lambda p: f"{p[0]}-{'streamed' if p[1] == 'none' else 'cache_memory'}")
def trained(request, tmp_path_factory):
    """One short run per (layout, data.cache): streamed through the folder loader (workers 0), or decoded once."""
    layout, cache = request.param
    tmp = tmp_path_factory.mktemp(f"{layout}-{cache}")
    root = tmp / "images"
    expected = make_layout(root, layout)
    sets = TINY + [f"data.dataset=imagefolder:{root}", f"data.cache={cache}", "data.workers=0",
                   "data.val_fraction=0.2", "train.epochs=4", f"out_dir={tmp / 'runs'}", "name=run"]
    code = main(["train", *sets_args(sets)])
    assert code == 0
    return TrainedRun(root, tmp / "runs" / "run", layout, cache, expected)


# ---------------------------------------------------------------------------------------------------------
# The run folder


def test_training_writes_the_run_folder_with_the_split_and_its_numbers(trained):
    run, expected, r = trained.run, trained.expected, trained.results
    for name in ("config.yaml", "split.csv", "metrics.csv", "results.json", "predictions/val.csv",
                 "checkpoints/best.safetensors", "checkpoints/last.safetensors", "checkpoints/last.state.pt"):
        assert (run / name).is_file(), name
    assert (run / "predictions" / "test.csv").is_file() == (expected["num_test"] > 0)

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["dataset"] == f"imagefolder:{trained.root}" and config["data"]["cache"] == trained.cache
    assert config["data"]["channels"] == expected["channels"]  # resolved from the images, recorded
    assert (config["model"]["in_channels"], config["model"]["num_classes"], config["model"]["img_size"]) == \
        (expected["channels"], 3, 16)

    # split.csv is the rule's split of the folder, every file once.
    rule = open_splits(f"imagefolder:{trained.root}", val_fraction=0.2, split_seed=0)
    assert (run / "split.csv").read_text() == rule.split_file_text()
    counts = {s: len(trained.files(s)) for s in ("train", "val", "test")}
    assert counts == {"train": expected["num_train"], "val": expected["num_val"], "test": expected["num_test"]}
    every = sorted(p.relative_to(trained.root).as_posix() for p in trained.root.rglob("*.png"))
    assert sorted(r_["path"] for r_ in trained.split_rows) == every
    assert all(row["path"].split("/")[-2] == row["class"] for row in trained.split_rows)
    if trained.layout == "split":
        assert all(row["path"].startswith(row["split"] + "/") for row in trained.split_rows)

    assert r["completed"] is True and r["epochs"] == 4 and r["steps"] == 4 * (expected["num_train"] // 4)
    assert (r["num_train"], r["num_val"], r["num_test"]) == \
        (expected["num_train"], expected["num_val"], expected["num_test"])
    assert r["chosen_on"] == "val" and r["model"] == "checkpoints/best"
    # 3 classes: every image is in its top 5, so no top-5 number is written anywhere.
    assert r["val_top5"] is None and r["test_top5"] is None
    assert [row["val_top5"] for row in trained.metrics] == [""] * 4
    assert [int(row["epoch"]) for row in trained.metrics] == [1, 2, 3, 4]
    ranks = [(float(row["val_accuracy"]), -float(row["val_loss"])) for row in trained.metrics]
    assert r["best_epoch"] == 1 + ranks.index(max(ranks))  # the best val accuracy, ties broken by the val loss
    assert r["val_accuracy"] == float(trained.metrics[r["best_epoch"] - 1]["val_accuracy"])
    assert r["val_accuracy"] > 1 / 3  # better than chance: the classes are learnable
    if expected["num_test"]:  # scored once, on `best`: predictions/test.csv holds the same number
        rows = read_csv(run / "predictions" / "test.csv")
        assert [row["source"] for row in rows] == trained.files("test")
        assert abs(np.mean([row["label"] == row["pred"] for row in rows]) - r["test_accuracy"]) < 1e-6
    else:
        assert r["test_accuracy"] is None and r["test_loss"] is None and r["test_top5"] is None

    # predictions/val.csv: the val files of split.csv, in that order, scored by `best`.
    rows = read_csv(run / "predictions" / "val.csv")
    assert [row["source"] for row in rows] == trained.files("val")
    assert [row["label"] for row in rows] == [row["class"] for row in trained.split_rows if row["split"] == "val"]
    assert abs(np.mean([row["label"] == row["pred"] for row in rows]) - r["val_accuracy"]) < 1e-6


# ---------------------------------------------------------------------------------------------------------
# vitkit eval and vitkit predict see the run's split and preprocessing


def test_eval_without_flags_scores_the_runs_val_split(trained, capsys, tmp_path):
    code, out, err = cli(capsys, "eval", "--checkpoint", str(trained.best), "--device", "cpu",
                         "--predictions", str(tmp_path / "val.csv"))
    assert code == 0, err
    n = trained.expected["num_val"]
    assert f", val split: {n} images (the files listed in {trained.run / 'split.csv'})" in out
    top1 = float(re.search(r"top-1 (\d\.\d{4})", out).group(1))
    assert top1 == round(trained.results["val_accuracy"], 4)
    assert "top-5" not in out  # 3 classes: every image is in its top 5
    rows = read_csv(tmp_path / "val.csv")
    assert [row["source"] for row in rows] == trained.files("val")
    assert abs(np.mean([row["label"] == row["pred"] for row in rows]) - trained.results["val_accuracy"]) < 1e-6
    # Image by image, the same predictions as the run made on its val split (within the CSVs' 6 decimals).
    during = read_csv(trained.run / "predictions" / "val.csv")
    assert [row["pred"] for row in rows] == [row["pred"] for row in during]
    for now, then in zip(rows, during):
        assert abs(float(now["confidence"]) - float(then["confidence"])) < 1e-5, (now, then)
        assert abs(float(now["loss"]) - float(then["loss"])) < 1e-5, (now, then)


def test_eval_split_test_scores_the_test_folder_or_is_one_sentence(trained, capsys, tmp_path):
    code, out, err = cli(capsys, "eval", "--checkpoint", str(trained.best), "--device", "cpu", "--split", "test",
                         "--predictions", str(tmp_path / "test.csv"))
    if trained.layout == "split":
        assert code == 0, err
        assert f", test split: {trained.expected['num_test']} images" in out
        rows = read_csv(tmp_path / "test.csv")
        assert [row["source"] for row in rows] == trained.files("test")
        accuracy = float(np.mean([row["label"] == row["pred"] for row in rows]))
        assert float(f"{accuracy:.6g}") == trained.results["test_accuracy"]
        during = read_csv(trained.run / "predictions" / "test.csv")
        assert [row["pred"] for row in rows] == [row["pred"] for row in during]
    else:
        assert code == 2 and out == ""
        assert one_sentence(err), err
        assert err.startswith("vitkit eval: error: there is no test split") and "--split train or val" in err
        assert not (tmp_path / "test.csv").exists()


def test_predict_agrees_with_eval_image_by_image(trained, capsys, tmp_path):
    code, _, err = cli(capsys, "eval", "--checkpoint", str(trained.best), "--device", "cpu",
                       "--predictions", str(tmp_path / "eval.csv"))
    assert code == 0, err
    by_eval = {row["source"]: row for row in read_csv(tmp_path / "eval.csv")}
    by_run = {row["source"]: row for row in read_csv(trained.run / "predictions" / "val.csv")}
    # A val/ folder is passed as a folder; held-out files one by one.
    targets = [str(trained.root / "val")] if trained.layout == "split" else \
        [str(trained.root / f) for f in trained.files("val")]
    code, out, err = cli(capsys, "predict", *targets, "--checkpoint", str(trained.best), "--device", "cpu",
                         "--json", "--top-k", "3")
    assert code == 0 and err == ""
    predicted = json.loads(out)
    sources = [Path(item["image"]).relative_to(trained.root).as_posix() for item in predicted]
    assert sources == trained.files("val")
    for item, source in zip(predicted, sources):
        top = item["top_k"]
        assert sorted(t["class"] for t in top) == sorted(CLASSES)
        assert top[0]["class"] == by_eval[source]["pred"] == by_run[source]["pred"], source
        assert abs(top[0]["probability"] - float(by_eval[source]["confidence"])) < 1e-5, source
        assert abs(top[0]["probability"] - float(by_run[source]["confidence"])) < 1e-5, source


def test_predict_searches_folders_recursively_and_skips_a_corrupt_file(trained, capsys, tmp_path):
    if trained.layout != "split" or trained.cache != "none":
        pytest.skip("one run is enough")
    inbox = tmp_path / "inbox"
    shutil.copytree(trained.root / "test" / "dark", inbox / "dark")
    shutil.copytree(trained.root / "test" / "light", inbox / "deeper" / "still" / "light")
    (inbox / "deeper" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (inbox / "notes.txt").write_text("not an image")
    (inbox / ".thumbnails").mkdir()
    shutil.copy(trained.root / "test" / "mid" / "00.png", inbox / ".thumbnails" / "hidden.png")
    images = sorted(p for p in inbox.rglob("*.png") if ".thumbnails" not in p.parts and p.name != "broken.png")
    assert len(images) == 6

    code, out, err = cli(capsys, "predict", str(inbox), "--checkpoint", str(trained.best), "--device", "cpu",
                         "--json", "--top-k", "1")
    assert code == 2  # a bad input: the person's to fix, as everywhere (the README's convention)
    predicted = json.loads(out)
    assert [item["image"] for item in predicted] == [str(p) for p in images]
    assert all(len(item["top_k"]) == 1 and item["top_k"][0]["class"] in CLASSES for item in predicted)
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"vitkit predict: skipped {inbox / 'deeper' / 'broken.png'}: image file ")
    assert lines[1] == "vitkit predict: 1 of 7 inputs could not be predicted"

    # The table: a header, then one row per image; the same exit code.
    code, out, err = cli(capsys, "predict", str(inbox), "--checkpoint", str(trained.best), "--device", "cpu",
                         "--top-k", "2")
    assert code == 2 and "broken.png" in err
    table = out.strip().splitlines()
    assert table[0].split() == ["image", "top-1", "p", "top-2", "p"] and len(table) == 1 + 6


def test_top_k_must_lie_between_one_and_the_number_of_classes(trained, capsys):
    if trained.layout != "flat" or trained.cache != "none":
        pytest.skip("one run is enough")
    image = str(trained.root / "dark" / "00.png")
    for k in ("0", "4", "-1"):
        code, out, err = cli(capsys, "predict", image, "--checkpoint", str(trained.best), "--device", "cpu",
                             "--top-k", k)
        assert code == 2 and out == ""
        assert one_sentence(err), err
        assert err.strip() == f"vitkit predict: error: --top-k must lie between 1 and 3 (the checkpoint's " \
                              f"classes), got {k}"
    code, out, err = cli(capsys, "predict", image, "--checkpoint", str(trained.best), "--device", "cpu",
                         "--top-k", "3", "--csv")
    assert code == 0 and err == ""
    assert out.splitlines()[0] == "image,class1,p1,class2,p2,class3,p3"


def test_predict_without_top_k_ranks_every_class_of_a_model_of_fewer_than_five(trained, capsys):
    """The README's own commands (no --top-k, with and without --csv) on a 3-class model: top-3, exit 0."""
    if trained.layout != "flat" or trained.cache != "none":
        pytest.skip("one run is enough")
    image = str(trained.root / "dark" / "00.png")
    code, out, err = cli(capsys, "predict", str(trained.root / "dark"), "--checkpoint", str(trained.best),
                         "--device", "cpu")
    assert code == 0 and err == ""
    assert out.splitlines()[0].split() == ["image", "top-1", "p", "top-2", "p", "top-3", "p"]
    code, out, err = cli(capsys, "predict", image, "--checkpoint", str(trained.best), "--device", "cpu", "--csv")
    assert code == 0 and err == ""
    assert out.splitlines()[0] == "image,class1,p1,class2,p2,class3,p3"


# ---------------------------------------------------------------------------------------------------------
# The test split never chooses a checkpoint


def loader_files(loader) -> list[str]:
    dataset = loader.dataset
    if hasattr(dataset, "samples"):  # streamed
        return [str(p) for p, _ in dataset.samples]
    return list(dataset.sources)  # decoded once


def test_the_test_split_is_scored_once_on_best_after_the_last_epoch(tmp_path, monkeypatch):
    import vitkit.train.trainer as trainer_module

    root = tmp_path / "images"
    make_layout(root, "split")
    run = tmp_path / "runs" / "run"
    real = trainer_module.evaluate
    # Validation (accuracy, loss) the spy reports: epochs 2 and 3 tie on accuracy and epoch 3 has the lower
    # loss, so it is the best; epoch 4 is the worst.
    fake_val = iter([(0.5, 1.0), (0.75, 0.9), (0.75, 0.8), (0.25, 1.2)])
    calls = []

    def spy(model, loader, *args, **kwargs):
        files = loader_files(loader)
        split = {f.relative_to(root).parts[0] for f in map(Path, files)}
        assert len(split) == 1, split
        split = split.pop()
        result = real(model, loader, *args, **kwargs)
        metrics = run / "metrics.csv"
        calls.append({"split": split, "files": files, "real": result["accuracy"],
                      "rows": len(read_csv(metrics)) if metrics.exists() else 0,
                      "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}})
        if split == "val":
            accuracy, loss = next(fake_val)
            result = {**result, "accuracy": accuracy, "loss": loss}
        return result

    monkeypatch.setattr(trainer_module, "evaluate", spy)
    sets = TINY + [f"data.dataset=imagefolder:{root}", "data.cache=none", "data.workers=0", "train.epochs=4",
                   f"out_dir={tmp_path / 'runs'}", "name=run"]
    assert main(["train", *sets_args(sets)]) == 0

    assert [c["split"] for c in calls] == ["val", "val", "val", "val", "test"]
    assert [c["rows"] for c in calls] == [0, 1, 2, 3, 4]  # the test split: after the last epoch's row
    test = calls[-1]
    assert test["files"] == [str(root / f) for f in
                             [r["path"] for r in read_csv(run / "split.csv") if r["split"] == "test"]]
    metrics = read_csv(run / "metrics.csv")
    accuracies = [float(r["val_accuracy"]) for r in metrics]
    assert accuracies == [0.5, 0.75, 0.75, 0.25]
    results = json.loads((run / "results.json").read_text())
    assert results["best_epoch"] == 3
    assert results["val_accuracy"] == 0.75 and results["val_loss"] == 0.8 and results["epochs"] == 4
    assert results["test_accuracy"] == float(f"{test['real']:.6g}")
    # The test split saw the weights validated at epoch 3 (what checkpoints/best holds), not the last ones.
    best = load_file(run / "checkpoints" / "best.safetensors")
    epoch3, epoch4 = calls[2]["weights"], calls[3]["weights"]
    for name, tensor in test["weights"].items():
        assert torch.equal(tensor, epoch3[name]), name
        assert torch.equal(tensor, best[name]), name
    assert any(not torch.equal(test["weights"][k], epoch4[k]) for k in epoch4)
    assert len(read_csv(run / "predictions" / "test.csv")) == 9


# ---------------------------------------------------------------------------------------------------------
# Interrupting a streamed run


EPOCHS, STEPS_PER_EPOCH = 4, 24 // 4


def stream_recipe(tmp_path: Path, name: str = "stream") -> Path:
    """A streamed folder run with 2 loader processes, random-resized crops, flips, RandAugment and dropout,
    checkpointing every step."""
    root = tmp_path / "images"
    make_layout(root, "flat")
    cfg = {
        "name": name, "out_dir": str(tmp_path / "runs"), "device": "cpu", "report": False, "seed": 5,
        "data": {"dataset": f"imagefolder:{root}", "img_size": 16, "batch_size": 4, "eval_batch_size": 8,
                 "cache": "none", "workers": 2, "randaugment": True, "hflip": True, "crop_scale": [0.25, 1.0],
                 "val_fraction": 0.2},
        "model": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                  "drop_rate": 0.1},
        "optim": {"lr": 3.0e-3, "warmup_epochs": 0.5},
        "train": {"epochs": EPOCHS, "threads": 1, "checkpoint_every_steps": 1, "deterministic": True},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def in_process(argv) -> tuple[int, str]:
    """``vitkit ARGV`` in this process (its loader workers fork from it); returns (exit code, stdout)."""
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return main(argv), out.getvalue()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """An uninterrupted reference run, and the same run stopped three times at random saved steps, each
    signal sent to the whole process group (the trainer and its 2 loader processes), as a terminal or a job
    scheduler does: SIGINT (Ctrl-C), SIGKILL, SIGTERM; then finished with --resume auto (in this process)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    recipe = stream_recipe(tmp)
    reference = tmp / "reference"
    code, _ = in_process(["train", "--config", str(recipe), "--set", f"out_dir={reference}"])
    assert code == 0

    run_dir = tmp / "runs" / "stream"
    command = [sys.executable, "-m", "vitkit", "train", "--config", str(recipe), "--resume", "auto"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    rng = random.Random(2024)
    sessions = []
    for sig in (signal.SIGINT, signal.SIGKILL, signal.SIGTERM):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            before = saved_step(run_dir)
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:  # until this session has saved a step
                if saved_step(run_dir) > before:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.15))
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        results = run_dir / "results.json"
        sessions.append({"signal": sig, "code": proc.returncode, "out": out, "err": err, "before": before,
                         "step": saved_step(run_dir),
                         "results": json.loads(results.read_text()) if results.exists() else None})
    code, out = in_process(command[3:])
    return {"reference": reference / "stream", "run": run_dir, "sessions": sessions, "code": code, "out": out}


def test_a_streamed_run_with_workers_resumes_bit_exactly_after_sigint_sigkill_and_sigterm(interrupted):
    total = EPOCHS * STEPS_PER_EPOCH
    sessions = interrupted["sessions"]
    codes = [s["code"] for s in sessions]
    assert codes == [130, -signal.SIGKILL, 143], [s["err"][-1500:] for s in sessions]
    steps = [s["step"] for s in sessions]
    assert 0 < steps[0] < steps[1] < steps[2] < total, steps  # each session trained, none finished
    assert interrupted["code"] == 0 and "resumed from" in interrupted["out"]

    run_dir, reference_dir = interrupted["run"], interrupted["reference"]
    ours = load_training_state(run_dir / "checkpoints" / "last.state.pt")
    theirs = load_training_state(reference_dir / "checkpoints" / "last.state.pt")
    assert ours["step"] == theirs["step"] == total and ours["epoch"] == theirs["epoch"] == EPOCHS
    assert (run_dir / "split.csv").read_text() == (reference_dir / "split.csv").read_text()
    assert ours["model"].keys() == theirs["model"].keys()
    differ = [name for name in ours["model"] if not torch.equal(ours["model"][name], theirs["model"][name])]
    assert differ == [], f"{len(differ)} of {len(ours['model'])} tensors differ after resuming at steps {steps}"

    def moments(state):
        return {(i, k): v for i, s in state["optimizer"]["state"].items() for k, v in s.items()}

    a, b = moments(ours), moments(theirs)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")}  # noqa: E731
                                for r in rows]
    assert drop_timing(read_csv(run_dir / "metrics.csv")) == drop_timing(read_csv(reference_dir / "metrics.csv"))
    assert (run_dir / "predictions" / "val.csv").read_text() == \
        (reference_dir / "predictions" / "val.csv").read_text()


def test_ctrl_c_with_loader_workers_announces_once_and_exits_130(interrupted):
    session = interrupted["sessions"][0]
    assert session["signal"] == signal.SIGINT
    err = session["err"]
    assert session["code"] == 130, err[-2000:]
    assert err.count("received: finishing this step") == 1, err  # not once more per loader process
    assert "SIGINT received: finishing this step and saving checkpoints/last" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert f"stopped at step {session['step']} " in session["out"]
    assert session["step"] > session["before"]
    assert session["results"]["completed"] is False and session["results"]["steps"] == session["step"]
    # SIGTERM, also sent to the loader processes, stops the same way (143), announced once.
    term = interrupted["sessions"][2]
    assert term["code"] == 143 and term["err"].count("SIGTERM received: finishing this step") == 1, term["err"]


# ---------------------------------------------------------------------------------------------------------
# A GPU recipe on a CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_gpu_recipe_refuses_a_cpu_and_names_the_cpu_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "images"
    make_layout(root, "flat")
    code, out, err = cli(capsys, "train", "--config", "imagefolder-gpu", "--set", f"data.dataset=imagefolder:{root}")
    assert code == 2 and out == ""
    assert one_sentence(err), err
    assert err.startswith("vitkit train: error: ")
    assert re.search(r"\bimagefolder\b(?!-)", err), err  # the CPU recipe, not only imagefolder-gpu
    assert not (tmp_path / "runs").exists()
