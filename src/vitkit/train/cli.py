"""``vitkit train``, ``vitkit eval`` and ``vitkit predict``.

Each ``*_main(argv) -> exit code``; a :class:`~vitkit.errors.VitkitError` raised here is printed as one
sentence by the ``vitkit`` dispatcher, which exits 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import CheckpointError, DataError


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


def train_main(argv: list[str] | None = None) -> int:
    from .config import load_run_config, packaged_config_dir
    from .trainer import train

    parser = argparse.ArgumentParser(
        prog="vitkit train", description="Train a ViT from a YAML recipe. With no arguments: the digits recipe "
        "(a small ViT on scikit-learn's 8x8 digits, CPU, under a minute).",
        epilog=f"recipes: {', '.join(training_recipes())} (pass --config configs/NAME.yaml or just --config NAME)")
    parser.add_argument("--config", help="YAML recipe (a path, or the name of a packaged recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (YAML syntax), e.g. --set optim.lr=3e-4; repeatable")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="'auto': continue runs/NAME from its newest valid checkpoint (or start it); "
                        "PATH: a run folder or checkpoint to continue")
    args = parser.parse_args(argv)

    config = args.config
    if config is not None and not Path(config).exists() and (packaged_config_dir() / f"{config}.yaml").exists():
        config = packaged_config_dir() / f"{config}.yaml"
    if config is None and args.resume not in (None, "auto"):
        from .checkpoint import resolve_state_path
        saved = resolve_state_path(args.resume).resolve().parent.parent / "config.yaml"
        config = saved if saved.exists() else None
    cfg = load_run_config(config, args.overrides)
    return train(cfg, resume=args.resume)


def _load(checkpoint: str, device: str):
    from ..checkpoint import load_model
    from .distributed import pick_device

    dev = pick_device(device)
    model, meta = load_model(checkpoint, dev)
    classes = meta.get("classes") or [str(k) for k in range(model.config.num_classes)]
    if len(classes) != model.config.num_classes:
        raise CheckpointError(f"checkpoint {checkpoint} names {len(classes)} classes but its head has "
                              f"{model.config.num_classes} outputs")
    return model, meta, classes, dev


def eval_loader(dataset: str, root: str | None, split: str, model, meta: dict, batch_size: int, device, workers: int):
    """A test loader normalised with the checkpoint's own statistics (those it was trained with)."""
    from ..data import DeviceLoader, ImageDataset, load_dataset
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform

    mean = tuple(meta.get("mean") or IMAGENET_MEAN)
    std = tuple(meta.get("std") or IMAGENET_STD)
    if dataset.startswith("imagefolder:"):
        from ..data import ImageFolderDataset
        folder = Path(dataset.split(":", 1)[1]).expanduser()
        if (folder / split).is_dir():
            folder = folder / split
        size = model.config.img_size if isinstance(model.config.img_size, int) else model.config.img_size[0]
        ds = ImageFolderDataset(folder, eval_transform(size, mean, std))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
        return loader, ds.classes, len(ds)
    ds = load_dataset(dataset, root, split)
    ds = ImageDataset(ds.images, ds.labels, ds.classes, mean, std, name=ds.name)
    size = model.config.img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if (ds.in_channels, *ds.image_size) != (model.config.in_channels, *size):
        raise DataError(f"data set {dataset!r} has {ds.in_channels}x{ds.image_size[0]}x{ds.image_size[1]} images "
                        f"but the checkpoint expects {model.config.in_channels}x{size[0]}x{size[1]}")
    return DeviceLoader(ds, batch_size, shuffle=False, device=device), ds.classes, len(ds)


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

    parser = argparse.ArgumentParser(prog="vitkit eval", description="Evaluate a checkpoint: loss, top-1, top-5 "
                                     "accuracy and the confusion matrix.")
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best (or a .safetensors file or run)")
    parser.add_argument("--dataset", help="data set name or imagefolder:PATH (default: the one it was trained on)")
    parser.add_argument("--root", help="the data set's folder (default: $VITKIT_DATA or ~/.cache/vitkit)")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=4, help="loader processes for image folders")
    args = parser.parse_args(argv)

    model, meta, classes, device = _load(args.checkpoint, args.device)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise CheckpointError(f"checkpoint {args.checkpoint} does not record its data set; pass --dataset")
    loader, data_classes, n = eval_loader(dataset, args.root, args.split, model, meta, args.batch_size, device,
                                          args.workers)
    if len(data_classes) != len(classes):
        raise DataError(f"data set {dataset!r} has {len(data_classes)} classes but the checkpoint predicts "
                        f"{len(classes)}")
    result = evaluate(model, loader, nn.CrossEntropyLoss(), device, num_classes=len(classes))
    print(f"checkpoint: {args.checkpoint}\ndata:       {dataset} ({args.split}, {n} images)")
    print(f"loss {result['loss']:.4f}   top-1 {result['accuracy']:.4f}   top-5 {result['top5']:.4f}")
    confusion = result["confusion"]
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


def predict_main(argv: list[str] | None = None) -> int:
    from ..data import preprocess_image

    parser = argparse.ArgumentParser(prog="vitkit predict", description="Print the top-k classes of images.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (jpg, png, ...)")
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best (or a .safetensors file or run)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    model, meta, classes, device = _load(args.checkpoint, args.device)
    cfg = model.config
    channels = cfg.in_channels
    mean = tuple(meta.get("mean") or (0.5,) * channels)
    std = tuple(meta.get("std") or (0.5,) * channels)
    k = max(1, min(args.top_k, len(classes)))
    for path in args.images:
        x = preprocess_image(path, cfg.img_size, mean, std).to(device)  # (1, C, H, W)
        with torch.no_grad():
            probs = model(x).float().softmax(dim=1)[0]
        top = probs.topk(k)
        ranked = ", ".join(f"{classes[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {ranked}")
    return 0
