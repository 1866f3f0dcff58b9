"""TrainState: where a run stands, saved whole in the training state file and read back whole; the trainer
holds nothing else that a run changes (every attribute is set in __init__)."""

import dataclasses
import math

import pytest
import torch

from vitkit.train.checkpoint import load_training_state
from vitkit.train.config import load_run_config
from vitkit.train.loop import RunningMetrics
from vitkit.train.state import TrainState
from vitkit.train.trainer import Trainer, train

TINY = ["device=cpu", "report=false", "train.threads=1", "data.batch_size=128", "model.patch_size=4",
        "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.mlp_ratio=2.0", "optim.warmup_epochs=0.5",
        "train.epochs=1"]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_to_dict_and_from_dict_round_trip():
    state = TrainState(epoch=3, batch=4, step=34, best_accuracy=0.75, best_loss=0.5, best_epoch=2, bad_epochs=1,
                       stopped_early=False, wall_time=12.5, running=RunningMetrics("cpu", [3.0, 2.0, 4.0, -1.0]))
    d = state.to_dict()
    assert d == {"epoch": 3, "batch": 4, "step": 34, "best_accuracy": 0.75, "best_loss": 0.5, "best_epoch": 2,
                 "bad_epochs": 1, "stopped_early": False, "wall_time": 12.5, "running": [3.0, 2.0, 4.0, -1.0]}
    back = TrainState.from_dict(d, "cpu")
    assert back.running.values() == [3.0, 2.0, 4.0, -1.0]
    assert dataclasses.replace(back, running=None) == dataclasses.replace(state, running=None)


def test_the_running_sums_are_kept_only_mid_epoch():
    at_an_epochs_end = TrainState(epoch=1, batch=0, step=10, running=RunningMetrics("cpu", [1.0, 1.0, 1.0, -1.0]))
    assert at_an_epochs_end.to_dict()["running"] is None
    assert TrainState.from_dict({"epoch": 1, "batch": 0, "step": 10, "best_accuracy": 0.5,
                                 "running": [1.0, 1.0, 1.0, -1.0]}, "cpu").running is None


def test_a_field_an_older_file_lacks_takes_its_default():
    state = TrainState.from_dict({"epoch": 2, "batch": 0, "step": 20, "best_accuracy": 0.5}, "cpu")
    assert state == TrainState(epoch=2, step=20, best_accuracy=0.5, best_loss=math.inf, best_epoch=0, bad_epochs=0,
                               stopped_early=False, wall_time=0.0, running=None)


def test_the_state_file_holds_the_state_and_the_trainer_sets_every_attribute_in_init(tmp_path):
    trainer = Trainer(load_run_config(None, TINY), tmp_path / "run", log=lambda *_: None)
    before = set(vars(trainer))
    assert trainer.run() == 0
    assert set(vars(trainer)) == before
    saved = load_training_state(tmp_path / "run" / "checkpoints" / "last.state.pt")
    saved_state = {k: saved[k] for k in TrainState().to_dict()}
    assert saved_state.pop("wall_time") <= trainer.state.wall_time  # (results.json counted a little more)
    assert saved_state == {k: v for k, v in trainer.state.to_dict().items() if k != "wall_time"}
    assert (trainer.state.epoch, trainer.state.step, trainer.state.best_epoch) == (1, 10, 1)


def test_a_state_file_without_the_later_keys_resumes(tmp_path):
    """A training state file from before best_loss, best_epoch, bad_epochs, stopped_early, wall_time, running and
    adapt were saved: the run resumes, and a longer run goes on from its epoch."""
    run = tmp_path / "run"
    assert train(load_run_config(None, TINY), run_dir=run, log=lambda *_: None) == 0
    path = run / "checkpoints" / "last.state.pt"
    state = load_training_state(path)
    for key in ("best_loss", "best_epoch", "bad_epochs", "stopped_early", "wall_time", "running", "adapt"):
        del state[key]
    torch.save(state, path)
    lines = []
    assert train(load_run_config(None, TINY + ["train.epochs=2"]), resume=str(run), log=lines.append) == 0
    assert f"resumed from {path} at epoch 2, batch 0 (step 10)" in lines
    resumed = load_training_state(path)
    assert (resumed["epoch"], resumed["step"]) == (2, 20)
