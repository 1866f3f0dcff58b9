"""``vitkit visualize``: attention, rollout and patch views of one image, or a run's curves, confusion matrix
and mistakes (and its report again)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

import numpy as np

from ..attention_maps import rollout_maps
from ..errors import ConfigError, DataError
from ..predictor import scored_split
from ..visualize import (imshow, overlay, confusion_matrix, mistakes_figure, new_figure, plot_confusion_matrix,
                         plot_training_curves, save_figure, to_display, visualize_attention_on_image,
                         visualize_bias_table, visualize_feature_pca, visualize_patches,
                         visualize_relative_position_bias)


def visualize_image(checkpoint: str | Path, image: str | Path, out_dir: str | Path, layer: int = -1) -> list[Path]:
    """``vitkit visualize --checkpoint --image``: attention.png (per-head [CLS] attention of ``layer``),
    rollout.png (the input next to the rollout), patches.png, features.png (the patch features' first three
    principal components as colours), and for a model with a relative position
    bias, bias.png and bias_table.png (of ``layer``). The image is preprocessed as the checkpoint's run
    validated its images. Returns the paths written."""
    from ..predictor import Predictor

    predictor = Predictor.load(checkpoint)
    model, preprocess = predictor.model, predictor.preprocess
    depth = len(model.blocks)
    if not -depth <= layer < depth:
        raise ConfigError(f"--layer {layer} does not exist; the model has layers 0..{depth - 1}")
    x = preprocess(image)[None]  # (1, C, H, W)
    mean, std = np.asarray(preprocess.mean), np.asarray(preprocess.std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig = visualize_attention_on_image(model, x, mean=mean, std=std, layer=layer, class_names=predictor.classes)
    written.append(_save(fig, out / "attention.png"))
    img = to_display(x[0], mean, std)
    roll = rollout_maps(model, x)[0]  # (gh, gw)
    fig = new_figure(6.4, 3.4 * img.shape[0] / img.shape[1] + 0.5)
    a, b = fig.subplots(1, 2)
    imshow(a, img)
    a.set_title("input")
    overlay(b, img, roll.numpy(), "attention rollout, [CLS] over all layers")
    fig.suptitle("Attention rollout (Abnar & Zuidema 2020)")
    written.append(_save(fig, out / "rollout.png"))
    fig = visualize_patches(x[0], model.patch_embed.patch_size, mean=mean, std=std)
    written.append(_save(fig, out / "patches.png"))
    written.append(_save(visualize_feature_pca(model, x, mean=mean, std=std, title="Patch features, first three "
                                               "principal components as RGB"), out / "features.png"))
    rpb = model.blocks[layer].attn.relative_position_bias
    if rpb is not None:
        i = layer % len(model.blocks)
        written.append(_save(visualize_relative_position_bias(rpb, title=f"Relative position bias, layer {i}"),
                             out / "bias.png"))
        written.append(_save(visualize_bias_table(rpb, title=f"Bias table, layer {i}"), out / "bias_table.png"))
    return written


def visualize_run(run_dir: str | Path, out_dir: str | Path | None = None, device="cpu") -> list[Path]:
    """``vitkit visualize --run``: curves.png from metrics.csv, and confusion.png and mistakes.png of the best
    checkpoint on the split the run scored last (see :func:`run_predictions`). Returns the paths written."""
    from ..runs import Run

    run = Run(run_dir)
    if not run.path.is_dir():
        raise DataError(f"run folder {run.path} does not exist")
    out = Path(out_dir) if out_dir is not None else run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if run.metrics_path.is_file():
        written.append(_save(plot_training_curves(run.metrics_path), out / "curves.png"))
    predictor, eval_set, predictions = scored_split(run.path, device)
    cm = confusion_matrix(predictions["label"].numpy(), predictions["pred"].numpy(), len(predictor.classes))
    written.append(_save(plot_confusion_matrix(cm, predictor.classes), out / "confusion.png"))
    written.append(_save(mistakes_figure(eval_set, predictions, title="Most confident mistakes"), out / "mistakes.png"))
    return written


def _save(fig, path: Path) -> Path:
    save_figure(fig, path)
    return path


def main(argv: Iterable[str] | None = None) -> int:
    """``vitkit visualize``: attention, rollout and patch views of one image, or a run's plots."""
    parser = argparse.ArgumentParser(
        prog="vitkit visualize",
        description="Write attention, rollout, patch and patch-feature (PCA) views of one image (--checkpoint and "
                    "--image), or the "
                    "training curves, confusion matrix and mistakes of a run (--run).")
    parser.add_argument("--checkpoint", help="weights file, 'RUN/checkpoints/best' or a run folder")
    parser.add_argument("--image", help="image file to look at (with --checkpoint)")
    parser.add_argument("--run", help="run folder written by 'vitkit train'")
    parser.add_argument("--out", help="output folder (default: 'visualize' here for --image, RUN/plots for --run)")
    parser.add_argument("--layer", type=int, default=-1, help="layer of the per-head attention (default: last)")
    parser.add_argument("--report", action="store_true", help="with --run, also rewrite RUN/report.html")
    parser.add_argument("--device", default="cpu", help="device to evaluate on (default: cpu)")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.run and (args.checkpoint or args.image):
        parser.error("give either --run, or --checkpoint with --image, not both")
    if args.run:
        written = visualize_run(args.run, args.out, device=args.device)
        if args.report:
            from ..report import write_report

            predictor, eval_set, predictions = scored_split(args.run, args.device)
            written.append(write_report(args.run, predictor.model, eval_set, predictions, device=args.device))
    elif args.checkpoint and args.image:
        written = visualize_image(args.checkpoint, args.image, args.out or "visualize", args.layer)
    else:
        parser.error("give --run RUN_DIR, or --checkpoint CKPT with --image PATH")
    for path in written:
        print(path)
    return 0
