"""The console alone: a RunPlan and a TrainState made by hand, and the exact lines it prints. The expected lines
are what the trainer printed for the same values before the console was told rather than reaching in; the
last test checks that a real trainer's plan announces what a real run prints."""

import dataclasses
from pathlib import Path

import pytest

import vitkit.train.console
from vitkit.config import ViTConfig
from vitkit.train.config import load_run_config
from vitkit.train.console import Console
from vitkit.train.loop import RunningMetrics
from vitkit.train.plan import RunPlan
from vitkit.train.state import TrainState

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def digits_plan(**changes) -> RunPlan:
    """The plan of the tiny digits run of test_train_config (1x8x8 images, a 2794-parameter ViT)."""
    cfg = load_run_config(None, ["device=cpu", "data.batch_size=128", "model.patch_size=4", "model.embed_dim=16",
                                 "model.depth=1", "model.num_heads=2", "model.mlp_ratio=2.0", "train.epochs=2"])
    plan = RunPlan(
        cfg=cfg, model=ViTConfig(img_size=8, patch_size=4, in_channels=1, num_classes=10, embed_dim=16, depth=1,
                                 num_heads=2, mlp_ratio=2.0),
        parameters=2794, sizes={"train": 1295, "val": 142, "test": 360}, eval_splits=("val", "test"), classes=10,
        channels=1, img_size=(8, 8), stats=((0.5,), (0.5,)),
        split_rule="official test split; validation: 10% of each class of the training split (split_seed 0)",
        batches_per_epoch=10, steps_per_epoch=10, device="cpu", world_size=1, lr=1e-5, run_dir=Path("runs/tiny"),
        best_weights=Path("runs/tiny/checkpoints/best"))
    return dataclasses.replace(plan, **changes)


def folder_plan(**changes) -> RunPlan:
    """A resumed two-process fine-tuning run on an image folder, with everything the announcement can say."""
    cfg = load_run_config(None, ["device=cpu", "data.dataset=imagefolder:/data/pets", "data.batch_size=32",
                                 "model.init=weights/dino.safetensors", "optim.layer_decay=0.75",
                                 "optim.head_warmup_epochs=1", "optim.lr=5e-4", "train.epochs=10",
                                 "train.freeze=blocks:2", "train.patience=3"])
    plan = RunPlan(
        cfg=cfg, model=ViTConfig(img_size=32, patch_size=8, in_channels=3, num_classes=3, embed_dim=64, depth=4,
                                 num_heads=4, rope="axial"),
        parameters=200200, sizes={"train": 300, "val": 60, "test": 0}, eval_splits=("val",), classes=3,
        channels=3, img_size=(32, 32), stats=IMAGENET, split_rule="/data/pets: train/ and val/ folders, no test split",
        batches_per_epoch=10, steps_per_epoch=10, device="cuda:0", world_size=2, lr=3e-4, run_dir=Path("runs/pets"),
        best_weights=Path("runs/pets/checkpoints/best"),
        preprocessing="resize short side 36 (bicubic), centre 32x32, 3-channel, mean/std 0.485/0.229, 0.456/0.224, "
                      "0.406/0.225",
        weights_stats=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        adapt="frozen blocks:2 (in eval mode); 0.1M of 0.2M parameters train",
        resumed_from=Path("runs/pets/checkpoints/last.state.pt"),
        changes=(("train.epochs", 8, 10), ("train.patience", None, 3), ("data.workers", 4, 8)))
    return dataclasses.replace(plan, **changes)


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def console(plan: RunPlan, **kwargs) -> tuple[Console, list[str]]:
    lines = []
    return Console(plan, lines.append, **kwargs), lines


DIGITS_ANNOUNCEMENT = [
    "data:  digits: 1295 train / 142 val / 360 test images, 10 classes, 1x8x8 pixels",
    "split: official test split; validation: 10% of each class of the training split (split_seed 0)",
    "model: ViT 0.00M parameters (dim 16, depth 1, heads 2, patch 4, 2x2 patches)",
    "train: 2 epochs x 10 steps, batch 128, AdamW lr 0.003, on cpu",
    "run folder: runs/tiny",
]


def test_the_announcement_of_a_new_run():
    c, lines = console(digits_plan())
    c.announce(TrainState())
    assert lines == DIGITS_ANNOUNCEMENT


def test_the_announcement_of_a_resumed_fine_tuning_run_on_an_image_folder():
    c, lines = console(folder_plan())
    with pytest.warns(UserWarning) as caught:
        c.announce(TrainState(epoch=8, batch=3, step=83))
    assert lines == [
        "data:  imagefolder:/data/pets: 300 train / 60 val images, 3 classes, 3x32x32 pixels",
        "split: /data/pets: train/ and val/ folders, no test split",
        "preprocessing: resize short side 36 (bicubic), centre 32x32, 3-channel, mean/std 0.485/0.229, "
        "0.456/0.224, 0.406/0.225",
        "model: ViT 0.20M parameters (dim 64, depth 4, heads 4, patch 8, 4x4 patches, axial rotary embedding), "
        "initialised from weights/dino.safetensors",
        "adapt: frozen blocks:2 (in eval mode); 0.1M of 0.2M parameters train",
        "train: 10 epochs x 10 steps, batch 32, AdamW lr 0.0005, layer decay 0.75, the head alone for the first "
        "1 epoch, on cuda:0, 2 processes",
        "resumed from runs/pets/checkpoints/last.state.pt at epoch 9, batch 3 (step 83)",
        "changed on resume: train.epochs 8 -> 10 (the remaining steps follow the schedule of a run of the new "
        "length; lr now 3.00e-04)",
        "changed on resume: train.patience None -> 3 (early stopping counts from the epochs already run)",
        "changed on resume: data.workers 4 -> 8",
        "run folder: runs/pets",
    ]
    assert [str(w.message) for w in caught] == [
        "the weights of weights/dino.safetensors were trained on images normalised with mean (0.5, 0.5, 0.5) and "
        "std (0.5, 0.5, 0.5), this run normalises with (0.485, 0.456, 0.406) and (0.229, 0.224, 0.225); to use "
        "theirs, set data.mean=[0.5, 0.5, 0.5] and data.std=[0.5, 0.5, 0.5]"]


@pytest.mark.parametrize("plan, speaks", [(folder_plan(weights_stats=IMAGENET), True), (folder_plan(), False)],
                         ids=["the weights' own statistics", "not the main process"])
def test_no_normalisation_warning(recwarn, plan, speaks):
    c, lines = console(plan, speaks=speaks)
    c.announce(TrainState(epoch=8, batch=3, step=83))
    assert not [w for w in recwarn if "normalised" in str(w.message)]
    assert (len(lines) == 11) == speaks


def test_a_process_that_is_not_the_main_one_prints_nothing():
    c, lines = console(digits_plan(), speaks=False)
    c.announce(TrainState())
    c.epoch({"epoch": 1, "step": 10, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": None,
             "val_accuracy": None, "val_top5": None, "lr": 1e-3, "images_per_s": 10.0, "seconds": 1.0})
    c.stopped(TrainState(step=5, batch=5))
    assert lines == []


def test_progress_lines_without_a_terminal(monkeypatch):
    """A line when PROGRESS_SECONDS have passed since the last, with the epoch's images per second and an ETA
    from this session's steps per second (a resumed session's earlier steps do not count)."""
    clock = Clock(50.0)
    c, lines = console(folder_plan(), clock=clock)
    c.announce(TrainState(epoch=8, batch=3, step=83))  # the session starts at 50 s, at step 83
    clock.now = 100.0
    c.begin_epoch(TrainState(epoch=8, batch=3, step=83))  # the epoch's rest starts at 100 s, at batch 3
    lines.clear()
    state = TrainState(epoch=8, batch=5, step=85, running=RunningMetrics("cpu", [2.5 * 64, 40.0, 64.0, -1.0]))
    clock.now = 110.0
    c.progress(state)
    assert lines == ["  epoch 9/10 step 85/100: loss 2.5000 acc 0.625 | 6 img/s | ETA 7m30s"]
    clock.now = 139.0
    c.progress(state)  # 29 s later: not yet
    assert len(lines) == 1
    clock.now = 4000.0
    c.progress(state)
    assert lines[1:] == ["  epoch 9/10 step 85/100: loss 2.5000 acc 0.625 | 0 img/s | ETA 8h13m"]
    monkeypatch.setattr(vitkit.train.console, "PROGRESS_SECONDS", 0)
    c.progress(state)
    assert len(lines) == 3


def test_epoch_lines_with_and_without_validation():
    c, lines = console(folder_plan())
    c.epoch({"epoch": 9, "step": 90, "train_loss": 0.123456, "train_accuracy": 0.9, "val_loss": 0.25,
             "val_accuracy": 0.875, "val_top5": None, "lr": 2.5e-4, "images_per_s": 1234.56, "seconds": 12.34})
    c.epoch({"epoch": 10, "step": 100, "train_loss": 0.1, "train_accuracy": 0.95, "val_loss": None,
             "val_accuracy": None, "val_top5": None, "lr": 1e-5, "images_per_s": 99.4, "seconds": 3.05})
    assert lines == [
        "epoch   9/10  train loss 0.1235 acc 0.9000 | val loss 0.2500 acc 0.8750 | lr 2.50e-04 | 1235 img/s | 12.3s",
        "epoch  10/10  train loss 0.1000 acc 0.9500 | lr 1.00e-05 | 99 img/s | 3.0s",
    ]


def test_a_stopped_run_and_an_early_stop():
    c, lines = console(folder_plan())
    c.stopping_early(TrainState(epoch=6, bad_epochs=3, best_epoch=3))
    c.stopped(TrainState(epoch=0, batch=5, step=5))
    assert lines == [
        "stopping early: validation accuracy has not improved for 3 epochs (train.patience 3); the best was epoch 3",
        "stopped at step 5 (epoch 1, batch 5); resume with: vitkit train --resume runs/pets",
    ]


RESULTS = {"wall_time": 123.456, "best_epoch": 7, "epochs": 10, "val_accuracy": 0.9, "num_val": 60,
           "test_accuracy": None, "num_test": 0}


@pytest.mark.parametrize("eval_splits, results, report, expected", [
    (("val",), RESULTS, False, [
        "done in 123.5s: best epoch 7 of 10 (val accuracy 0.9000 on 60 images); no test split (checkpoints/best)",
        "run folder: runs/tiny  (config.yaml, metrics.csv, results.json, checkpoints/best.safetensors)",
        "next: vitkit eval --checkpoint runs/tiny/checkpoints/best"]),
    (("test",), {**RESULTS, "test_accuracy": 0.8125, "num_test": 16}, True, [
        "done in 123.5s: the last epoch (10; no validation split); test accuracy 0.8125 on 16 images "
        "(checkpoints/best)",
        "run folder: runs/tiny  (config.yaml, metrics.csv, results.json, checkpoints/best.safetensors, report.html)",
        "next: vitkit eval --checkpoint runs/tiny/checkpoints/best --split test"]),
    ((), RESULTS, False, [
        "done in 123.5s: the last epoch (10; no validation split); no test split (checkpoints/best)",
        "run folder: runs/tiny  (config.yaml, metrics.csv, results.json, checkpoints/best.safetensors)",
        "next: vitkit eval --checkpoint runs/tiny/checkpoints/best --split train"]),
], ids=["val", "test and a report", "neither"])
def test_the_summary(eval_splits, results, report, expected):
    c, lines = console(digits_plan(eval_splits=eval_splits))
    c.summary(results, report)
    assert lines == expected


def test_a_real_trainers_plan_announces_what_a_real_run_prints(tmp_path):
    """The trainer's RunPlan of the tiny digits run, announced: the lines ``vitkit train`` prints for it."""
    import torch

    from vitkit.train.trainer import Trainer

    threads = torch.get_num_threads()
    cfg = load_run_config(None, ["device=cpu", "data.batch_size=128", "model.patch_size=4", "model.embed_dim=16",
                                 "model.depth=1", "model.num_heads=2", "model.mlp_ratio=2.0", "train.epochs=2",
                                 "optim.warmup_epochs=0.5", "train.threads=1", "report=false"])
    try:
        trainer = Trainer(cfg, tmp_path / "tiny", log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    c, lines = console(trainer.plan)
    c.announce(trainer.state)
    assert lines == DIGITS_ANNOUNCEMENT[:-1] + [f"run folder: {tmp_path / 'tiny'}"]
    assert trainer.plan == digits_plan(cfg=trainer.cfg, model=trainer.model_config, lr=trainer.plan.lr,
                                       stats=trainer.plan.stats, run_dir=tmp_path / "tiny",
                                       best_weights=tmp_path / "tiny" / "checkpoints" / "best")


class CountedSums(RunningMetrics):
    """Running sums that record at which steps they are summed over the processes (a collective)."""

    def __init__(self, calls: list, state: list):
        super().__init__("cpu", [2.0 * 64, 40.0, 64.0, -1.0])
        self.calls, self.state = calls, state

    def result(self) -> dict:
        self.calls.append(self.state[0].step)
        return super().result()


def test_every_process_sums_the_running_metrics_at_the_same_steps(monkeypatch):
    """The sum over the processes is a collective: rank 0 with a progress bar on a terminal and a silent rank 1
    on its own clock must call it at the same steps, or the ranks' collectives pair up wrongly (a hang, or
    DDP's gradients summed with a metric)."""
    import sys
    steps = {}
    for rank, tty, clock in ((0, True, Clock(0.0)), (1, False, Clock(7.0))):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        c, _ = console(folder_plan(), speaks=rank == 0, clock=clock)
        calls, current = [], [None]
        c.announce(TrainState(step=0))
        c.begin_epoch(TrainState(step=0))
        for step in range(1, 45):
            current[0] = TrainState(epoch=0, batch=step, step=step, running=CountedSums(calls, current))
            clock.now += 3.1 if rank else 1.0  # rank 1's clock makes a progress line due at other steps
            c.progress(current[0])
        c.end_epoch()
        steps[rank] = calls
    assert steps[0] == steps[1] == [1, 10, 20, 30, 40]
