"""The run report: one self-contained HTML page (``RUN/report.html``) that a person opens in a browser.

It shows the results, the training curves, the confusion matrix, per-class accuracy, the most confident mistakes
(with their files), where the model looks (attention rollout and last-layer [CLS] attention on a few images),
their patch features in colour (PCA), the relative position bias when the model has one, the model and the
config. Images are PNGs embedded as base64 data URIs and the style is inline, so the file can be mailed or
archived alone; there is no script.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from pathlib import Path

import numpy as np

from . import visualize as viz
from .errors import DataError
from .evaluation import top_k_informative
from .fileio import atomic_write_text
from .runs import Run

NUM_ATTENTION_IMAGES = 4

CSS = """
:root { --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
header { background: #24292f; color: #fff; padding: 28px 0 22px; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 600; }
header p { margin: 0; color: #c9d1d9; }
.wrap { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
main { padding: 8px 0 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 20px 24px;
          margin: 20px 0; }
section h2 { margin: 0 0 4px; font-size: 19px; font-weight: 600; }
section > p.note { margin: 0 0 14px; color: var(--muted); font-size: 14px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; margin-top: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: #fbfcfd; }
.card .v { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .k { color: var(--muted); font-size: 13px; }
figure { margin: 0; text-align: center; }
figure img { max-width: 100%; height: auto; border-radius: 4px; }
.two { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 20px; align-items: start; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
th { color: var(--muted); font-weight: 500; width: 38%; }
td { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; word-break: break-word; }
h3 { font-size: 15px; margin: 16px 0 6px; }
details { margin: 16px 0 6px; }
summary { cursor: pointer; font-size: 15px; }
table.classes th, table.classes td { width: auto; font-family: inherit; font-size: 14px; }
table.classes tr:first-child th { color: var(--muted); font-weight: 500; }
footer { color: var(--muted); font-size: 13px; text-align: center; padding-bottom: 30px; }
"""


def figure_to_data_uri(fig, dpi: int = 100) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    w, h = (fig.get_size_inches() * 100).round().astype(int)
    return (f'<figure><img src="{figure_to_data_uri(fig)}" alt="{html.escape(alt)}" '
            f'width="{w}" height="{h}"></figure>')


def _flatten(d, prefix: str = "") -> list[tuple[str, object]]:
    """Nested mappings as (dotted key, value) rows."""
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows += _flatten(v, key + ".")
        else:
            rows.append((key, v))
    return rows


def _format(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        if len(v) > 12 or any(isinstance(x, (list, tuple, dict)) for x in v):
            return f"[{len(v)} items]"
        return "[" + ", ".join(_format(x) for x in v) + "]"
    return str(v)


def _table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_format(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


HEADLINE = ("test_accuracy", "val_accuracy", "test_top5", "best_epoch", "train_accuracy", "epochs", "wall_time",
            "images_per_s", "parameters")  # results.json keys shown as cards, in this order when present


def _card_value(key: str, v) -> str:
    if ("acc" in key or "top5" in key) and 0 <= v <= 1:
        return f"{100 * v:.2f}%"
    if key == "wall_time":
        return f"{v / 60:.1f} min" if v >= 120 else f"{v:.1f} s"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return f"{v:,}"


def _cards(results: dict, num_classes: int) -> str:
    """The headline numbers of results.json as cards: the trainer's known keys first, else any top-level
    number (at most 8). Top-5 accuracy is left out for 5 classes or fewer, where it is always 1."""
    numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not ("top5" in k and not top_k_informative(num_classes))}
    keys = [k for k in HEADLINE if k in numbers] or list(numbers)
    cards = [f'<div class="card"><div class="v">{html.escape(_card_value(k, numbers[k]))}</div>'
             f'<div class="k">{html.escape(k.replace("_", " "))}</div></div>' for k in keys[:8]]
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _section(title: str, note: str, body: str) -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f"<section><h2>{html.escape(title)}</h2>{note_html}{body}</section>"


def _attention_examples(labels: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` positions with distinct labels (the first of each class), so the overlays show variety."""
    picked, seen = [], set()
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen.add(y)
            picked.append(i)
        if len(picked) == k:
            break
    return picked


def _model_rows(model) -> list[tuple[str, object]]:
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    img = cfg.img_size if isinstance(cfg.img_size, int) else "x".join(map(str, cfg.img_size))
    return [("parameters", f"{params:,}"), ("image size", img), ("patch size", cfg.patch_size),
            ("tokens", f"{cfg.num_patches} patches + {cfg.num_prefix_tokens} prefix"),
            ("width / depth / heads", f"{cfg.embed_dim} / {cfg.depth} / {cfg.num_heads}"),
            ("position", "relative bias" if cfg.use_relative_position else cfg.pos_embed),
            ("pooling", cfg.pool)]


def _class_table(confusion: np.ndarray, classes: list[str], limit: int = 30) -> str:
    """Per-class accuracy, worst first when there are more classes than ``limit``, with each class's most
    frequent wrong prediction."""
    totals = confusion.sum(axis=1)
    correct = np.diag(confusion)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = list(range(len(classes)))
    if len(classes) > limit:
        order = sorted(order, key=lambda k: correct[k] / max(totals[k], 1))[:limit]
    rows = []
    for k in order:
        confused = f"{classes[int(off[k].argmax())]} ({int(off[k].max())})" if off[k].max() else "—"
        acc = f"{correct[k] / totals[k]:.1%}" if totals[k] else "no images"
        rows.append(f"<tr><th>{html.escape(classes[k])}</th><td>{acc}</td><td>{int(correct[k])} / {int(totals[k])}"
                    f"</td><td>{html.escape(confused)}</td></tr>")
    head = "<tr><th>class</th><th>accuracy</th><th>correct / images</th><th>most often taken for</th></tr>"
    return f'<table class="classes">{head}{"".join(rows)}</table>'


def write_report(run_dir, model, eval_set=None, predictions: dict | None = None, device="cpu",
                 num_attention: int = NUM_ATTENTION_IMAGES) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    ``model`` is the model the run reports (its ``best`` checkpoint). ``eval_set`` (a
    :class:`vitkit.data.splits.EvalSet`) and ``predictions`` (its rows as :func:`vitkit.train.evaluate`
    returns them, or as ``RUN/predictions/<split>.csv`` holds them) give the confusion matrix, per-class
    accuracy, the most confident mistakes with their file names, and the images for the attention overlays:
    the page is built from the evaluation the trainer already ran, without scoring anything again. Without
    them those sections are left out. The page reads ``config.yaml``, ``results.json`` and ``metrics.csv``.
    """
    run = Run(run_dir)
    if not run.path.is_dir():
        raise DataError(f"run folder {run.path} does not exist")
    model = model.to(device).eval()
    sections = []
    results, config = run.read_results(), run.read_config()
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else {}
    dataset_name = data_cfg.get("dataset") or results.get("dataset") or ""

    note = "From results.json: the best checkpoint, chosen on the validation split" + (
        ", and its test score." if results.get("test_accuracy") is not None else " (the data has no test split).")
    sections.append(_section("Results", note if results else "No results.json in this run.",
                             _cards(results, model.num_classes)))
    if run.metrics_path.is_file():
        try:
            fig = viz.plot_training_curves(run.metrics_path, title="")
            sections.append(_section("Training curves", "One point per epoch, from metrics.csv.",
                                     _img(fig, "training curves")))
        except DataError as e:
            sections.append(_section("Training curves", html.escape(str(e)), ""))

    if eval_set is not None and predictions is not None and len(predictions["label"]):
        sections += _evaluation_sections(model, eval_set, predictions, device, num_attention)
    else:
        sections.append(_section("Predictions", "The run scored no validation or test split, so the confusion "
                                 "matrix, mistakes and attention overlays are left out.", ""))

    rpb = model.blocks[-1].attn.relative_position_bias
    if rpb is not None:
        fig = viz.visualize_bias_table(rpb.cpu(), title="")
        sections.append(_section("Relative position bias (last layer)",
                                 "The learned bias per head for each offset (dy, dx) between query and key "
                                 "patch; the centre is a patch attending to itself.",
                                 _img(fig, "relative position bias table")))

    scalars = [(str(k), v) for k, v in config.items() if not isinstance(v, dict)]  # name, seed, device ...
    config_html = (_config_part("run", dict(scalars)) if scalars else "") + "".join(
        _config_part(str(name), part) for name, part in config.items() if isinstance(part, dict))
    sections.append(_section("Model and config", "The model as built, then config.yaml as the run resolved it.",
                             '<div class="two"><div><h3>model</h3>' + _table(_model_rows(model)) +
                             "</div><div>" + (config_html or "<p>No config.yaml in this run.</p>") + "</div></div>"))
    other = [(k, v) for k, v in _flatten(results)]
    if other:
        sections.append(_section("All results", "Every entry of results.json.", _table(other)))

    title = f"vitkit run report — {run.path.resolve().name}"
    subtitle = " · ".join(x for x in (dataset_name and f"data: {dataset_name}", _model_name(model),
                                      time.strftime("%Y-%m-%d %H:%M")) if x)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f'<header><div class="wrap"><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></div></header>'
            f'<main><div class="wrap">{"".join(sections)}</div></main>'
            f'<footer>Written by vitkit from {html.escape(str(run.path))}.</footer></body></html>\n')
    return atomic_write_text(run.report_path, page)


def _evaluation_sections(model, eval_set, predictions: dict, device, num_attention: int) -> list[str]:
    """Confusion matrix, per-class accuracy, mistakes and attention overlays of one scored split."""
    classes = eval_set.classes
    labels, preds = predictions["label"].numpy(), predictions["pred"].numpy()
    cm = viz.confusion_matrix(labels, preds, len(classes))
    split = {"val": "validation", "test": "test", "train": "training"}.get(eval_set.split, eval_set.split)
    mean, std = eval_set.preprocess.mean, eval_set.preprocess.std

    cm_fig = viz.plot_confusion_matrix(cm, classes, title="Confusion matrix")
    mistakes = _img(viz.mistakes_figure(eval_set, predictions), "most confident mistakes") \
        if (labels != preds).any() else "<p>No mistakes on this split.</p>"
    sections = [_section(
        "Confusion matrix and mistakes",
        f"The best checkpoint on all {len(labels):,} images of the {split} split (scored once by the trainer). "
        "Rows are true classes, colour is the fraction of each row; on the right, the misclassified images "
        "the model was most sure about, with their files.",
        f'<div class="two">{_img(cm_fig, "confusion matrix")}{mistakes}</div>'),
        _section("Accuracy per class", f"On the {split} split.", _class_table(cm, classes))]

    pick = _attention_examples(labels, num_attention)
    x = eval_set.preprocess.normalize(eval_set.view(pick)).to(device)  # (k, C, H, W)
    att_fig = viz.visualize_attention_grid(model, x, mean=np.asarray(mean), std=np.asarray(std),
                                           labels=labels[pick], class_names=classes, title="")
    query = "the [CLS] token" if getattr(model, "cls_token", None) is not None else \
        "the patch tokens (this model has no [CLS] token: the average over all patch queries)"
    sections.append(_section(
        "Where the model looks",
        "Attention rollout (Abnar &amp; Zuidema 2020) multiplies the attention of all layers, with the "
        f"skip connections, to follow what flows into {query}; the last column is the same query's attention "
        "in the last layer, averaged over heads. Brighter is more attention.",
        _img(att_fig, "attention overlays")))
    pca_fig = viz.visualize_feature_pca(model, x, mean=np.asarray(mean), std=np.asarray(std), title="",
                                        captions=[classes[k] for k in labels[pick]])
    sections.append(_section(
        "What the patch features see",
        "The final patch tokens of the same images, reduced to their first three principal components (fitted "
        "on all these images together) and shown as red, green and blue: patches the model represents alike "
        "share a colour, the view DINO papers show of dense features.",
        _img(pca_fig, "patch features as colour")))
    return sections


def _config_part(name: str, part: dict) -> str:
    """One config section as a table; a long one (a full model config) folded under a <details>."""
    rows = _flatten(part)
    if len(rows) > 12:
        return (f"<details><summary><b>{html.escape(name)}</b> ({len(rows)} keys)</summary>"
                f"{_table(rows)}</details>")
    return f"<h3>{html.escape(name)}</h3>{_table(rows)}"


def _model_name(model) -> str:
    cfg = model.config
    return f"ViT {cfg.embed_dim}d × {cfg.depth} layers × {cfg.num_heads} heads, patch {cfg.patch_size}"
