"""``vitkit predict``: the top-k classes of image files and folders, as a table, JSON or CSV; or their
embeddings, written to a safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .args import load_predictor, positive


def collect_images(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to predict: each path, or every image under a folder (recursively); and (path, reason) for the
    paths that are neither."""
    from ..data import list_images

    files, problems = [], []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = list_images(path)
            if not found:
                problems.append((text, "the folder holds no jpg/png/webp/bmp/tif images"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            problems.append((text, "no such file or folder"))
    return files, problems


def main(argv: list[str] | None = None) -> int:
    import csv
    import json
    import sys

    from ..errors import ConfigError

    parser = argparse.ArgumentParser(
        prog="vitkit predict", description="Print the top-k classes of images (files, or folders searched "
        "recursively), preprocessed exactly as the checkpoint's run validated them.")
    parser.add_argument("images", nargs="+", metavar="PATH", help="image files, folders of images, .tar shards "
                        "(each sample, named SHARD.tar/KEY) or .parquet files (each row's image, named FILE.parquet[ROW])")
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best (or a .safetensors file or run)")
    parser.add_argument("--top-k", type=int, help="how many classes to show per image (default: 5, or the "
                        "checkpoint's classes when it has fewer)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON document on stdout")
    output.add_argument("--csv", action="store_true", help="CSV on stdout: image, then class and probability per rank")
    parser.add_argument("--features", metavar="OUT.safetensors",
                        help="write each image's embedding (tensor 'features' (N, D), the files in its metadata) "
                        "instead of printing classes")
    parser.add_argument("--embedding", choices=("pooled", "head", "cls", "mean", "cls_mean"), default="pooled",
                        help="with --features: the pooled representation the head reads (default), the head's "
                        "output (a CLIP tower's projected embedding), the final [CLS] token, the mean patch token, "
                        "or both side by side")
    parser.add_argument("--dense", action="store_true",
                        help="with --features: each image's patch features on their grid (tensor 'features' (N, D, "
                        "h, w)) and its prefix tokens ([CLS], registers: 'prefix' (N, P, D)) instead of one vector")
    parser.add_argument("--batch-size", type=positive, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    if args.dense and not args.features:
        raise ConfigError("--dense says what --features writes; give --features OUT.safetensors")
    if args.dense and args.embedding != "pooled":
        raise ConfigError(f"--dense writes the patch features themselves, so --embedding {args.embedding} says "
                          "nothing; leave one of them out")
    predictor = load_predictor(args.checkpoint, args.device)
    classes = predictor.classes
    if args.features:
        return write_features(predictor, args)
    if not classes:
        raise ConfigError(f"checkpoint {predictor.path} has no classification head (num_classes 0), so there are no "
                          "classes to rank; pass --features OUT.safetensors to write each image's embedding")
    if args.top_k is None:
        args.top_k = min(5, len(classes))  # as vitkit serve does
    if not 1 <= args.top_k <= len(classes):
        raise ConfigError(f"--top-k must lie between 1 and {len(classes)} (the checkpoint's classes), got {args.top_k}")
    problems, results = [], []
    for names, batch in batches(predictor, args.images, args.batch_size, problems):
        probs = predictor.probabilities(batch)  # (b, classes)
        results += list(zip(names, predictor.top_k(probs, args.top_k)))
    if args.json:
        print(json.dumps([{"image": name, "top_k": [{"class": c, "probability": round(p, 6)} for c, p in ranked]}
                          for name, ranked in results], indent=2))
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["image"] + [f"{k}{n}" for n in range(1, args.top_k + 1) for k in ("class", "p")])
        for name, ranked in results:
            writer.writerow([name] + [v for c, p in ranked for v in (c, f"{p:.6f}")])
    elif results:
        print(format_predictions(results))
    return report_problems(problems, len(results))


def batches(predictor, paths: list[str], batch_size: int, problems: list):
    """(file names, preprocessed batch (b, C, H, W)) for the images under ``paths``; an unreadable file is added
    to ``problems`` as (path, reason) and skipped."""
    from ..errors import VitkitError

    files, missing = collect_images(paths)
    problems += missing
    batch, names = [], []
    for name, load in images_of(files, problems):
        try:
            batch.append(predictor.preprocess(load()))  # (C, H, W)
            names.append(name)
        except VitkitError as e:
            problems.append((name, str(e)))
        if len(batch) == batch_size:
            yield names, torch.stack(batch)
            batch, names = [], []
    if batch:
        yield names, torch.stack(batch)


def images_of(files: list[Path], problems: list):
    """(name, a function giving the image) for each file; a .tar shard gives each of its samples, named
    SHARD.tar/KEY, and a .parquet file each row's image, named FILE.parquet[ROW] (a broken one is added to
    ``problems``)."""
    from ..data.images import open_image
    from ..data.shards import iter_samples
    from ..errors import VitkitError

    for path in files:
        if path.suffix.lower() not in (".tar", ".parquet"):
            yield str(path), lambda path=path: path
            continue
        try:
            if path.suffix.lower() == ".parquet":
                from ..data.hf import parquet_images
                for row, data in parquet_images(path):
                    yield f"{path}[{row}]", lambda data=data, row=row: open_image(data, f"{path}[{row}]")
                continue
            for key, data, _, _ in iter_samples(path, None):
                yield f"{path}/{key}", lambda data=data, key=key: open_image(data, f"{path}/{key}")
        except VitkitError as e:
            problems.append((str(path), str(e)))


def report_problems(problems: list, done: int) -> int:
    """Say which inputs were skipped and why. An unreadable or missing input is the person's to fix, so the
    exit code is 2 when any was skipped (as for every other bad input; the others are still predicted)."""
    import sys
    for path, reason in problems:
        print(f"vitkit predict: skipped {path}: {reason}", file=sys.stderr)
    if problems:
        print(f"vitkit predict: {len(problems)} of {done + len(problems)} inputs could not be predicted",
              file=sys.stderr)
        return 2
    return 0


def write_features(predictor, args) -> int:
    """``--features``: every image's embedding into one safetensors file (``features`` (N, D) float32, or with
    ``--dense`` (N, D, h, w) and the prefix tokens ``prefix`` (N, P, D); the files, in order, and the kind in
    its metadata)."""
    import json

    from safetensors.torch import save_file

    from ..fileio import atomic_path

    kind = "dense" if args.dense else args.embedding
    problems, names, rows, prefixes = [], [], [], []
    for batch_names, batch in batches(predictor, args.images, args.batch_size, problems):
        if args.dense:
            maps, prefix = predictor.dense(batch)  # (b, D, h, w), (b, P, D)
            rows.append(maps)
            prefixes.append(prefix)
        else:
            rows.append(predictor.features(batch, kind))  # (b, D)
        names += batch_names
    if rows:
        tensors = {"features": torch.cat(rows).contiguous()}  # (N, D) or (N, D, h, w)
        if args.dense:
            tensors["prefix"] = torch.cat(prefixes).contiguous()  # (N, P, D)
        with atomic_path(args.features) as tmp:
            save_file(tensors, str(tmp), metadata={"images": json.dumps(names), "embedding": kind,
                                                   "checkpoint": str(predictor.path)})
        shape = tuple(tensors["features"].shape)
        what = f"{shape[0]} patch-feature maps of {shape[1]} x {shape[2]} x {shape[3]}" if args.dense else \
            f"{shape[0]} embeddings of dimension {shape[1]}"
        print(f"wrote {args.features}: {what} ({kind})")
    return report_problems(problems, len(names))


def format_predictions(results: list[tuple[str, list[tuple[str, float]]]]) -> str:
    """A table: the image, then each ranked class with its probability."""
    k = len(results[0][1])
    width = max(len(name) for name, _ in results)
    cls = max(5, min(20, max(len(c) for _, ranked in results for c, _ in ranked)))
    head = f"{'image':<{width}}" + "".join(f"  {'top-' + str(r + 1):<{cls}} {'p':>5}" for r in range(k))
    lines = [head]
    for name, ranked in results:
        lines.append(f"{name:<{width}}" + "".join(f"  {c[:cls]:<{cls}} {p:5.3f}" for c, p in ranked))
    return "\n".join(lines)
