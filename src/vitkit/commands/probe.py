"""``vitkit probe``: a linear classifier on a checkpoint's frozen features, its regularisation chosen on the
validation split, written as an ordinary run folder (see :mod:`vitkit.frozen.probe`)."""

from __future__ import annotations

import argparse

from .features import add_common


def main(argv: list[str] | None = None) -> int:
    from ..typed_config import from_dict, parse_override
    from ..errors import ConfigError, DataError
    from ..frozen.cache import split_features
    from ..frozen.head import probe_config, probe_model
    from ..frozen.probe import ProbeSettings, fit_probe
    from ..frozen.probe_run import write_probe_run
    from ..frozen.store import check_kind, default_kind, open_data
    from .args import load_predictor

    parser = argparse.ArgumentParser(
        prog="vitkit probe", description="Fit a linear classifier (multinomial logistic regression) on frozen "
        "features: C chosen on the validation split, the test split scored once. Writes a run folder whose "
        "checkpoints/best is the backbone with the probe as its head, for vitkit eval, predict, serve and export.")
    parser.add_argument("--data", help="a data set name, image folder, shards:DIR or hf:PATH_OR_NAME (default: the "
                        "checkpoint's own data)")
    parser.add_argument("--out-dir", default="runs", help="where the run folder goes")
    parser.add_argument("--name", help="the run folder's name (default: probe-<embedding>)")
    parser.add_argument("--set", action="append", default=[], metavar="probe.KEY=VALUE",
                        help="probe.Cs=[0.01,0.1,1], probe.max_iter=1000, probe.standardize=false")
    parser.add_argument("--no-report", action="store_true", help="write no report.html")
    add_common(parser, "cls (mean for a model without [CLS])")
    args = parser.parse_args(argv)

    values = {}
    for text in args.set:
        path, value = parse_override(text)
        if len(path) != 2 or path[0] != "probe":
            raise ConfigError(f"--set takes probe.KEY=VALUE here, got {text!r}")
        values[path[1]] = value
    settings = from_dict(ProbeSettings, values, "probe")
    predictor = load_predictor(args.checkpoint, args.device)
    kind = args.embedding or default_kind(predictor.model)
    check_kind(kind, predictor.model)
    probe_config(predictor.model.config, kind, 2)  # what the checkpoint cannot hold is said before any work
    splits, rule = open_data(predictor, args.data, args.root)
    for split, why in (("train", "to fit the probe on"), ("val", "to choose its regularisation C on")):
        if split not in splits.parts:
            raise DataError(f"{splits.dataset} has no {split} split {why} ({splits.rule})")
    sets = {s: split_features(predictor, splits, s, kind, batch_size=args.batch_size, use_cache=not args.no_cache)
            for s in ("train", "val", "test") if s in splits.parts}
    probe = fit_probe(*sets["train"].part("train"), *sets["val"].part("val"), settings, len(splits.classes))
    from ..data.splits import eval_set
    check = next(iter(eval_set(splits, "val", predictor.preprocess, 8, device=predictor.device).loader))[0]
    model = probe_model(predictor.model, kind, probe.weight, probe.bias, check, sets["val"].features[:len(check)])
    run, results = write_probe_run(args.out_dir, args.name or f"probe-{kind}", model, probe, sets, splits, rule,
                                   predictor, settings, kind, report=not args.no_report)
    print(f"backbone:  {predictor.path} ({kind} features, {probe.weight.shape[1]} wide, frozen)")
    print(f"data:      {splits.dataset}: train {splits.size('train')}, val {splits.size('val')}, "
          f"test {splits.size('test')} ({splits.rule})")
    for row in probe.grid:
        mark = "   <- chosen" if row["C"] == probe.C else ""
        note = "" if row["converged"] else f" (not converged in {settings.max_iter} iterations)"
        print(f"C {row['C']:<8g} train {row['train_accuracy']:.4f}   val {row['val_accuracy']:.4f}{note}{mark}")
    test = f"   test accuracy {results['test_accuracy']:.4f}" if results["test_accuracy"] is not None else ""
    print(f"val accuracy {results['val_accuracy']:.4f}{test}")
    print(f"run folder: {run.path}  (config.yaml, results.json, checkpoints/best.safetensors)")
    print(f"next: vitkit eval --checkpoint {run.best_weights}")
    return 0
