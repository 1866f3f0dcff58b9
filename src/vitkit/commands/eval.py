"""``vitkit eval``: a checkpoint on a split of its data, by default the run's own validation split."""

from __future__ import annotations

import argparse

import torch

from .args import load_predictor, non_negative, positive


def format_confusion(matrix: torch.Tensor, classes: list[str]) -> str:
    """Rows: true class; columns: predicted class (numbered as in the row labels)."""
    width = max(4, len(str(int(matrix.max()))) + 1)
    names = [c[:14] for c in classes]
    pad = max(len(n) for n in names) + 5
    lines = [" " * pad + "".join(f"{j:>{width}}" for j in range(len(classes))) + "   <- predicted"]
    for i, row in enumerate(matrix.tolist()):
        lines.append(f"{i:>3}  {names[i]:<{pad - 5}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from torch import nn

    from ..evaluation import evaluate

    parser = argparse.ArgumentParser(
        prog="vitkit eval", description="Evaluate a checkpoint on a split of its data: loss, top-1, top-5 accuracy "
        "and the confusion matrix. With no other flag: the run's own validation split (the files in RUN/split.csv "
        "for an image folder), preprocessed as during training.")
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best (or a .safetensors file or run)")
    parser.add_argument("--split", choices=["train", "val", "test"],
                        help="which split to score (default: val, or test when the run has no validation split)")
    parser.add_argument("--dataset", help="another data set name or imagefolder:PATH, split by the run's rule")
    parser.add_argument("--root", help="the data set's folder (default: the run's, $VITKIT_DATA or ~/.cache/vitkit)")
    parser.add_argument("--batch-size", type=positive, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=non_negative, default=0, help="loader processes for image folders")
    parser.add_argument("--predictions", metavar="CSV", help="also write each image's prediction to this file")
    args = parser.parse_args(argv)

    predictor = load_predictor(args.checkpoint, args.device)
    eval_set, splits = predictor.eval_set(args.split, dataset=args.dataset, root=args.root,
                                          batch_size=args.batch_size, workers=args.workers)
    result = evaluate(predictor.model, eval_set.loader, nn.CrossEntropyLoss(), predictor.device,
                      num_classes=len(predictor.classes))
    epoch = predictor.meta.get("epoch")
    print(f"checkpoint: {predictor.path}" + (f" (epoch {epoch})" if epoch else ""))
    print(f"data:       {splits.dataset}, {eval_set.split} split: {result['n']} images ({splits.rule})")
    print(f"preprocess: {predictor.preprocess.describe()}")
    top5 = f"   top-5 {result['top5']:.4f}" if result["top5"] is not None else ""  # None: 5 classes or fewer
    print(f"loss {result['loss']:.4f}   top-1 {result['accuracy']:.4f}{top5}")
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
