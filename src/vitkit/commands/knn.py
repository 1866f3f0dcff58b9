"""``vitkit knn``: the DINO weighted k-NN classifier on a checkpoint's frozen features (fitted on the train
split, scored on val, and on test once; see :mod:`vitkit.frozen.knn`)."""

from __future__ import annotations

import argparse

from .features import add_common


def main(argv: list[str] | None = None) -> int:
    import json

    from ..errors import DataError
    from ..frozen.cache import split_features
    from ..frozen.knn import check_knn, evaluate_knn
    from ..frozen.store import check_kind, default_kind, open_data
    from .args import load_predictor, integer

    parser = argparse.ArgumentParser(
        prog="vitkit knn", description="k-nearest-neighbour accuracy of frozen features (DINO's protocol): "
        "L2-normalised features, cosine similarity, the k nearest training images vote for their class with "
        "weight exp(similarity / T). Fitted on the train split, scored on val and on test (once); a best k is "
        "chosen on val only.")
    parser.add_argument("--data", help="a data set name, image folder, shards:DIR or hf:PATH_OR_NAME (default: the "
                        "checkpoint's own data)")
    parser.add_argument("--k", nargs="+", type=integer, default=[10, 20, 100], help="numbers of neighbours")
    parser.add_argument("--temperature", type=float, default=0.07, help="T of the votes exp(similarity / T)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_common(parser, "cls (mean for a model without [CLS])")
    args = parser.parse_args(argv)

    predictor = load_predictor(args.checkpoint, args.device)
    kind = args.embedding or default_kind(predictor.model)
    check_kind(kind, predictor.model)
    ks = sorted(set(args.k))
    check_knn(ks, args.temperature, 10 ** 12)  # k < 1 and T <= 0 before any image is read
    splits, _ = open_data(predictor, args.data, args.root)
    if "train" not in splits.parts:
        raise DataError(f"{splits.dataset} has no train split for the neighbours")
    queries_splits = [s for s in ("val", "test") if s in splits.parts]
    if not queries_splits:
        raise DataError(f"{splits.dataset} has neither a val nor a test split to score")
    check_knn(ks, args.temperature, splits.size("train"))
    sets = {s: split_features(predictor, splits, s, kind, batch_size=args.batch_size, use_cache=not args.no_cache)
            for s in ["train"] + queries_splits}
    train_x, train_y = sets["train"].part("train")
    results = evaluate_knn(train_x, train_y, {s: sets[s].part(s) for s in queries_splits}, ks, args.temperature,
                           len(splits.classes))
    best = max(ks, key=lambda k: (results["val"][k]["top1"], -k)) if "val" in results else None
    out = {"checkpoint": str(predictor.path), "dataset": splits.dataset, "split": splits.rule, "embedding": kind,
           "temperature": args.temperature, "num_train": splits.size("train"),
           "results": {s: {str(k): r for k, r in by_k.items()} for s, by_k in results.items()},
           "best_k_on_val": best}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"checkpoint: {predictor.path}")
    print(f"data:       {splits.dataset}: {splits.size('train')} train images as neighbours ({splits.rule})")
    print(f"features:   {kind}, L2-normalised; votes exp(cos / {args.temperature:g})")
    for split, by_k in results.items():
        for k, r in by_k.items():
            top5 = f"   top-5 {r['top5']:.4f}" if r["top5"] is not None else ""
            mark = "   <- best on val" if k == best and split == "val" else ""
            print(f"{split:<5} k={k:<4} top-1 {r['top1']:.4f}{top5}   ({r['n']} images){mark}")
    if best is not None and "test" in results:
        print(f"test at the k chosen on val (k={best}): top-1 {results['test'][best]['top1']:.4f}")
    return 0
