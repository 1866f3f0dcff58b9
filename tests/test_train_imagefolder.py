"""Training on an image folder (streamed through torchvision transforms) with mixup/cutmix, then eval on it."""

import json

import numpy as np
from PIL import Image

from vitkit.cli import main


def test_train_and_eval_on_an_image_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cat", "dog")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 100, (20, 20, 3)) + 150 * k  # dogs are brighter
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "images" / name / f"{i}.png")
    sets = ["data.dataset=imagefolder:" + str(tmp_path / "images"), "data.img_size=16", "data.workers=0",
            "data.batch_size=4", "data.val_fraction=0.25", "data.mixup_alpha=0.8", "data.cutmix_alpha=1.0",
            "data.randaugment=false", "model.patch_size=8", "model.embed_dim=16", "model.depth=1",
            "model.num_heads=2", "train.epochs=2", "train.checkpoint_every_steps=2", "report=false",
            "out_dir=" + str(tmp_path / "runs"), "name=folder", "device=cpu"]
    assert main(["train", *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "runs" / "folder"
    results = json.loads((run / "results.json").read_text())
    assert results["completed"] and results["num_train"] == 18 and results["num_test"] == 6
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "imagefolder:" in out and "(test, 24 images)" in out  # a plain class folder: all its images
