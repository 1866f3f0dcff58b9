"""Embeddings of a frozen backbone: which images (a data set's splits, or image files), how they are embedded,
and the safetensors file that holds them (``vitkit features`` writes it; the cache of :mod:`.cache` is the
same file format).

A feature file holds the tensors ``features`` (N, F) -- or (N, D, h, w) with ``dense`` --, ``labels`` (N,)
int64 (-1 for images without a class), ``split`` (N,) int8 (the index into ``split_names``) and, with
``layers``, ``layer.<i>`` per block ``i``; its metadata key ``vitkit_features`` is a JSON object with the
sources (file paths or ``"<split> image <i>"``), class names, the embedding kind, the layers, and the
checkpoint, model and preprocessing that produced it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, DataError

KINDS = ("pooled", "head", "cls", "mean", "cls_mean")  # --embedding; "dense" is --dense
TOKEN_KINDS = ("cls", "mean", "cls_mean")  # the kinds read from the normed tokens (also of earlier blocks)
SPLIT_NAMES = ("train", "val", "test", "files")


@dataclass
class FeatureSet:
    """Embeddings of N images, one row each, with what each row is."""

    features: torch.Tensor  # (N, F) float32, or (N, D, h, w) dense
    labels: torch.Tensor  # (N,) int64; -1: no class (plain image files)
    splits: list[str]  # (N,) the split of each row ("files" for plain image files)
    sources: list[str]  # (N,) file path, or "<split> image <i>"
    classes: list[str]
    meta: dict = field(default_factory=dict)  # kind, layers, checkpoint, preprocess, model, dataset, rule
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  # block index -> (N, F) or (N, D, h, w)

    def __len__(self) -> int:
        return len(self.sources)

    def part(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of the rows of one split."""
        rows = torch.tensor([s == split for s in self.splits], dtype=torch.bool)
        return self.features[rows], self.labels[rows]

    @staticmethod
    def concat(sets: list["FeatureSet"]) -> "FeatureSet":
        first = sets[0]
        return FeatureSet(torch.cat([s.features for s in sets]), torch.cat([s.labels for s in sets]),
                          [x for s in sets for x in s.splits], [x for s in sets for x in s.sources], first.classes,
                          dict(first.meta), {i: torch.cat([s.layers[i] for s in sets]) for i in first.layers})

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"features": self.features.contiguous(), "labels": self.labels.to(torch.int64).contiguous(),
               "split": torch.tensor([SPLIT_NAMES.index(s) for s in self.splits], dtype=torch.int8)}
        out.update({f"layer.{i}": t.contiguous() for i, t in self.layers.items()})
        return out

    def save(self, path) -> Path:
        """Write the set to ``path`` (safetensors) atomically."""
        from safetensors.torch import save_file

        from ..fileio import atomic_path

        meta = {**self.meta, "sources": self.sources, "classes": self.classes, "split_names": list(SPLIT_NAMES)}
        with atomic_path(path) as tmp:
            save_file(self.tensors(), str(tmp), metadata={"vitkit_features": json.dumps(meta)})
        return Path(path)

    @classmethod
    def load(cls, path) -> "FeatureSet":
        """A feature file; one that is truncated, foreign or inconsistent is one DataError."""
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["vitkit_features"])
            tensors = load_file(str(path))
            features, labels, split = tensors["features"], tensors["labels"], tensors["split"]
            names = meta["split_names"]
            sets = cls(features, labels, [names[i] for i in split.tolist()], list(meta["sources"]),
                       list(meta["classes"]), {k: v for k, v in meta.items()
                                                if k not in ("sources", "classes", "split_names")},
                       {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("layer.")})
        except Exception as e:  # safetensors' own errors, a missing key, a wrong type
            raise DataError(f"{path} is not a vitkit feature file or is damaged ({type(e).__name__}: {e})") from None
        n = len(sets.sources)
        if not (len(features) == len(labels) == len(sets.splits) == n) or any(len(t) != n for t in sets.layers.values()):
            raise DataError(f"{path} is damaged: its tensors and its list of images have different lengths")
        return sets


def default_kind(model) -> str:
    """The features features, knn and probe use unless told: the final [CLS] token, else the mean patch token."""
    return "cls" if model.cls_token is not None else "mean"


def check_kind(kind: str, model, layers=(), dense: bool = False) -> None:
    """Refuse, in one sentence, an embedding the model cannot give."""
    if kind not in KINDS:
        raise ConfigError(f"--embedding must be one of {', '.join(KINDS)}, got {kind!r}")
    if dense and kind not in ("pooled", "mean"):
        raise ConfigError(f"--dense stores the patch-token maps, so it takes no --embedding {kind}")
    if layers and not dense and kind not in TOKEN_KINDS:
        raise ConfigError(f"--layers stores {', '.join(TOKEN_KINDS)} or --dense features of each block; "
                          f"{kind!r} reads the head, which follows only the last block")
    if (kind in ("cls", "cls_mean")) and model.cls_token is None:
        raise ConfigError(f"--embedding {kind} reads the [CLS] token, which this model does not have; use mean "
                          "or pooled")
    depth = len(model.blocks)
    bad = [i for i in layers if not -depth <= i < depth]
    if bad:
        raise ConfigError(f"--layers {bad[0]} is not a block of this model (it has {depth}: 0..{depth - 1}, or "
                          f"-1..-{depth} from the end)")


@torch.no_grad()
def embed(predictor, batch: torch.Tensor, kind: str, layers=(), dense: bool = False) -> dict[str, torch.Tensor]:
    """One preprocessed batch (B, C, H, W) -> {"features": (B, F) or (B, D, h, w), "layer.<i>": ...}."""
    out = {"features": predictor.features(batch, "dense" if dense else kind)}
    if layers:
        model = predictor.model
        depth = len(model.blocks)
        indices = sorted({i % depth for i in layers})
        x = batch.to(predictor.device)
        blocks = model.forward_intermediates(x, indices, norm=True, output_fmt="NLC", return_prefix_tokens=True,
                                             intermediates_only=True, stop_early=True)
        gh, gw = model.patch_embed.grid_for(*x.shape[-2:])
        for i, item in zip(indices, blocks):
            patches, prefix = item if isinstance(item, tuple) else (item, None)  # (B, N, D), (B, prefix, D)
            if dense:
                t = patches.reshape(x.shape[0], gh, gw, -1).permute(0, 3, 1, 2)  # (B, D, h, w)
            elif kind == "cls":
                t = prefix[:, 0]
            elif kind == "mean":
                t = patches.mean(dim=1)
            else:
                t = torch.cat([prefix[:, 0], patches.mean(dim=1)], dim=-1)  # (B, 2D)
            out[f"layer.{i}"] = t.float().cpu()
    return out


def run_batches(predictor, batches, kind: str, layers=(), dense: bool = False, desc: str = "",
                total: int | None = None) -> dict[str, torch.Tensor]:
    """Embed every batch of ``batches`` (preprocessed (b, C, H, W), or (images, labels) pairs), with a tqdm bar
    on stderr when it is a terminal: {"features": (N, ...), "layer.<i>": ...}."""
    from tqdm import tqdm

    rows: dict[str, list[torch.Tensor]] = {}
    bar = tqdm(batches, desc=desc, total=total, unit="batch", file=sys.stderr, disable=not sys.stderr.isatty(),
               leave=False)
    for batch in bar:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        for name, t in embed(predictor, images, kind, layers, dense).items():
            rows.setdefault(name, []).append(t)
    return {name: torch.cat(ts) for name, ts in rows.items()}


def identity(predictor, kind: str, layers=(), dense: bool = False) -> dict:
    """What produced a set of features: the metadata every feature file carries."""
    return {"embedding": "dense" if dense else kind, "layers": sorted({i % len(predictor.model.blocks)
                                                                       for i in layers}),
            "checkpoint": str(predictor.path), "model": predictor.model.config.to_dict(),
            "preprocess": predictor.preprocess.to_dict(), "checkpoint_classes": predictor.classes}


def data_name(spec: str) -> str:
    """A data-set spec -> its canonical name: a known name, ``imagefolder:PATH``, or a folder (an image folder);
    ``shards:`` and ``hf:`` specs as they are."""
    from ..data.datasets import ALIASES, NAMES, canonical_name

    if spec.startswith(("shards:", "hf:")):
        return spec
    if spec.startswith("imagefolder:"):
        return f"imagefolder:{Path(spec.split(':', 1)[1]).expanduser().resolve()}"
    if spec.lower() not in NAMES and spec.lower() not in ALIASES and Path(spec).is_dir():
        return f"imagefolder:{Path(spec).resolve()}"
    return canonical_name(spec)


def open_data(predictor, spec: str | None, root: str | None = None):
    """(splits, rule) of a data-set spec: the checkpoint's own data (``spec`` None or the data set it records)
    split by its run's rule (``RUN/split.csv`` for a folder), any other by the default rule of
    :func:`vitkit.data.open_splits`; ``rule`` is {"root", "val_fraction", "split_seed"}, as a checkpoint records
    it. Classes may differ from the checkpoint's (a probe gives the backbone a new head)."""
    import inspect

    from ..data import open_splits

    recorded = predictor.meta.get("data") or {}
    own = recorded.get("dataset") or predictor.meta.get("dataset")
    if spec is None and not own:
        raise ConfigError(f"checkpoint {predictor.path} records no data set; pass --data NAME or an image folder")
    name = data_name(spec) if spec is not None else None
    if name is None or (own and name == data_name(own)):
        splits = predictor.splits(root=root, check_classes=False)
        return splits, {"root": root or recorded.get("root"), "val_fraction": recorded.get("val_fraction", 0.0),
                        "split_seed": recorded.get("split_seed", 0)}
    defaults = inspect.signature(open_splits).parameters
    rule = {"root": root, "val_fraction": defaults["val_fraction"].default,
            "split_seed": defaults["split_seed"].default}
    return open_splits(name, root, channels=predictor.preprocess.channels), rule
