"""Frozen-backbone evaluation on the CPU: what `vitkit features`, `vitkit knn` and `vitkit probe` cost and give.

Two parts, each printing a table (the commands run as a user runs them, in subprocesses, one after another):

1. ``folder``: 2,000 CIFAR-10 PNGs as an image folder (1,600 train / 400 val), a ViT-S/16 at 224 px
   (``vit_small_patch16_224``; random weights, since no pretrained weights can be downloaded here: the time
   does not depend on them). `vitkit features` (decode, resize to 224, backbone) then `vitkit probe` (on the
   cached features: the scikit-learn fit, the head check and the run folder), wall time of each, and the share
   of the whole spent in the backbone's forward passes (timed alone, in this process, on the same number of
   images at the same batch size).
2. ``datasets``: for Fashion-MNIST and CIFAR-10, a small ViT trained by `vitkit train` (the fashion-mnist
   recipe's architecture; a few epochs), then, frozen, `vitkit knn` and `vitkit probe` on its features, against
   a full fine-tune of the same checkpoint (`model.init`: every weight trains, its head included) for the wall
   time the frozen path took (features + probe), rounded to whole epochs of its measured epoch time. Accuracy on each data set's
   official test split, every choice (k, C, the best checkpoint) made on the validation split.

    python benchmarks/frozen.py [--part folder|datasets|all] [--data ../shared/data] [--pretrain-epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def vitkit(*args: str, env: dict | None = None) -> tuple[str, float]:
    """Run ``python -m vitkit ARGS``; (stdout, wall seconds). A failure stops the benchmark with its stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] vitkit {' '.join(args)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"vitkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, seconds


def machine() -> str:
    import torch
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def folder_part(data: Path, tmp: Path, batch_size: int) -> None:
    import torch

    from imagefolder import write_folder
    from vitkit import create_model
    from vitkit.checkpoint import save_weights
    from vitkit.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess

    root = tmp / "photos"
    write_folder(data / "cifar-10", root)
    classes = sorted(p.name for p in (root / "train").iterdir())
    torch.manual_seed(0)
    model = create_model("vit_small_patch16_224", num_classes=len(classes)).eval()
    prep = Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    ckpt = save_weights(model, tmp / "vit_s16", {"classes": classes, "preprocess": prep.to_dict()})
    cache = {"VITKIT_CACHE": str(tmp / "cache")}
    spec = f"imagefolder:{root}"
    _, t_features = vitkit("features", spec, "--checkpoint", str(ckpt), "--out", str(tmp / "f.safetensors"),
                           "--batch-size", str(batch_size), "--device", "cpu", env=cache)
    out, t_probe = vitkit("probe", "--checkpoint", str(ckpt), "--data", spec, "--out-dir", str(tmp / "runs"),
                          "--batch-size", str(batch_size), "--device", "cpu", "--no-report", env=cache)
    val = re.search(r"val accuracy (\d\.\d+)", out).group(1)
    # The backbone alone: forward passes over as many images, same batch size, same threads as the command.
    torch.set_num_threads(os.cpu_count() or 1)
    n, x = 2000, torch.randn(batch_size, 3, 224, 224)
    with torch.inference_mode():
        model(x[:2])
        t0 = time.perf_counter()
        for start in range(0, n, batch_size):
            model(x[:min(batch_size, n - start)])
        t_backbone = time.perf_counter() - t0
    total = t_features + t_probe
    print(f"\nPart 1: 2,000 CIFAR-10 PNGs, ViT-S/16 at 224 px (random weights), {machine()}")
    print("| step | command | wall time (s) |")
    print("|---|---|---|")
    print(f"| features (decode + resize + backbone, cold cache) | `vitkit features imagefolder:ROOT --checkpoint W "
          f"--out f.safetensors --batch-size {batch_size}` | {t_features:.1f} |")
    print(f"| probe (cached features: fit, head check, run folder) | `vitkit probe --checkpoint W --data "
          f"imagefolder:ROOT --no-report` | {t_probe:.1f} |")
    print(f"| both | | {total:.1f} |")
    print(f"| the backbone's forward passes alone ({n} images, batch {batch_size}) | in-process | {t_backbone:.1f} "
          f"({t_backbone / total:.0%} of both) |")
    print(f"(probe val accuracy {val} on 400 images: random weights, so only the time means anything)")


def dataset_part(name: str, data: Path, tmp: Path, pretrain_epochs: int, sets: list[str]) -> dict:
    env = {"VITKIT_DATA": str(data), "VITKIT_CACHE": str(tmp / "cache")}
    runs = tmp / "runs"
    base = ["--config", "fashion-mnist", "--set", f"data.dataset={name}", "--set", f"out_dir={runs}",
            "--set", "report=false"]
    if name == "cifar10":  # 32x32: patch 4 (an 8x8 grid), as the fashion-mnist recipe's 7 on 28x28 gives 4x4
        base += ["--set", "model.patch_size=4"]
    for s in sets:
        base += ["--set", s]
    _, t_pre = vitkit("train", *base, "--set", f"name={name}-pretrain", "--set", f"train.epochs={pretrain_epochs}",
                      env=env)
    run = runs / f"{name}-pretrain"
    pre = json.loads((run / "results.json").read_text())
    epoch_s = pre["wall_time"] / pre["epochs"]
    ckpt = str(run / "checkpoints" / "best")
    knn_out, t_knn_cold = vitkit("knn", "--checkpoint", ckpt, "--json", "--device", "cpu", env=env)
    knn = json.loads(knn_out)
    best_k = str(knn["best_k_on_val"])
    probe_out, t_probe = vitkit("probe", "--checkpoint", ckpt, "--out-dir", str(runs), "--name", f"{name}-probe",
                                "--no-report", "--device", "cpu", env=env)
    probe = json.loads((runs / f"{name}-probe" / "results.json").read_text())
    frozen_s = t_knn_cold + t_probe  # the features are extracted once (by knn) and read from the cache by probe
    ft_epochs = max(1, round(frozen_s / epoch_s))
    # The fine-tune: the pre-training run's own config with the model section replaced by its checkpoint (the
    # architecture and the head come from the weights), the same optimiser, the budget in whole epochs.
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(name=f"{name}-finetune", model={"init": ckpt})
    cfg["train"]["epochs"] = ft_epochs
    cfg["optim"]["warmup_epochs"] = 0
    (tmp / "finetune.yaml").write_text(yaml.safe_dump(cfg))
    _, t_ft = vitkit("train", "--config", str(tmp / "finetune.yaml"), env=env)
    ft = json.loads((runs / f"{name}-finetune" / "results.json").read_text())
    return {"name": name, "pre": pre, "t_pre": t_pre, "knn": knn, "best_k": best_k, "t_knn": t_knn_cold,
            "probe": probe, "t_probe": t_probe, "ft": ft, "t_ft": t_ft, "ft_epochs": ft_epochs, "epoch_s": epoch_s}


def print_datasets(rows: list[dict], pretrain_epochs: int) -> None:
    print(f"\nPart 2: frozen vs fine-tuned, the fashion-mnist recipe's ViT trained {pretrain_epochs} epochs, "
          f"{machine()}")
    print("| data set | backbone (vitkit train) test acc | kNN test top-1 (k on val) | probe test acc (C on val) | "
          "frozen wall time (s) | fine-tune epochs | fine-tune test acc | fine-tune wall time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        knn_test = r["knn"]["results"]["test"][r["best_k"]]["top1"]
        print(f"| {r['name']} | {r['pre']['test_accuracy']:.4f} | {knn_test:.4f} (k={r['best_k']}) | "
              f"{r['probe']['test_accuracy']:.4f} (C={r['probe']['probe']['C']:g}) | {r['t_knn'] + r['t_probe']:.0f} "
              f"(kNN {r['t_knn']:.0f} incl. features, probe {r['t_probe']:.0f}) | {r['ft_epochs']} "
              f"({r['epoch_s']:.0f} s each) | {r['ft']['test_accuracy']:.4f} | {r['t_ft']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("folder", "datasets", "all"), default="all")
    parser.add_argument("--data", default=os.environ.get("VITKIT_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "cifar10"])
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for the training runs")
    args = parser.parse_args()
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("folder", "all"):
            folder_part(data, Path(tmp) / "folder", args.batch_size)
        if args.part in ("datasets", "all"):
            rows = [dataset_part(name, data, Path(tmp) / name, args.pretrain_epochs, args.sets)
                    for name in args.datasets]
            print_datasets(rows, args.pretrain_epochs)


if __name__ == "__main__":
    main()
