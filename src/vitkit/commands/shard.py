"""``vitkit shard SRC --out DIR --shard-size N``: a data set vitkit reads, written as WebDataset tar shards with
an index (see :mod:`vitkit.data.shard_writer`), to train on with ``data.dataset: shards:DIR``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from ..data import open_splits
    from ..data.shard_writer import write_shards
    from .args import integer

    parser = argparse.ArgumentParser(
        prog="vitkit shard", description="Write a data set as tar shards OUT/{split}-{i:06d}.tar (members KEY.png|jpg "
        "and KEY.cls) and OUT/index.json, split train/val/test by vitkit's rule (recorded in the index). Folder "
        "images and a dataset's stored images are copied byte for byte; in-memory data sets are written as PNG.")
    parser.add_argument("source", help="a data set name (digits, fashion-mnist, ...), imagefolder:PATH or a folder, or "
                        "hf:PATH_OR_NAME (a Hugging Face dataset)")
    parser.add_argument("--out", required=True, help="the folder to write the shards to (empty, or --overwrite)")
    parser.add_argument("--shard-size", type=integer, default=10000, help="samples per shard (default 10000)")
    parser.add_argument("--root", help="the data set's folder (built-in data sets)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out validation fraction (default 0.1)")
    parser.add_argument("--split-seed", type=integer, default=0, help="seed of the hold-out (default 0)")
    parser.add_argument("--download", action="store_true", help="download a built-in data set if missing")
    parser.add_argument("--image-column", help="hf: the image column (default: found by type or name)")
    parser.add_argument("--label-column", help="hf: the label column (default: found by type or name)")
    parser.add_argument("--streaming", action="store_true", help="hf: read the dataset as a stream")
    parser.add_argument("--overwrite", action="store_true", help="replace the shards in a non-empty --out")
    args = parser.parse_args(argv)

    from pathlib import Path
    source = args.source
    if Path(source).expanduser().is_dir() and ":" not in source:
        source = f"imagefolder:{source}"
    splits = open_splits(source, args.root, val_fraction=args.val_fraction, split_seed=args.split_seed,
                         download=args.download, strict=True, image_column=args.image_column,
                         label_column=args.label_column, streaming=args.streaming)
    index = write_shards(splits, args.out, args.shard_size, source=source, overwrite=args.overwrite)
    print(f"wrote {sum(len(s['shards']) for s in index['splits'].values())} shard(s) and index.json to {args.out} "
          f"({splits.rule}); train with --set data.dataset=shards:{args.out}")
    return 0
