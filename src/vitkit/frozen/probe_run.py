"""A linear probe's run folder, laid out as a trained run's (:mod:`vitkit.runs`): ``config.yaml``, ``split.csv``
(image folders), ``checkpoints/best.safetensors`` (the backbone with the probe as its head, with classes,
preprocessing and the data's split rule), ``predictions/val.csv`` and ``test.csv``, ``results.json`` and the
report. ``vitkit eval``, ``predict``, ``serve``, ``export`` and the report read it unchanged."""

from __future__ import annotations

import time
import warnings

import torch

from ..checkpoint import save_weights
from ..typed_config import save_config
from ..fileio import atomic_write_text
from ..model import count_parameters
from ..runs import claim_new_run
from .probe import logits


def predictions(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """The rows :func:`vitkit.evaluation.evaluate` keeps, from logits (N, classes): label, pred, confidence, loss."""
    probs = scores.softmax(dim=1)
    confidence, pred = probs.max(dim=1)
    loss = torch.nn.functional.cross_entropy(scores, labels, reduction="none")
    return {"label": labels, "pred": pred, "confidence": confidence, "loss": loss}


def write_probe_run(out_dir, name: str, model, probe, sets: dict, splits, rule: dict, predictor, settings,
                    kind: str, report: bool = True, log=print):
    """Claim ``out_dir/name`` (or name-2, ...), write the run folder and return (Run, results)."""
    from ..evaluation import TOP_K, top_k_informative

    t0 = time.time()
    run, lock = claim_new_run(out_dir, name)
    try:
        p, classes = predictor.preprocess, list(splits.classes)
        data = {"dataset": splits.dataset, "root": rule["root"], "val_fraction": rule["val_fraction"],
                "split_seed": rule["split_seed"], "digest": splits.digest()}
        probe_meta = {"embedding": kind, "backbone": str(predictor.path), "C": probe.C, "Cs": [r["C"] for r in probe.grid],
                      "solver": "scikit-learn LogisticRegression (lbfgs, multinomial)",
                      "standardize": settings.standardize, "max_iter": settings.max_iter}
        save_config({"name": run.path.name, "out_dir": str(out_dir), "device": str(predictor.device), "data": data,
                     "probe": probe_meta, "model": model.config.to_dict()}, run.config_path)
        if splits.is_folder:
            atomic_write_text(run.split_path, splits.split_file_text())
        save_weights(model, run.best_weights, {"classes": classes, "preprocess": p.to_dict(), "mean": list(p.mean),
                                               "std": list(p.std), "dataset": splits.dataset, "data": data,
                                               "epoch": None, "probe": probe_meta})
        scored = {}
        for split in ("val", "test"):
            if split in sets:
                features, labels = sets[split].part(split)
                z = logits(probe, features)  # (N, classes)
                rows = predictions(z, labels)
                top5 = None
                if top_k_informative(len(classes)):
                    top5 = float((z.topk(TOP_K, dim=1).indices == labels[:, None]).any(dim=1).double().mean())
                scored[split] = {"accuracy": float((rows["pred"] == labels).double().mean()),
                                 "loss": float(rows["loss"].double().mean()), "top5": top5, "rows": rows}
                run.write_predictions(split, sets[split].sources, rows, classes)
        six = lambda v: float(f"{v:.6g}") if v is not None else None  # noqa: E731
        get = lambda split, key: six(scored[split][key]) if split in scored else None  # noqa: E731
        results = {
            "model": run.relative(run.best_weights), "kind": "linear probe", "chosen_on": "val",
            "val_accuracy": get("val", "accuracy"), "val_loss": get("val", "loss"), "val_top5": get("val", "top5"),
            "test_accuracy": get("test", "accuracy"), "test_loss": get("test", "loss"),
            "test_top5": get("test", "top5"),
            "probe": {**probe_meta, "grid": probe.grid}, "completed": True,
            "dataset": splits.dataset, "split": splits.rule, "num_train": splits.size("train"),
            "num_val": splits.size("val"), "num_test": splits.size("test"),
            "parameters": count_parameters(model), "trained_parameters": probe.weight.numel() + probe.bias.numel(),
            "device": str(predictor.device), "wall_time": round(time.time() - t0, 3),
        }
        run.write_results(results)
        if report:
            write_report(run, model, splits, predictor, scored)
        return run, results
    finally:
        lock.release()


def write_report(run, model, splits, predictor, scored: dict) -> None:
    """The run report on the test split (else val), from the predictions already computed."""
    from .. import report as report_module
    from ..data.splits import eval_set

    split = "test" if "test" in scored else "val"
    try:
        es = eval_set(splits, split, predictor.preprocess, 64, device=predictor.device)
        report_module.write_report(run.path, model, es, scored[split]["rows"], device=predictor.device)
    except Exception as e:  # the run folder is complete without it, as a trained run's
        warnings.warn(f"the run report could not be written ({type(e).__name__}: {e}); the run folder is complete "
                      "without it", stacklevel=2)
