"""The training config: typed sections (dataclasses), YAML recipes and ``--set section.key=value`` overrides.

Precedence is defaults < YAML file < command line. Every section is validated with
:func:`vitkit.config.from_dict`, so an unknown key or a wrong type is one ConfigError naming the key. The
``model`` section is a :class:`~vitkit.ViTConfig` (optionally a preset ``name`` plus overrides, and an
``init`` weights file to fine-tune from); its ``in_channels``, ``num_classes`` and ``img_size`` default to the
data set's, so they are resolved only once the data is known (see :func:`resolve_model_config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from ..config import PRESETS, ViTConfig, apply_aliases, check_positive, from_dict, get_preset, load_config, to_dict
from ..errors import ConfigError


@dataclass
class DataConfig:
    """What to train on, how it is split, and how batches are made. ``batch_size`` is the global batch (all
    processes). Splits follow :mod:`vitkit.data.splits`: ``val_fraction`` of each class is held out of the
    training split (unless a folder has ``val/``) with ``split_seed``."""

    dataset: str = "digits"  # digits | mnist | fashion-mnist | cifar10 | cifar100 | synthetic | imagefolder:PATH
    root: str | None = None  # the data set's folder; None: $VITKIT_DATA/<folder> or ~/.cache/vitkit/<folder>
    download: bool = False
    val_fraction: float = 0.1  # validation hold-out from the training split; 0: none (the last epoch is kept)
    split_seed: int = 0
    batch_size: int = 128
    eval_batch_size: int = 512
    # Batched augmentation on the device (in-memory sets and folders decoded once):
    crop_padding: int | None = None  # None: the data set's usual value (vitkit.data.recommended_augment)
    hflip: bool | None = None  # None: the data set's usual value
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # Image folders:
    img_size: int | tuple[int, int] | None = None  # None: model.img_size, else 224
    channels: int | None = None  # 1 or 3; None: 1 when every image is grey, else 3
    mean: tuple[float, ...] | None = None  # normalisation; None: ImageNet's (its grey version for 1 channel)
    std: tuple[float, ...] | None = None
    crop_pct: float = 0.875  # evaluation: short side to img_size / crop_pct, then the centre img_size (timm)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # training: random-resized-crop area fraction (streamed)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # and aspect ratio range
    randaugment: bool = True  # streamed only
    cache: Literal["none", "memory", "disk"] = "none"  # decode every image once (then train on the device)
    cache_dir: str | None = None  # for cache: disk; None: ~/.cache/vitkit/decoded
    workers: int = 4  # loader processes when streaming

    def __post_init__(self):
        check_positive(self, ("batch_size", "eval_batch_size"), "data")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels must be 1, 3 or null (decided by the images), got {self.channels!r}")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"data.crop_pct must lie in (0, 1], got {self.crop_pct}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(self.crop_scale)}")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ConfigError(f"data.crop_ratio must be [low, high] with 0 < low <= high, got {list(self.crop_ratio)}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("data.mean and data.std go together: give both or neither")
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up then a cosine decay to ``min_lr``, stepped once per optimizer step."""

    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05  # never applied to norms, biases, position embeddings or [CLS]/register tokens
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 1.0
    layer_decay: float | None = None  # layer-wise lr decay (BEiT / MAE fine-tuning), e.g. 0.75; None: off
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    label_smoothing: float = 0.1
    accum_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)

    def __post_init__(self):
        if self.lr <= 0 or self.min_lr < 0:
            raise ConfigError(f"optim.lr must be > 0 and optim.min_lr >= 0, got {self.lr} and {self.min_lr}")
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr ({self.min_lr:g}) must not exceed optim.lr ({self.lr:g}): the schedule "
                              "decays from lr down to min_lr")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay must lie in (0, 1], got {self.layer_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        check_positive(self, ("accum_steps",), "optim")
        if self.warmup_epochs < 0:
            raise ConfigError(f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}")


@dataclass
class LoopConfig:
    """How long and how the loop runs."""

    epochs: int = 10
    ema_decay: float | None = None  # e.g. 0.9998: evaluate and export an exponential moving average of weights
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    compile: bool = False  # torch.compile the model
    checkpoint_every_steps: int = 0  # also save `last` every N optimizer steps; 0: at the end of each epoch only
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on the CPU needs nothing more)
    threads: int | None = None  # torch.set_num_threads; None: PyTorch's default
    patience: int | None = None  # stop after this many epochs without a better validation accuracy; None: never

    def __post_init__(self):
        check_positive(self, ("epochs",), "train")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.checkpoint_every_steps < 0:
            raise ConfigError(f"train.checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")
        if self.patience is not None:
            check_positive(self, ("patience",), "train")


@dataclass
class RunConfig:
    """A whole training run; ``runs/<name>/`` (under ``out_dir``) is its folder."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps
    report: bool = True  # write RUN/report.html at the end (when vitkit.report is available)
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=dict)  # ViTConfig fields, plus optional `name` (preset) and `init`
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


MODEL_EXTRA_KEYS = ("name", "init")  # model-section keys that are not ViTConfig fields


def packaged_config_dir() -> Path:
    """The folder of the recipes shipped inside the package (``vitkit/configs``)."""
    import vitkit
    return Path(vitkit.__file__).resolve().parent / "configs"


def parse_override(text: str) -> tuple[list[str], object]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML") from None
    if isinstance(parsed, str):  # YAML 1.1 reads 3e-4 (no dot) as a string; on a command line it is a number
        try:
            parsed = float(parsed) if parsed.strip().lower() not in ("nan", "inf", "-inf", "infinity") else parsed
        except ValueError:
            pass
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides to nested plain data (a copy); unknown keys are caught by validation."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a config section")
            node = child
        node[path[-1]] = value
    return data


def validate(data: dict) -> RunConfig:
    """Plain data -> a validated :class:`RunConfig`; the model section is checked key by key here and
    fully (shapes, divisibility) by :func:`resolve_model_config` once the data set is known."""
    cfg = from_dict(RunConfig, data)
    model = dict(cfg.model or {})
    allowed = [f.name for f in dataclasses.fields(ViTConfig)]
    try:
        model = apply_aliases(model)
    except ConfigError as e:
        raise ConfigError(f"config section 'model': {e}") from None
    for key in model:
        if key not in allowed and key not in MODEL_EXTRA_KEYS:
            raise ConfigError(f"unknown config key 'model.{key}'; expected one of: "
                              f"{', '.join(list(MODEL_EXTRA_KEYS) + allowed)}")
    if model.get("name") is not None and model["name"] not in PRESETS:
        get_preset(model["name"])  # raises a ConfigError with close matches
    cfg.model = model
    return cfg


def load_run_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """defaults < YAML file (the packaged digits recipe when ``path`` is None) < ``overrides``."""
    path = Path(path) if path is not None else packaged_config_dir() / "digits.yaml"
    return validate(apply_overrides(load_config(path), list(overrides)))


def resolve_model_config(model: dict, *, in_channels: int, num_classes: int, img_size) -> ViTConfig:
    """The run's :class:`ViTConfig`: the data set fills in_channels, num_classes and img_size unless given."""
    fields = {k: v for k, v in model.items() if k not in MODEL_EXTRA_KEYS}
    fields.setdefault("in_channels", in_channels)
    fields.setdefault("num_classes", num_classes)
    fields.setdefault("img_size", img_size)
    name = model.get("name")
    if name is not None:
        base = dict(PRESETS[name])
        base.update(fields)
        fields = base
    return ViTConfig.from_dict(fields, "model")
