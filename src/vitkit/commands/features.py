"""``vitkit features``: every image's embedding by a checkpoint, into one safetensors file (with the images,
labels, classes, split of each row, and the checkpoint and preprocessing that produced it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import load_predictor, positive

SPLIT_CHOICES = ("train", "val", "test", "all")


def add_common(parser: argparse.ArgumentParser, embedding_default: str) -> None:
    """The options features, knn and probe share."""
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best, a .safetensors file, a run "
                        "folder or a Hub name")
    parser.add_argument("--embedding", help=f"default: {embedding_default}. pooled (what the classifier reads), "
                        "cls, mean (of the normed patch tokens), cls_mean ([CLS] and mean side by side) or head")
    parser.add_argument("--root", help="the data set's folder (default: the run's, $VITKIT_DATA or ~/.cache/vitkit)")
    parser.add_argument("--batch-size", type=positive, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache "
                        "($VITKIT_CACHE/features, else ~/.cache/vitkit/features)")


def layer_index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a block index (negative from the end), got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    from ..errors import ConfigError
    from ..frozen.cache import split_features
    from ..frozen.store import FeatureSet, check_kind, default_kind, open_data

    parser = argparse.ArgumentParser(
        prog="vitkit features", description="Write every image's embedding to a safetensors file: a data set's "
        "splits (a name such as digits or cifar10, or an image folder, split by the checkpoint's recorded rule when "
        "it is the run's own data), or image files and folders with --files.")
    parser.add_argument("data", nargs="+", metavar="DATA", help="a data set name, image folder, shards:DIR or "
                        "hf:PATH_OR_NAME; with --files, "
                        "image files and folders (searched recursively)")
    parser.add_argument("--out", required=True, metavar="F.safetensors")
    parser.add_argument("--files", action="store_true", help="DATA are image files and folders, not a data set")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="all", help="which split of the data set")
    parser.add_argument("--dense", action="store_true", help="store the (N, D, h, w) map of normed patch tokens")
    parser.add_argument("--layers", nargs="+", type=layer_index, default=[], metavar="I",
                        help="also store these blocks' outputs through the final norm (layer.<i>)")
    add_common(parser, "cls (mean for a model without [CLS])")
    args = parser.parse_args(argv)

    predictor = load_predictor(args.checkpoint, args.device)
    args.embedding = args.embedding or ("pooled" if args.dense else default_kind(predictor.model))
    check_kind(args.embedding, predictor.model, args.layers, args.dense)
    if args.files or len(args.data) > 1 or Path(args.data[0]).is_file():
        result, problems = file_features(predictor, args)
    else:
        splits, _ = open_data(predictor, args.data[0], args.root)
        names = [s for s in ("train", "val", "test") if s in splits.parts] if args.split == "all" else [args.split]
        for s in names:
            splits.get(s)  # a missing split is one sentence
        result = FeatureSet.concat([split_features(predictor, splits, s, args.embedding, args.layers, args.dense,
                                                   args.batch_size, not args.no_cache) for s in names])
        result.meta.pop("key", None)
        problems = []
    if not len(result):
        raise ConfigError("no image could be read, so no features were written")
    result.save(args.out)
    count = {s: result.splits.count(s) for s in dict.fromkeys(result.splits)}
    shape = "x".join(str(d) for d in result.features.shape[1:])
    layers = f", blocks {', '.join(str(i) for i in result.layers)}" if result.layers else ""
    print(f"wrote {args.out}: {len(result)} embeddings of shape {shape} ({result.meta['embedding']}{layers}; "
          + ", ".join(f"{s} {n}" for s, n in count.items()) + ")")
    from .predict import report_problems
    return report_problems(problems, len(result))


def file_features(predictor, args):
    """Features of image files and folders (not cached: no split, no labels)."""
    import torch

    from ..frozen.store import FeatureSet, identity, run_batches
    from .predict import batches

    problems, names = [], []

    def images():  # streamed: one preprocessed batch (b, C, H, W) in memory at a time
        for batch_names, batch in batches(predictor, args.data, args.batch_size, problems):
            names.extend(batch_names)
            yield batch

    rows = run_batches(predictor, images(), args.embedding, args.layers, args.dense, desc="features")
    if not names:
        return FeatureSet(torch.zeros(0), torch.zeros(0, dtype=torch.int64), [], [], []), problems
    return FeatureSet(rows["features"], torch.full((len(names),), -1, dtype=torch.int64), ["files"] * len(names),
                      names, list(predictor.classes), identity(predictor, args.embedding, args.layers, args.dense),
                      {int(k.split(".", 1)[1]): v for k, v in rows.items() if k.startswith("layer.")}), problems

