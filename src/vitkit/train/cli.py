"""``vitkit train``, ``vitkit eval`` and ``vitkit predict``.

Each ``*_main(argv) -> exit code``; a :class:`~vitkit.errors.VitkitError` raised here is printed as one
sentence by the ``vitkit`` dispatcher, which exits 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def training_recipes() -> list[str]:
    """Names of the packaged recipes that are training configs (the folder also holds other tools' configs)."""
    import dataclasses

    import yaml

    from .config import RunConfig, packaged_config_dir
    keys = {f.name for f in dataclasses.fields(RunConfig)}
    names = []
    for path in sorted(packaged_config_dir().glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict) and set(data) <= keys:
            names.append(path.stem)
    return names


def recipe_path(config: str | None) -> Path | None:
    """``--config``: a YAML file, or the name of a packaged recipe (a folder of the same name, such as the
    data folder ``fashion-mnist/``, does not hide the recipe)."""
    from ..errors import ConfigError
    from .config import packaged_config_dir

    if config is None or Path(config).is_file():
        return None if config is None else Path(config)
    packaged = packaged_config_dir() / f"{config}.yaml"
    if packaged.is_file():
        return packaged
    raise ConfigError(f"config {config!r} is neither a file nor a recipe; recipes: {', '.join(training_recipes())}")


def train_main(argv: list[str] | None = None) -> int:
    import yaml

    from .config import load_run_config
    from .trainer import resume_folder, train

    parser = argparse.ArgumentParser(
        prog="vitkit train", description="Train a ViT from a YAML recipe. With no arguments: the digits recipe "
        "(a small ViT on scikit-learn's 8x8 digits, CPU, under a minute).",
        epilog=f"recipes: {', '.join(training_recipes())} (pass --config configs/NAME.yaml or just --config NAME); "
        "every key: vitkit config")
    parser.add_argument("--config", help="YAML recipe (a path, or the name of a packaged recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (YAML syntax), e.g. --set optim.lr=3e-4; repeatable")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="'auto': continue runs/NAME from its newest valid checkpoint (or start it); "
                        "PATH: a run folder or checkpoint to continue. A resume keeps the run's config; "
                        "--set may change train.epochs and a few other keys (see 'vitkit config')")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (recipe < YAML < --set, every default filled in) and exit")
    args = parser.parse_args(argv)

    cfg = load_run_config(recipe_path(args.config), args.overrides)
    if args.resume is not None:  # a resume starts from the run's own config.yaml
        saved = resume_folder(cfg, args.resume) / "config.yaml"
        if saved.is_file():
            cfg = load_run_config(saved, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    return train(cfg, resume=args.resume)


def _predictor(checkpoint: str, device: str):
    from ..predictor import Predictor
    from .distributed import pick_device
    return Predictor.load(checkpoint, pick_device(device, no_gpu="use --device cpu (or auto)"))


def format_confusion(matrix: torch.Tensor, classes: list[str]) -> str:
    """Rows: true class; columns: predicted class (numbered as in the row labels)."""
    width = max(4, len(str(int(matrix.max()))) + 1)
    names = [c[:14] for c in classes]
    pad = max(len(n) for n in names) + 5
    lines = [" " * pad + "".join(f"{j:>{width}}" for j in range(len(classes))) + "   <- predicted"]
    for i, row in enumerate(matrix.tolist()):
        lines.append(f"{i:>3}  {names[i]:<{pad - 5}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def eval_main(argv: list[str] | None = None) -> int:
    from torch import nn

    from .loop import evaluate

    parser = argparse.ArgumentParser(
        prog="vitkit eval", description="Evaluate a checkpoint on a split of its data: loss, top-1, top-5 accuracy "
        "and the confusion matrix. With no other flag: the run's own validation split (the files in RUN/split.csv "
        "for an image folder), preprocessed as during training.")
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best (or a .safetensors file or run)")
    parser.add_argument("--split", choices=["train", "val", "test"],
                        help="which split to score (default: val, or test when the run has no validation split)")
    parser.add_argument("--dataset", help="another data set name or imagefolder:PATH, split by the run's rule")
    parser.add_argument("--root", help="the data set's folder (default: the run's, $VITKIT_DATA or ~/.cache/vitkit)")
    parser.add_argument("--batch-size", type=_positive, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=_non_negative, default=0, help="loader processes for image folders")
    parser.add_argument("--predictions", metavar="CSV", help="also write each image's prediction to this file")
    args = parser.parse_args(argv)

    predictor = _predictor(args.checkpoint, args.device)
    eval_set, splits = predictor.eval_set(args.split, dataset=args.dataset, root=args.root,
                                          batch_size=args.batch_size, workers=args.workers)
    result = evaluate(predictor.model, eval_set.loader, nn.CrossEntropyLoss(), predictor.device,
                      num_classes=len(predictor.classes))
    epoch = predictor.meta.get("epoch")
    print(f"checkpoint: {predictor.path}" + (f" (epoch {epoch})" if epoch else ""))
    print(f"data:       {splits.dataset}, {eval_set.split} split: {result['n']} images ({splits.rule})")
    print(f"preprocess: {predictor.preprocess.describe()}")
    print(f"loss {result['loss']:.4f}   top-1 {result['accuracy']:.4f}   top-5 {result['top5']:.4f}")
    if args.predictions:
        from ..runs import write_predictions
        write_predictions(args.predictions, eval_set.sources, result["predictions"], predictor.classes)
        print(f"predictions: {args.predictions} (one row per image)")
    classes, confusion = predictor.classes, result["confusion"]
    if len(classes) <= 30:
        print("confusion matrix (rows: true class, columns: predicted class):")
        print(format_confusion(confusion, classes))
    else:
        off = confusion.clone()
        off.fill_diagonal_(0)
        values, flat = off.flatten().topk(10)
        print("most frequent confusions (true -> predicted: count):")
        for v, f in zip(values.tolist(), flat.tolist()):
            if v:
                print(f"  {classes[f // len(classes)]} -> {classes[f % len(classes)]}: {v}")
    return 0


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


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


def predict_main(argv: list[str] | None = None) -> int:
    import csv
    import json
    import sys

    from ..errors import ConfigError, VitkitError

    parser = argparse.ArgumentParser(
        prog="vitkit predict", description="Print the top-k classes of images (files, or folders searched "
        "recursively), preprocessed exactly as the checkpoint's run validated them.")
    parser.add_argument("images", nargs="+", metavar="PATH", help="image files or folders of images")
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best (or a .safetensors file or run)")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to show per image (default 5)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON document on stdout")
    output.add_argument("--csv", action="store_true", help="CSV on stdout: image, then class and probability per rank")
    parser.add_argument("--batch-size", type=_positive, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    predictor = _predictor(args.checkpoint, args.device)
    classes = predictor.classes
    if not 1 <= args.top_k <= len(classes):
        raise ConfigError(f"--top-k must lie between 1 and {len(classes)} (the checkpoint's classes), got {args.top_k}")
    files, problems = collect_images(args.images)
    results = []
    for start in range(0, len(files), args.batch_size):
        batch, names = [], []
        for path in files[start:start + args.batch_size]:
            try:
                batch.append(predictor.preprocess(path))  # (C, H, W)
                names.append(str(path))
            except VitkitError as e:
                problems.append((str(path), str(e)))
        if batch:
            probs = predictor.probabilities(torch.stack(batch))  # (b, classes)
            top = probs.topk(args.top_k, dim=1)
            results += [(name, [(classes[i], p) for p, i in zip(ps, idx)])
                        for name, ps, idx in zip(names, top.values.tolist(), top.indices.tolist())]
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
    for path, reason in problems:
        print(f"vitkit predict: skipped {path}: {reason}", file=sys.stderr)
    if problems:
        print(f"vitkit predict: {len(problems)} of {len(results) + len(problems)} inputs could not be predicted",
              file=sys.stderr)
        return 1
    return 0


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
