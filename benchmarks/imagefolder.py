"""The CPU image-folder recipe on a folder of 2,000 real photos: streamed vs decoded once.

Writes the first 2,000 CIFAR-10 training images as PNG files, ROOT/train/<class>/ (1,600) and ROOT/val/<class>/
(400), then trains `vitkit train --config imagefolder` on it twice in subprocesses, once streaming the files
through loader workers (data.cache=none: random-resized crops, flips and RandAugment per image) and once
decoding every file once into memory (data.cache=memory: the device loader's batched crops and flips), and
prints a table: validation accuracy of the best checkpoint, its epoch, epochs run, whole-command wall time and
training images per second.

    python benchmarks/imagefolder.py [--data ../shared/data] [--repeats 1] [--set train.epochs=20 ...]
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_folder(cifar: Path, root: Path, n: int = 2000, n_train: int = 1600) -> None:
    names = (cifar / "label_names.txt").read_text().split()
    records = np.frombuffer(lzma.open(cifar / "train_1.bin.xz").read(), np.uint8).reshape(-1, 3073)[:n]
    for i, rec in enumerate(records):
        folder = root / ("train" if i < n_train else "val") / names[rec[0]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rec[1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(folder / f"{i:05d}.png")


def train(root: Path, out: Path, cache: str, sets: list[str]) -> dict:
    name = f"bench-{cache}"
    cmd = [sys.executable, "-m", "vitkit", "train", "--config", "imagefolder", "--set",
           f"data.dataset=imagefolder:{root}", "--set", f"data.cache={cache}", "--set", f"out_dir={out}",
           "--set", f"name={name}", "--set", "report=false"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.time() - t0
    if proc.returncode:
        sys.exit(f"training with data.cache={cache} failed:\n{proc.stderr[-3000:]}")
    run = sorted(out.glob(f"{name}*"), key=lambda p: p.stat().st_mtime)[-1]
    results = json.loads((run / "results.json").read_text())
    return {"cache": cache, "seconds": seconds, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("VITKIT_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for both runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        write_folder(Path(args.data) / "cifar-10", root)
        rows = [train(root, Path(tmp) / "runs", cache, args.sets)
                for _ in range(args.repeats) for cache in ("none", "memory")]
    print(f"2,000 CIFAR-10 PNGs (1,600 train / 400 val), `vitkit train --config imagefolder`, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("| data.cache | val accuracy (best) | best epoch | epochs | wall time (s) | train images/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cache']} | {r['val_accuracy']:.4f} | {r['best_epoch']} | {r['epochs']} | {r['seconds']:.0f} | "
              f"{r['images_per_s']:.0f} |")


if __name__ == "__main__":
    main()
