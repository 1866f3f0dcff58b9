"""A run's data, from its ``data`` section: the splits (:mod:`vitkit.data.splits`), the preprocessing the model
is evaluated with, the training loader, and the validation and test sets, on one process or as this rank's
shard.

In-memory data sets, and image folders decoded once (``data.cache``), train through the device-resident
:class:`~vitkit.data.DeviceLoader` with batched augmentation; other image folders stream through worker
processes (:class:`~vitkit.data.FolderLoader`) with per-sample augmentation, and tar shards
(``shards:``) likewise through :class:`~vitkit.data.shard_loader.ShardLoader`; a Hugging Face dataset
(``hf:``) trains map-style through the folder loader, or streamed through
:class:`~vitkit.data.hf_stream.HFStreamLoader`. All of them reproduce any epoch and batch position, so a
resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data import (BatchAugment, DeviceLoader, FolderLoader, FolderSamples, ImageFolderDataset, Preprocess,
                    decode_folder, open_splits, recommended_augment, train_transform)
from ..data.imagefolder import Chain
from ..data.hf_stream import HFStream, HFStreamLoader
from ..data.shard_loader import ShardLoader
from ..data.shards import ShardSamples, decode_shards
from ..geometry import pair
from ..data.preprocess import default_stats
from ..data.splits import EvalSet, Splits, eval_set, in_memory
from ..errors import ConfigError
from .config import DataConfig
from .distributed import Context


@dataclass
class RunData:
    splits: Splits
    preprocess: Preprocess  # how the model's evaluation input is made (stored with every checkpoint)
    train_loader: object
    val: EvalSet | None
    test: EvalSet | None

    @property
    def classes(self) -> list[str]:
        return self.splits.classes

    @property
    def in_channels(self) -> int:
        return self.preprocess.channels

    @property
    def img_size(self) -> int | tuple[int, int]:
        h, w = self.preprocess.img_size
        return h if h == w else (h, w)

    def size(self, split: str) -> int:
        return self.splits.size(split)


def per_rank_batch(batch_size: int, ctx: Context, key: str) -> int:
    if batch_size % ctx.world_size:
        raise ConfigError(f"{key} ({batch_size}) must be divisible by the number of processes ({ctx.world_size})")
    return batch_size // ctx.world_size


def run_preprocess(cfg: DataConfig, splits: Splits, model_img_size=None) -> Preprocess:
    """The evaluation preprocessing a run's data implies: an in-memory set's own size and statistics; for a
    folder, ``data.img_size`` (or the model's, else 224), ``data.crop_pct``, interpolation and statistics."""
    if not splits.is_folder:
        for key in ("img_size", "mean", "channels"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"data.{key} {getattr(cfg, key)!r} applies to image folders only; {splits.dataset} images are "
                                  f"{splits.channels}x{splits.image_size[0]}x{splits.image_size[1]} as they are")
        return Preprocess(splits.image_size, splits.mean, splits.std, crop_pct=1.0, interpolation=cfg.interpolation)
    size = cfg.img_size if cfg.img_size is not None else (model_img_size if model_img_size is not None else 224)
    if cfg.img_size is not None and model_img_size is not None and pair(cfg.img_size) != pair(model_img_size):
        raise ConfigError(f"data.img_size {cfg.img_size} and model.img_size {model_img_size} differ; the images "
                          "are made the model's size, so give one of them (or the same value)")
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else default_stats(splits.channels)
    if len(mean) != splits.channels:
        raise ConfigError(f"data.mean and data.std have {len(mean)} values but the images are made "
                          f"{splits.channels}-channel (data.channels)")
    return Preprocess(pair(size, "data.img_size"), tuple(mean), tuple(std), crop_pct=cfg.crop_pct,
                      interpolation=cfg.interpolation)


def batch_too_large(cfg: DataConfig, splits: Splits) -> ConfigError:
    return ConfigError(f"data.batch_size {cfg.batch_size} is larger than the {splits.size('train')} training "
                       "images, so an epoch would train no step; lower data.batch_size")


def open_run_splits(cfg: DataConfig, ctx: Context, split_file=None) -> Splits:
    """The run's splits (a folder is scanned, not decoded). ``split_file`` (a run's ``split.csv``) fixes an
    image folder's files."""
    return open_splits(cfg.dataset, cfg.root, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed,
                       split_file=split_file, channels=cfg.channels, download=cfg.download and ctx.is_main,
                       image_column=cfg.image_column, label_column=cfg.label_column, streaming=cfg.streaming)


def build_data(cfg: DataConfig, seed: int, ctx: Context, *, model_img_size=None, split_file=None,
               splits: Splits | None = None) -> RunData:
    """The run's splits (``splits``, else :func:`open_run_splits`), preprocessing and loaders;
    ``batch_size`` is global: each of the N processes gets ``batch_size / N``."""
    splits = splits if splits is not None else open_run_splits(cfg, ctx, split_file)
    preprocess = run_preprocess(cfg, splits, model_img_size)
    batch = per_rank_batch(cfg.batch_size, ctx, "data.batch_size")
    eval_batch = per_rank_batch(cfg.eval_batch_size, ctx, "data.eval_batch_size")
    shard = dict(rank=ctx.rank, world_size=ctx.world_size)
    parts = dict(splits.parts)
    if cfg.cache == "disk" and (isinstance(parts["train"], ShardSamples) or splits.dataset.startswith("hf:")):
        raise ConfigError("data.cache: disk is for image folders; shards and hf: datasets decode into memory "
                          "(data.cache: memory) or stream (data.cache: none)")
    if splits.is_folder and cfg.cache != "none":  # decode once, then everything is in memory
        cache_dir = None if cfg.cache == "memory" else (cfg.cache_dir or Path.home() / ".cache" / "vitkit" / "decoded")
        parts = {name: decode_shards(part, splits.classes, preprocess, splits.dataset) if isinstance(part, ShardSamples)
                 else part.decode(splits.classes, preprocess, splits.dataset) if isinstance(part, HFStream)
                 else decode_folder(part, splits.classes, preprocess, cache_dir=cache_dir, workers=cfg.workers,
                                    name=splits.dataset) for name, part in parts.items()}
    num_classes = len(splits.classes)
    train = parts["train"]
    if isinstance(train, (FolderSamples, ShardSamples, HFStream)):
        mix = BatchAugment(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, num_classes=num_classes)
        augment = train_transform(preprocess.img_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio,
                                  interpolation=cfg.interpolation, hflip=cfg.hflip if cfg.hflip is not None else True,
                                  randaugment=cfg.randaugment)
        if isinstance(train, (ShardSamples, HFStream)):
            kind = ShardLoader if isinstance(train, ShardSamples) else HFStreamLoader
            loader = kind(train, batch, Chain(augment, preprocess.normalize), preprocess.channels, seed=seed,
                          workers=cfg.workers, shuffle_buffer=cfg.shuffle_buffer,
                          mix=mix if mix.mixing else None, device=ctx.device, **shard)
        else:
            ds = ImageFolderDataset(samples=train.samples, classes=splits.classes, channels=preprocess.channels,
                                    transform=Chain(augment, preprocess.normalize), seed=seed)
            loader = FolderLoader(ds, batch, shuffle=True, drop_last=True, seed=seed, workers=cfg.workers,
                                  mix=mix if mix.mixing else None, device=ctx.device, **shard)
    else:
        usual = recommended_augment(train.name) if not splits.is_folder else \
            BatchAugment(max(1, preprocess.img_size[0] // 8), True)
        augment = BatchAugment(
            crop_padding=usual.crop_padding if cfg.crop_padding is None else cfg.crop_padding,
            hflip=usual.hflip if cfg.hflip is None else cfg.hflip,
            mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, num_classes=num_classes)
        if augment.crop_padding == 0 and not augment.hflip and not augment.mixing:
            augment = None
        loader = DeviceLoader(in_memory(train, preprocess), batch, shuffle=True, drop_last=True, seed=seed,
                              augment=augment, device=ctx.device, **shard)
    if len(loader) == 0:
        raise batch_too_large(cfg, splits)
    sets = {name: eval_set(splits, name, preprocess, eval_batch, device=ctx.device, workers=cfg.workers,
                           part=parts[name], **shard) for name in ("val", "test") if name in parts}
    return RunData(splits, preprocess, loader, sets.get("val"), sets.get("test"))
