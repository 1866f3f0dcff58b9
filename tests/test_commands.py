"""`vitkit train | eval | predict` end to end on a tiny digits run: the run folder, what eval and predict print,
and one-sentence errors (exit 2, no traceback) for bad configs and truncated, empty or foreign checkpoints."""

import csv
import json
import shutil

import pytest
import yaml
from PIL import Image

from conftest import train_tiny_digits
from vitkit.cli import main
from vitkit.data import load_dataset
from vitkit.runs import METRICS_COLUMNS

EPOCHS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-epoch run; returns (run folder, recipe, stdout)."""
    return train_tiny_digits(tmp_path_factory.mktemp("cli"), depth=1, epochs=EPOCHS)


def test_train_writes_a_complete_run_folder(run):
    folder, _, stdout = run
    assert f"run folder: {folder}" in stdout and "test accuracy" in stdout and "val accuracy" in stdout
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["in_channels"] == 1 and config["model"]["num_classes"] == 10  # resolved from the data
    assert config["model"]["img_size"] == 8 and config["optim"]["lr"] == 3e-3
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRICS_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    results = json.loads((folder / "results.json").read_text())
    assert {"train_loss", "val_accuracy", "test_accuracy", "best_epoch", "epochs", "wall_time"} <= set(results)
    assert results["epochs"] == EPOCHS and results["completed"] is True
    assert (results["num_train"], results["num_val"], results["num_test"]) == (1295, 142, 360)
    val = [float(r["val_accuracy"]) for r in rows]
    ranks = [(float(r["val_accuracy"]), -float(r["val_loss"])) for r in rows]
    assert results["best_epoch"] == ranks.index(max(ranks)) + 1  # the best val accuracy, ties broken by the loss
    assert results["val_accuracy"] == max(val) and results["chosen_on"] == "val"
    assert 0 < results["test_accuracy"] <= 1 and "test_accuracy" not in rows[0]  # test: once, at the end
    names = {p.name for p in (folder / "checkpoints").iterdir()}
    assert {"last.safetensors", "best.safetensors", "last.state.pt", "previous.state.pt"} <= names
    assert not any(n.endswith(".tmp") for n in names)


def test_tensorboard_events_hold_the_metrics_csv_values(run):
    """With tensorboard installed (it is in the dev extra), every metrics.csv column is a scalar per epoch."""
    from tensorboard.backend.event_processing import event_accumulator
    folder, _, _ = run
    events = event_accumulator.EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for column in METRICS_COLUMNS[1:]:
        scalars = events.Scalars(column)
        assert [s.step for s in scalars] == [1, 2], column
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows], rel=1e-5), column


def test_a_second_run_never_overwrites_the_first(run, capsys):
    folder, recipe, _ = run
    assert main(["train", "--config", str(recipe), "--set", "train.epochs=1"]) == 0
    assert f"run folder: {folder.with_name('tiny-2')}" in capsys.readouterr().out
    assert json.loads((folder / "results.json").read_text())["epochs"] == EPOCHS


@pytest.mark.parametrize("split, key, count", [(None, "val_accuracy", 142), ("test", "test_accuracy", 360)])
def test_eval_scores_the_runs_own_splits(run, capsys, split, key, count):
    folder, _, _ = run
    flags = ["--split", split] if split else []
    assert main(["eval", "--checkpoint", str(folder / "checkpoints" / "best"), "--device", "cpu", *flags]) == 0
    out = capsys.readouterr().out
    recorded = json.loads((folder / "results.json").read_text())[key]
    assert f"{split or 'val'} split: {count} images" in out
    assert f"top-1 {recorded:.4f}" in out and "top-5" in out  # the best checkpoint scores its recorded accuracy
    matrix = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(matrix) == 10
    assert sum(int(v) for line in matrix for v in line.split()[2:]) == count  # every image counted once


def test_predict_prints_top_k_classes(run, tmp_path, capsys):
    folder, _, _ = run
    test = load_dataset("digits", split="test")
    paths = []
    for i in range(2):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(test.images[i, 0].numpy()).resize((32, 32), Image.NEAREST).save(path)
        paths.append(str(path))
    assert main(["predict", *paths, "--checkpoint", str(folder / "checkpoints" / "best"), "--top-k", "3",
                 "--device", "cpu"]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["image", "top-1", "p", "top-2", "p", "top-3", "p"] and len(lines) == 2
    for path, line in zip(paths, lines):
        head, *ranked = line.split()
        classes, probs = ranked[0::2], [float(p) for p in ranked[1::2]]
        assert head == path and len(classes) == 3 and all(c in "0123456789" for c in classes)
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.001


class NotATensor:  # what a pickled training script's checkpoint may hold
    pass


@pytest.mark.parametrize("kind", ["pickle", "onnx", "onnx-renamed"])
def test_a_pickle_or_an_onnx_file_as_checkpoint_is_one_safe_sentence(tmp_path, capsys, kind):
    """torch.load's six-line refusal suggested weights_only=False ("can result in arbitrary code execution")
    for both. A pickle gets one sentence that never invites that; an ONNX export is named as one."""
    import torch

    if kind == "pickle":
        path = tmp_path / "model.pt"
        torch.save({"model": NotATensor()}, path)
        words = "holds pickled Python objects (test_commands.NotATensor) besides tensors"
    else:
        pytest.importorskip("onnx")
        path = tmp_path / ("model.onnx" if kind == "onnx" else "model.bin")
        torch.onnx.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),), str(path), dynamo=False)
        words = "is an ONNX export, which cannot be loaded as a checkpoint"
    image = tmp_path / "a.png"
    Image.new("L", (8, 8), 128).save(image)
    capsys.readouterr()
    for argv in (["predict", str(image), "--checkpoint", str(path), "--device", "cpu"],
                 ["train", "--resume", str(path)]):
        assert main(argv) == 2
        err = one_error_line(capsys, words)
        assert "weights_only" not in err and "arbitrary code" not in err and "trust" not in err, err


def test_predict_with_a_headless_backbone_points_to_features(tmp_path, capsys):
    """A model without a head (num_classes 0) has no classes to rank: one sentence naming --features, exit 2
    (not "--top-k must lie between 1 and 0")."""
    from vitkit.checkpoint import save_weights
    from vitkit.model import VisionTransformer

    model = VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=0, embed_dim=16, depth=1,
                              num_heads=2)
    save_weights(model, tmp_path / "backbone", {})
    image = tmp_path / "a.png"
    Image.new("L", (8, 8), 128).save(image)
    capsys.readouterr()
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "backbone"), "--device", "cpu"]) == 2
    err = one_error_line(capsys, "has no classification head (num_classes 0)")
    assert "--features" in err and "between 1 and 0" not in err


@pytest.mark.parametrize("embedding", ["pooled", "head"])
def test_predict_writes_embeddings(run, tmp_path, capsys, embedding):
    import json

    import torch
    from safetensors import safe_open

    from vitkit.predictor import Predictor

    folder, _, _ = run
    test = load_dataset("digits", split="test")
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    paths = [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "sub" / "b.png"]
    for i, path in enumerate(paths):
        Image.fromarray(test.images[i, 0].numpy()).save(path)
    out = tmp_path / "emb.safetensors"
    assert main(["predict", str(tmp_path / "imgs"), "--checkpoint", str(folder / "checkpoints" / "best"),
                 "--features", str(out), "--embedding", embedding, "--device", "cpu"]) == 0
    assert f"wrote {out}: 2 embeddings of dimension {32 if embedding == 'pooled' else 10}" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        features, meta = f.get_tensor("features"), f.metadata()
    assert json.loads(meta["images"]) == [str(p) for p in paths] and meta["embedding"] == embedding
    predictor = Predictor.load(folder / "checkpoints" / "best")
    x = torch.stack([predictor.preprocess(p) for p in paths])  # (2, 1, 8, 8)
    with torch.no_grad():
        tokens = predictor.model.forward_features(x)
        expected = predictor.model.forward_head(tokens, pre_logits=embedding == "pooled")
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_predict_writes_dense_features_and_prefix_tokens(run, tmp_path, capsys):
    """--features --dense: the final normed patch tokens on their grid (N, D, h, w), the [CLS] apart."""
    import torch
    from safetensors import safe_open

    from vitkit.predictor import Predictor

    folder, _, _ = run
    test = load_dataset("digits", split="test")
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        Image.fromarray(test.images[i, 0].numpy()).save(path)
    out = tmp_path / "dense.safetensors"
    ckpt = str(folder / "checkpoints" / "best")
    assert main(["predict", *map(str, paths), "--checkpoint", ckpt, "--features", str(out), "--dense",
                 "--batch-size", "2", "--device", "cpu"]) == 0
    assert f"wrote {out}: 3 patch-feature maps of 32 x 2 x 2 (dense)" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        dense, prefix, meta = f.get_tensor("features"), f.get_tensor("prefix"), f.metadata()
    assert meta["embedding"] == "dense" and dense.shape == (3, 32, 2, 2) and prefix.shape == (3, 1, 32)
    predictor = Predictor.load(ckpt)
    x = torch.stack([predictor.preprocess(p) for p in paths])  # (3, 1, 8, 8)
    with torch.no_grad():
        tokens = predictor.model.forward_features(x)  # (3, 1 + 4, 32)
    torch.testing.assert_close(dense[:, :, 1, 0], tokens[:, 1 + 1 * 2 + 0], rtol=0, atol=1e-6)  # row 1, col 0
    torch.testing.assert_close(dense[:, :, 0, 1], tokens[:, 1 + 0 * 2 + 1], rtol=0, atol=1e-6)  # row 0, col 1
    torch.testing.assert_close(prefix[:, 0], tokens[:, 0], rtol=0, atol=1e-6)
    for extra, words in [([], "give --features OUT.safetensors"),
                         (["--features", str(out), "--embedding", "cls"], "--embedding cls says nothing")]:
        assert main(["predict", str(paths[0]), "--checkpoint", ckpt, "--dense", *extra]) == 2
        one_error_line(capsys, words)


def one_error_line(capsys, expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expected in err, err
    return err


@pytest.mark.parametrize("how", ["truncated", "empty", "wrong-architecture"])
def test_bad_checkpoints_give_one_sentence_and_exit_2(run, tmp_path, capsys, how):
    folder, _, _ = run
    best = folder / "checkpoints" / "best.safetensors"
    bad = tmp_path / "bad.safetensors"
    if how == "truncated":
        data = best.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        bad.write_bytes(b"")
    else:  # the architecture in the header says dim 32; the tensors are of a dim-16 model
        from safetensors.torch import load_file, save_file
        from safetensors import safe_open
        with safe_open(str(best), "pt") as f:
            header = f.metadata()
        header["vitkit_config"] = header["vitkit_config"].replace('"embed_dim": 32', '"embed_dim": 16')
        save_file(load_file(best), str(bad), metadata=header)
    assert main(["eval", "--checkpoint", str(bad), "--device", "cpu"]) == 2
    one_error_line(capsys, "vitkit eval: error: checkpoint")
    assert main(["predict", str(bad), "--checkpoint", str(bad), "--device", "cpu"]) == 2
    one_error_line(capsys, "vitkit predict: error: checkpoint")


def test_bad_training_states_and_configs_exit_2(run, tmp_path, capsys):
    folder, recipe, _ = run
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "checkpoints" / "last.state.pt").write_bytes(b"")
    assert main(["train", "--resume", str(broken / "checkpoints" / "last.state.pt")]) == 2
    one_error_line(capsys, "is empty")

    assert main(["train", "--config", str(recipe), "--resume", str(folder), "--set", "model.embed_dim=64"]) == 2
    one_error_line(capsys, "this one changes model.embed_dim 32 -> 64; start a new run")

    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    one_error_line(capsys, "does not exist")

    typo = tmp_path / "typo.yaml"
    typo.write_text(recipe.read_text().replace("optim:", "optimm:"))
    assert main(["train", "--config", str(typo)]) == 2
    one_error_line(capsys, "unknown config key 'optimm'")

    assert main(["train", "--config", str(recipe), "--set", "train.epoch=3"]) == 2
    one_error_line(capsys, "unknown config key 'train.epoch'; expected one of: epochs,")


def test_compile_without_a_compiler_is_one_sentence(run, tmp_path, monkeypatch, capsys):
    _, recipe, _ = run
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    out = tmp_path / "runs"
    assert main(["train", "--config", str(recipe), "--set", "train.compile=true", "--set", f"out_dir={out}"]) == 2
    one_error_line(capsys, "train.compile=true on the CPU needs a C++ compiler")
    assert not any(out.glob("*/checkpoints/*"))  # nothing trained, nothing written
    assert main(["train", "--config", str(recipe), "--set", "train.compile=true", "--print-config"]) == 2
    one_error_line(capsys, "train.compile=true on the CPU needs a C++ compiler")  # what training refuses


def test_resume_of_a_finished_run_trains_nothing_more(run, capsys):
    folder, _, _ = run
    before = (folder / "checkpoints" / "last.safetensors").read_bytes()
    assert main(["train", "--resume", str(folder)]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert (folder / "checkpoints" / "last.safetensors").read_bytes() == before


def test_fine_tuning_starts_from_the_init_weights_and_ema_is_exported(run, tmp_path):
    import torch
    from safetensors.torch import load_file

    from vitkit.train import load_run_config
    from vitkit.train.checkpoint import load_training_state
    from vitkit.train.trainer import Trainer

    folder, recipe, _ = run
    best = folder / "checkpoints" / "best.safetensors"
    cfg = load_run_config(recipe, [f"model.init={best}", "train.epochs=1", "train.ema_decay=0.9"])
    trainer = Trainer(cfg, tmp_path / "ft", log=lambda *_: None)
    start = load_file(best)
    assert all(torch.equal(v, start[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.run() == 0
    state = load_training_state(tmp_path / "ft" / "checkpoints" / "last.state.pt")
    exported = load_file(tmp_path / "ft" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in state["ema"].items())  # the EMA is what is exported
    assert not torch.equal(state["ema"]["head.weight"], state["model"]["head.weight"])


def test_first_signal_asks_to_stop_second_sigint_stops_at_once():
    import os
    import signal

    from vitkit.train.signals import StopRequest

    with StopRequest(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_code == 143
    with StopRequest(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_only_ctrl_c_is_told_that_pressing_it_again_stops_at_once(capsys):
    """SIGTERM (a scheduler, a container stop) has no Ctrl-C to press again: its announcement does not say so."""
    import os
    import signal

    from vitkit.train.signals import StopRequest

    for sig in (signal.SIGTERM, signal.SIGINT):
        with StopRequest(announce=True):
            os.kill(os.getpid(), sig)
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"{sig.name} received: finishing this step and saving checkpoints/last"), err
        assert ("Ctrl-C" in err) == (sig == signal.SIGINT), err
