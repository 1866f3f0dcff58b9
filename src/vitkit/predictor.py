"""A trained model ready to be asked: its weights, class names and evaluation preprocessing, loaded from one
checkpoint. ``vitkit eval``, ``predict``, ``visualize`` and the service all start here, so they preprocess
images the same way the run validated them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import hub
from .checkpoint import resolve_weights_path
from .geometry import pair
from .data.preprocess import Preprocess
from .errors import CheckpointError, ConfigError, DataError
from .evaluation import evaluate
from .pretrained import load
from .runs import Run


EMBEDDINGS = ("pooled", "head", "cls", "mean", "cls_mean", "dense")  # what Predictor.features computes


@dataclass
class Predictor:
    model: nn.Module
    classes: list[str]
    preprocess: Preprocess
    meta: dict
    path: Path
    device: torch.device

    @classmethod
    def load(cls, checkpoint, device: str | torch.device = "cpu") -> "Predictor":
        """The model of a vitkit weights file (``RUN/checkpoints/best``, a ``.safetensors`` file or a run
        folder), or of any weights :meth:`VisionTransformer.from_pretrained` reads (Hub names too), in eval mode on
        ``device``; a file whose classes or preprocessing do not fit its model is one CheckpointError."""
        device = torch.device(device)
        if hub.is_hub_source(str(checkpoint)):  # hf-hub:org/name or a timm name: weights from the Hub
            path = hub.resolve(str(checkpoint))  # the folder the download left in the cache
            model, found = load(path, **hub.named_architecture(str(checkpoint)))
        else:
            path = Path(checkpoint)
            try:
                path = resolve_weights_path(checkpoint)
            except CheckpointError:
                if not path.exists():
                    raise
            model, found = load(path)
        model, meta = model.to(device), found.metadata  # a vitkit file's own record: classes, preprocessing
        cfg = model.config
        classes = meta.get("classes") or model.pretrained_classes or [str(k) for k in range(cfg.num_classes)]
        if cfg.num_classes and len(classes) != cfg.num_classes:
            raise CheckpointError(f"checkpoint {path} names {len(classes)} classes but its head has "
                                  f"{cfg.num_classes} outputs")
        if not meta.get("preprocess") and model.pretrained_preprocess:  # weights of another library
            preprocess = Preprocess(pair(cfg.img_size), **model.pretrained_preprocess)
        else:
            preprocess = Preprocess.from_metadata(meta, cfg.img_size, cfg.in_channels)
        size = pair(cfg.img_size)
        if preprocess.img_size != size or preprocess.channels != cfg.in_channels:
            raise CheckpointError(f"checkpoint {path} preprocesses to {preprocess.channels}x"
                                  f"{preprocess.img_size[0]}x{preprocess.img_size[1]} but its model takes "
                                  f"{cfg.in_channels}x{size[0]}x{size[1]}")
        return cls(model, list(classes), preprocess, meta, path, device)

    def inputs(self, images) -> torch.Tensor:
        """Images (paths, PIL images, arrays) -> the model's input batch (B, C, H, W) on its device."""
        return torch.stack([self.preprocess(image) for image in images]).to(self.device)

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, classes) of a preprocessed batch, on the CPU."""
        return self.model(batch.to(self.device)).float().softmax(dim=1).cpu()

    def top_k(self, probs: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable classes of each row of ``probs`` (B, classes): [(class, probability)], most
        probable first (what ``vitkit predict`` prints and the service answers)."""
        top = probs.topk(k, dim=1)
        return [[(self.classes[i], p) for p, i in zip(ps, idx)] for ps, idx in zip(top.values.tolist(),
                                                                                  top.indices.tolist())]

    @torch.no_grad()
    def features(self, batch: torch.Tensor, kind: str = "pooled") -> torch.Tensor:
        """Embeddings of a preprocessed batch, float32 on the CPU, by ``kind`` (one of :data:`EMBEDDINGS`):

        - ``"pooled"`` (B, F): what the classifier reads (the pooled token, through the head's norm and hidden
          layer where the model has them);
        - ``"head"`` (B, classes): the head's output (for a CLIP tower loaded with its projection as the head,
          the image embedding);
        - ``"cls"``, ``"mean"`` (B, D): the final normed [CLS] token, the mean of the normed patch tokens;
          ``"cls_mean"`` (B, 2D) the two side by side, as DINOv2 and DINOv3 evaluate linear probes;
        - ``"dense"`` (B, D, h, w): the normed patch tokens on their grid (:meth:`dense`).
        """
        if kind not in EMBEDDINGS:
            raise ConfigError(f"kind of features must be one of {', '.join(EMBEDDINGS)}, got {kind!r}")
        model, x = self.model, batch.to(self.device)
        if kind in ("cls", "cls_mean") and model.cls_token is None:
            raise ConfigError(f"{kind!r} features read the [CLS] token, which the model of {self.path} does not "
                              "have; use 'mean' or 'pooled'")
        if kind == "head":
            return model(x).float().cpu()
        if kind == "dense":
            return self.dense(batch)[0]
        tokens = model.forward_features(x)  # (B, prefix + N, D)
        if kind == "pooled":
            return model.forward_head(tokens, pre_logits=True).float().cpu()
        patches = tokens[:, model.num_prefix_tokens:]  # (B, N, D)
        out = {"cls": lambda: tokens[:, 0], "mean": lambda: patches.mean(dim=1),
               "cls_mean": lambda: torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)}[kind]()
        return out.float().cpu()

    @torch.no_grad()
    def dense(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The final normed patch tokens of a preprocessed batch on their grid (B, D, h, w) and the prefix
        tokens ([CLS], registers) (B, P, D), float32 on the CPU: the one road to dense features (the report,
        the service and ``vitkit visualize`` take it through :func:`vitkit.visualize.features.dense_features`)."""
        (last,) = self.model.forward_intermediates(batch.to(self.device), indices=1, norm=True,
                                                   return_prefix_tokens=True, intermediates_only=True)
        maps, prefix = last if isinstance(last, tuple) else (last, last.new_zeros(len(last), 0, last.shape[1]))
        return maps.float().cpu(), prefix.float().cpu()  # (no prefix token: prefix is (B, 0, D))

    def splits(self, dataset: str | None = None, root: str | None = None, check_classes: bool = True):
        """The data this model was trained on, split by the rule its run used (``RUN/split.csv`` when the
        checkpoint sits in its run folder), or ``dataset`` split by the same rule. A folder that no longer
        holds the images it was split from is one DataError; so are classes other than the checkpoint's,
        unless ``check_classes`` is False (a frozen backbone given a new head)."""
        from .data import open_splits
        from .data.hf import HF_KEYS
        from .runs import Run

        recorded = self.meta.get("data") or {"dataset": self.meta.get("dataset"), "val_fraction": 0.0}
        name = dataset or recorded.get("dataset")
        if not name:
            raise CheckpointError(f"checkpoint {self.path} does not record its data set; pass --dataset")
        same = dataset is None or dataset == recorded.get("dataset")
        run = Run.of_checkpoint(self.path)
        split_file = run.split_path if run is not None and same and run.split_path.is_file() else None
        splits = open_splits(name, root or (recorded.get("root") if same else None),
                             val_fraction=recorded.get("val_fraction", 0.0), split_seed=recorded.get("split_seed", 0),
                             split_file=split_file, channels=self.preprocess.channels,
                             **{k: recorded[k] for k in HF_KEYS
                                if same and recorded.get(k)})
        if same and split_file is None and recorded.get("digest") and splits.digest() != recorded["digest"]:
            raise DataError(f"{name} no longer holds the images checkpoint {self.path} was trained and validated on "
                            "(its split differs), so its validation split cannot be rebuilt; use the checkpoint "
                            "inside its run folder, whose split.csv lists the files")
        if check_classes and splits.classes != self.classes:
            raise DataError(f"{name} has the classes {_few(splits.classes)} but the checkpoint predicts "
                            f"{_few(self.classes)}")
        return splits

    def eval_set(self, split: str | None = None, *, dataset: str | None = None, root: str | None = None,
                 batch_size: int = 256, workers: int = 0):
        """One split of :meth:`splits` ready to score with this model's preprocessing (default: the
        validation split, else the test split)."""
        from .data.splits import eval_set

        splits = self.splits(dataset, root)
        if split is None:
            split = next(s for s in ("val", "test", "train") if s in splits.parts)
        return eval_set(splits, split, self.preprocess, batch_size, device=self.device, workers=workers), splits


def _few(names: list[str], n: int = 4) -> str:
    return "[" + ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "") + "]"


def scored_split(run_dir, device="cpu"):
    """(predictor, eval set, predictions) of a run folder's best checkpoint on the split it scored last (test,
    else val), from its ``predictions/<split>.csv``; a run without one is scored once now (said on stderr)."""
    run = Run(run_dir)
    if not run.path.is_dir():
        raise DataError(f"run folder {run.path} does not exist")
    predictor = Predictor.load(run.path, device)
    split = next((s for s in ("test", "val") if run.predictions_path(s).is_file()), None)
    eval_set, _ = predictor.eval_set(split)
    predictions = run.read_predictions(eval_set.split, predictor.classes)
    if predictions is None:
        warnings.warn(f"{run.path} has no predictions file; scoring its {eval_set.split} split now", stacklevel=2)
        predictions = evaluate(predictor.model, eval_set.loader, torch.nn.CrossEntropyLoss(), predictor.device)[
            "predictions"]
    return predictor, eval_set, predictions
