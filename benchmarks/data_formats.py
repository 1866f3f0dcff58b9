"""The training loader's images per second for the same 10,000 images as an image folder, as Parquet (read
map-style and streamed through Hugging Face datasets) and as tar shards; and the memory of a stream of
100,000 images.

Part ``speed``: the first 10,000 CIFAR-10 training images (real photos) are written as PNG files of an image
folder (ROOT/<class>/), as the same PNG bytes in 10 Parquet files (datasets' ``Image`` and ``ClassLabel``
features), and as tar shards of 1,000 (``vitkit shard``). Each is opened as a run opens it (``build_data`` of
a ``data`` section: ``val_fraction`` 0, so all 10,000 are training images) and one epoch of the training
loader is drawn: decoding, the streamed augmentation (random-resized crop to 32 px, flip, RandAugment) and
normalisation, batch 256, ``data.workers`` loader processes; no training step. Median of ``--repeats`` epochs
after one warm-up epoch.

Part ``memory``: 100,000 synthetic 16x16 PNGs (random pixels, 82 MiB of Parquet in 20 files) streamed (``data.streaming: true``,
``data.workers: 0`` so everything happens in this process) for one epoch; the resident memory (VmRSS) at
each tenth of the epoch. A stream that held what it had read would grow with the epoch.

    python benchmarks/data_formats.py [--part speed|memory|all] [--data ../shared/data] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import lzma
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_sources(cifar: Path, root: Path, n: int = 10_000) -> dict[str, str]:
    """The same ``n`` CIFAR-10 PNGs as a folder, Parquet files and tar shards; {format: data.dataset}."""
    import datasets
    names = (cifar / "label_names.txt").read_text().split()
    records = np.frombuffer(lzma.open(cifar / "train_1.bin.xz").read(), np.uint8).reshape(-1, 3073)[:n]
    images, labels = [], []
    for i, rec in enumerate(records):
        out = io.BytesIO()
        Image.fromarray(rec[1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(out, format="PNG")
        images.append(out.getvalue())
        labels.append(int(rec[0]))
        folder = root / "folder" / names[rec[0]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(out.getvalue())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=sorted(names))})
    index = {c: i for i, c in enumerate(sorted(names))}  # the folder's class order (sorted folder names)
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images],
                                     "label": [index[names[y]] for y in labels]}, features=features)
    (root / "parquet" / "data").mkdir(parents=True)
    for k in range(10):
        ds.shard(10, k, contiguous=True).to_parquet(str(root / "parquet" / "data" / f"train-{k:05d}-of-00010.parquet"))
    subprocess.run([sys.executable, "-m", "vitkit", "shard", str(root / "folder"), "--out", str(root / "shards"),
                    "--shard-size", "1000", "--val-fraction", "0"], check=True, capture_output=True)
    return {"image folder (PNG files)": f"imagefolder:{root / 'folder'}", "Parquet, map-style": f"hf:{root / 'parquet'}",
            "Parquet, streamed": f"hf:{root / 'parquet'}", "tar shards": f"shards:{root / 'shards'}"}


def loader_of(dataset: str, streaming: bool, workers: int, batch: int = 256):
    from vitkit.train.config import DataConfig
    from vitkit.train.data import build_data
    from vitkit.train.distributed import Context
    cfg = DataConfig(dataset=dataset, streaming=streaming, val_fraction=0.0, img_size=32, batch_size=batch,
                     eval_batch_size=batch, workers=workers)
    return build_data(cfg, 0, Context(0, 1, 0, torch.device("cpu"))).train_loader


def epoch_rate(loader, epoch: int) -> float:
    loader.set_epoch(epoch)
    t0, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - t0)


def speed(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sources = write_sources(Path(args.data) / "cifar-10", Path(tmp))
        rows = []
        for name, dataset in sources.items():
            loader = loader_of(dataset, "streamed" in name, args.workers)
            epoch_rate(loader, 0)  # warm-up: the page cache, worker start-up paths
            rates = [epoch_rate(loader, e) for e in range(1, args.repeats + 1)]
            rows.append((name, len(loader) * loader.batch_size, statistics.median(rates), min(rates), max(rates)))
            print(f"  {name}: {statistics.median(rates):.0f} img/s", flush=True)
    base = rows[0][2]
    print(f"\nTraining-loader images/s, one epoch (decode + random-resized crop 32 px + flip + RandAugment + "
          f"normalise, batch 256, {args.workers} workers), median of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}\n")
    print("| source | images an epoch | images/s (median) | min - max | vs folder |")
    print("|---|---:|---:|---:|---:|")
    for name, n, med, lo, hi in rows:
        print(f"| {name} | {n:,} | {med:,.0f} | {lo:,.0f} - {hi:,.0f} | {med / base:.2f}x |")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(args) -> None:
    import datasets
    n = 100_000
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(k) for k in range(10)])})
        folder = Path(tmp) / "stream" / "data"
        folder.mkdir(parents=True)
        per_file = n // 20
        for k in range(20):  # 20 files of 5,000 rows
            rows = []
            for _ in range(per_file):
                out = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(out, format="PNG")
                rows.append(out.getvalue())
            datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in rows],
                                        "label": rng.integers(0, 10, per_file).tolist()}, features=features
                                       ).to_parquet(str(folder / f"train-{k:05d}-of-00020.parquet"))
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        loader = loader_of(f"hf:{folder.parent}", True, 0, batch=250)
        loader.set_epoch(0)
        marks, seen, t0 = [], 0, time.perf_counter()
        start = rss_mb()
        tenth = len(loader) // 10
        for b, (images, _) in enumerate(loader, start=1):
            seen += len(images)
            if b % tenth == 0:
                marks.append((seen, rss_mb()))
        seconds = time.perf_counter() - t0
    print(f"\n{n:,} synthetic 16x16 PNGs in 20 Parquet files ({size:.1f} MiB), streamed for one epoch "
          f"(batch 250, 0 workers) in {seconds:.0f} s; resident memory (VmRSS) of the process; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print("| images read | RSS (MiB) |")
    print("|---:|---:|")
    print(f"| 0 (loader built) | {start:.0f} |")
    for seen, mb in marks:
        print(f"| {seen:,} | {mb:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("speed", "memory", "all"), default="all")
    parser.add_argument("--data", default=os.environ.get("VITKIT_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part in ("speed", "all"):
        speed(args)
    if args.part in ("memory", "all"):
        memory(args)


if __name__ == "__main__":
    main()
