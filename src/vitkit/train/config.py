"""The training config: typed sections (dataclasses), YAML recipes and ``--set section.key=value`` overrides.

Precedence is defaults < YAML file < command line. Every section is validated with
:func:`vitkit.typed_config.from_dict`, so an unknown key or a wrong type is one ConfigError naming the key. The
``model`` section is a :class:`~vitkit.ViTConfig` (optionally a preset ``name`` plus overrides, and an
``init`` weights file to fine-tune from); its ``in_channels``, ``num_classes`` and ``img_size`` default to the
data set's, so they are resolved only once the data is known (see :func:`resolve_model_config`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..compat import apply_aliases
from ..config import ViTConfig
from ..errors import ConfigError
from ..geometry import pair
from ..presets import PRESETS, get_preset
from ..typed_config import (apply_overrides, check_positive, check_ranges, from_dict, load_config, to_dict,
                            type_name)


@dataclass
class DataConfig:
    """What to train on, how it is split, and how batches are made. ``batch_size`` is the global batch (all
    processes). Splits follow :mod:`vitkit.data.splits`: ``val_fraction`` of each class is held out of the
    training split (unless a folder has ``val/``) with ``split_seed``."""

    dataset: str = "digits"  # digits | mnist | fashion-mnist | cifar10 | cifar100 | synthetic | imagefolder:PATH | shards:DIR | hf:PATH_OR_NAME
    root: str | None = None  # the data set's folder; None: $VITKIT_DATA/<folder> or ~/.cache/vitkit/<folder>
    download: bool = False  # fetch a public data set (md5-verified) when its folder is missing
    val_fraction: float = 0.1  # validation hold-out from the training split; 0: none (the last epoch is kept)
    split_seed: int = 0  # seed of the validation hold-out (not the run's seed: runs compare on one split)
    batch_size: int = 128  # training images per optimizer step, over all processes
    eval_batch_size: int = 512  # images per evaluation batch
    # Batched augmentation on the device (in-memory sets and folders decoded once):
    crop_padding: int | None = None  # None: the data set's usual value (vitkit.data.recommended_augment)
    hflip: bool | None = None  # None: the data set's usual value
    mixup_alpha: float = 0.0  # mixup Beta(alpha, alpha); 0: off
    cutmix_alpha: float = 0.0  # cutmix Beta(alpha, alpha); 0: off
    # Image folders:
    img_size: int | tuple[int, int] | None = None  # None: model.img_size, else 224
    channels: int | None = None  # 1 or 3; None: 1 when every image is grey, else 3
    mean: tuple[float, ...] | None = None  # normalisation; None: ImageNet's (its grey version for 1 channel)
    std: tuple[float, ...] | None = None  # with data.mean
    crop_pct: float = 0.875  # evaluation: short side to img_size / crop_pct, then the centre img_size (timm)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # resampling of every resize
    crop_scale: tuple[float, float] = (0.08, 1.0)  # training: random-resized-crop area fraction (streamed)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # and aspect ratio range
    randaugment: bool = True  # streamed only
    cache: Literal["none", "memory", "disk"] = "none"  # decode every image once (then train on the device)
    cache_dir: str | None = None  # for cache: disk; None: ~/.cache/vitkit/decoded
    workers: int = 4  # loader processes when streaming
    shuffle_buffer: int = 1000  # shards: and streamed hf:: samples shuffled among while streaming (1: none)
    # Hugging Face datasets (hf:):
    image_column: str | None = None  # None: the first Image feature, else a column named image, img, ...
    label_column: str | None = None  # None: the first ClassLabel, else a column named label, labels, ...
    streaming: bool = False  # read the splits as datasets.IterableDataset (nothing converted or downloaded whole)

    def __post_init__(self):
        check_positive(self, ("batch_size", "eval_batch_size"), "data")
        check_ranges(self, "data", {"val_fraction": "[0, 1)", "mixup_alpha": "[0, inf)", "cutmix_alpha": "[0, inf)",
                                    "crop_padding": "[0, inf)", "split_seed": f"[0, {2**63}]", "workers": "[0, inf)", "shuffle_buffer": "[1, inf)",
                                    "mean": "[0, 1]", "std": "(0, inf)"})
        if self.img_size is not None:
            pair(self.img_size, "data.img_size")
        if self.mean is not None and self.std is not None and not len(self.mean) == len(self.std) in (1, 3):
            raise ConfigError(f"data.mean and data.std need 1 or 3 values each (one per channel), got "
                              f"{list(self.mean)} and {list(self.std)}")
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


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up then a cosine decay to ``min_lr``, stepped once per optimizer step."""

    lr: float = 1e-3  # peak learning rate, reached after the warm-up
    min_lr: float = 1e-5  # learning rate at the end of the cosine decay
    weight_decay: float = 0.05  # never applied to norms, biases, position embeddings or [CLS]/register tokens
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decay rates
    eps: float = 1e-8  # AdamW's denominator epsilon
    warmup_epochs: float = 1.0  # linear warm-up length; must be shorter than the run
    head_warmup_epochs: float = 0.0  # fine-tuning: first train the head alone (backbone lr 0); needs model.init
    layer_decay: float | None = None  # layer-wise lr decay (BEiT / MAE fine-tuning), e.g. 0.75; None: off
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    label_smoothing: float = 0.1  # of the training loss (evaluation uses plain cross-entropy)
    accum_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)

    def __post_init__(self):
        check_ranges(self, "optim", {"lr": "(0, inf)", "min_lr": "[0, inf)", "weight_decay": "[0, inf)",
                                     "betas": "[0, 1)", "eps": "(0, 1)", "warmup_epochs": "[0, inf)",
                                     "head_warmup_epochs": "[0, inf)", "layer_decay": "(0, 1]", "grad_clip": "(0, inf)", "label_smoothing": "[0, 1)"})
        if self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr ({self.min_lr:g}) must not exceed optim.lr ({self.lr:g}): the schedule "
                              "decays from lr down to min_lr")
        if self.lr * self.weight_decay >= 1:
            raise ConfigError(f"optim.lr x optim.weight_decay ({self.lr:g} x {self.weight_decay:g}) must be below 1: "
                              "AdamW shrinks every decayed weight by that fraction at each step")
        check_positive(self, ("accum_steps",), "optim")


@dataclass
class LoraSettings:
    """``train.lora``: LoRA adapters (Hu et al. 2021) on the blocks' Linear layers, through Hugging Face peft.
    The pre-trained weights stay frozen, the adapters and the classifier head train, and every weights file
    the run writes holds the adapters merged in (a plain ViT)."""

    rank: int = 8  # r: the inner width of each adapter (B A, with A rank x in and B out x rank)
    alpha: float = 16.0  # lora_alpha: the adapter's update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on each adapter's input, in [0, 1)
    targets: tuple[Literal["qkv", "proj", "fc1", "fc2"], ...] = ("qkv",)  # Linear layers of every block: attn.qkv (fused q, k, v: one adapter), attn.proj, mlp.fc1, mlp.fc2

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"train.lora.rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"train.lora.alpha must be above 0 (the update is scaled by alpha / rank), got "
                              f"{self.alpha:g}")
        check_ranges(self, "train.lora", {"dropout": "[0, 1)"})
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"train.lora.targets must name at least one of qkv, proj, fc1, fc2, each at most "
                              f"once, got {list(self.targets)}")


FSDP_EMA = ("train.strategy=fsdp does not support train.ema_decay yet (the average would need sharding too); "
            "use train.strategy=ddp for an EMA")
FSDP_LORA = ("train.strategy=fsdp does not support train.lora yet (peft's adapters are not sharded); use "
             "train.strategy=ddp, which fits adapters anyway since only they train")


FREEZE = re.compile(r"none|backbone|blocks:(\d+)")


@dataclass
class LoopConfig:
    """How long and how the loop runs."""

    epochs: int = 10  # passes over the training split (a resume may raise it)
    ema_decay: float | None = None  # e.g. 0.9998: evaluate and export an exponential moving average of weights
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, more time
    checkpoint_every_steps: int = 0  # also save `last` every N optimizer steps; 0: at the end of each epoch only
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on the CPU needs nothing more)
    threads: int | None = None  # torch.set_num_threads; None: PyTorch's default
    patience: int | None = None  # stop after this many epochs without a better validation accuracy; None: never
    freeze: str = "none"  # none | backbone (a linear probe: only head and head_dist train) | blocks:K (the patch embedding, tokens, position embedding and the first K blocks); frozen parts run in eval mode
    lora: LoraSettings | None = None  # LoRA adapters through peft (the train.lora keys below); null: off
    strategy: Literal["ddp", "fsdp"] = "ddp"  # with several processes: ddp (every process holds the whole model) | fsdp (FSDP2: parameters, gradients and optimizer state sharded over the processes, for models too large for one GPU); one process: no difference

    def __post_init__(self):
        check_positive(self, ("epochs",), "train")
        match = FREEZE.fullmatch(self.freeze)
        if not match or (match.group(1) is not None and int(match.group(1)) < 1):
            raise ConfigError(f"train.freeze must be none, backbone or blocks:K (the first K >= 1 blocks and "
                              f"everything before them), got {self.freeze!r}")
        if self.lora is not None and self.freeze == "backbone":
            raise ConfigError("train.freeze=backbone trains the head alone, so the adapters of train.lora would "
                              "never train; use one of them, or train.freeze=blocks:K to adapt only the blocks "
                              "after the first K")
        if self.strategy == "fsdp" and (self.ema_decay is not None or self.lora is not None):
            raise ConfigError(FSDP_EMA if self.ema_decay is not None else FSDP_LORA)
        check_ranges(self, "train", {"ema_decay": "(0, 1)", "checkpoint_every_steps": "[0, inf)",
                                     "threads": "[1, 1024]", "patience": "[1, inf)"})


def _model_section_fields() -> list:
    hints = typing.get_type_hints(ViTConfig)
    return [("name", str | None, None), ("init", str | None, None)] + \
        [(f.name, hints[f.name] | None, None) for f in dataclasses.fields(ViTConfig)]


ModelSection = dataclasses.make_dataclass("ModelSection", _model_section_fields(), namespace={
    "__doc__": "A run's ``model`` section: every :class:`ViTConfig` field, each optional (null: the preset's, "
               "the data's or the default), plus ``name`` (a preset) and ``init`` (weights to fine-tune from).",
    "given": lambda self: {k: v for k, v in dataclasses.asdict(self).items() if v is not None},
    "__post_init__": lambda self: self.name is None or get_preset(self.name),  # a misspelt preset: did you mean
})
ModelSection.__module__ = __name__


@dataclass
class RunConfig:
    """A whole training run; ``runs/<name>/`` (under ``out_dir``) is its folder."""

    name: str = "run"  # the run folder out_dir/name (name-2, name-3 ... when taken)
    out_dir: str = "runs"  # where run folders go
    seed: int = 0  # initial weights, batch order, augmentation, dropout
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps
    report: bool = True  # write RUN/report.html at the end (when vitkit.report is available)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)  # ViTConfig fields, a preset `name`, `init`
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self):
        if not RUN_NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise ConfigError(f"name {self.name!r} cannot name a run folder: use letters, digits, '.', '_' and '-' "
                              "(no spaces, no path separators), starting with a letter or digit")
        if not self.out_dir.strip() or "\0" in self.out_dir:
            raise ConfigError(f"out_dir must name a folder, got {self.out_dir!r}")
        check_ranges(self, "", {"seed": f"[0, {2**32 - 1}]"})
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.optim.head_warmup_epochs and not self.model.init:
            raise ConfigError("optim.head_warmup_epochs trains a new head on a pre-trained backbone, but "
                              "model.init names no weights; set model.init=WEIGHTS (a file, a folder or a Hub "
                              "name) or optim.head_warmup_epochs=0")
        adapted = " and ".join(k for k, on in (("train.freeze", self.train.freeze != "none"),
                                               ("train.lora", self.train.lora is not None)) if on)
        if adapted and not self.model.init:
            keep = "keep" if " and " in adapted else "keeps"
            raise ConfigError(f"{adapted} {keep} the backbone's weights as they start, but model.init names no "
                              "weights, so they would stay random; set model.init=WEIGHTS (a file, a folder or a "
                              f"Hub name) or drop {adapted}")
        if self.optim.head_warmup_epochs and self.train.freeze == "backbone":
            raise ConfigError("optim.head_warmup_epochs trains the head alone first, but train.freeze=backbone "
                              "trains nothing else; set optim.head_warmup_epochs=0")

    def to_dict(self) -> dict:
        return to_dict(self)


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
RESUMABLE_CHANGES = {  # config keys a resume may change, because each has a defined meaning mid-run
    "train.epochs": "the remaining steps follow the schedule of a run of the new length",
    "train.patience": "early stopping counts from the epochs already run",
    "train.checkpoint_every_steps": "", "train.threads": "", "train.grad_checkpointing": "", "data.workers": "",
    "data.eval_batch_size": "", "report": "", "device": "",
}


def packaged_config_dir() -> Path:
    """The folder of the recipes shipped inside the package (``vitkit/configs``)."""
    import vitkit
    return Path(vitkit.__file__).resolve().parent / "configs"


def validate(data: dict) -> RunConfig:
    """Plain data -> a validated :class:`RunConfig` (the model section's aliases, such as ``n_heads``, renamed);
    the model section is checked against the data by :func:`resolve_model_config` once the data set is known."""
    data = dict(data)
    if isinstance(data.get("model"), dict):
        try:
            data["model"] = apply_aliases(dict(data["model"]))
        except ConfigError as e:
            raise ConfigError(f"config section 'model': {e}") from None
    return from_dict(RunConfig, data)


def load_run_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """defaults < YAML file (the packaged digits recipe when ``path`` is None) < ``overrides``."""
    path = Path(path) if path is not None else packaged_config_dir() / "digits.yaml"
    return validate(apply_overrides(load_config(path), list(overrides)))


def check_compiler(device) -> None:
    """torch.compile for a CPU builds C++ kernels: without a compiler it would fail deep inside the first
    step, so say so before anything runs."""
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "clang++", "c++")):
        raise ConfigError("train.compile=true on the CPU needs a C++ compiler (g++ or clang++ on the PATH, or "
                          "$CXX); install one or set train.compile=false")


def check_run_length(cfg: RunConfig, steps_per_epoch: int) -> None:
    """Refuse settings that the run is too short to honour: a warm-up that never ends, or an EMA that would
    still be mostly the untrained weights when the run ends."""
    total = steps_per_epoch * cfg.train.epochs
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    if warmup >= total:
        raise ConfigError(f"optim.warmup_epochs {cfg.optim.warmup_epochs:g} ({warmup} steps) is not shorter than "
                          f"the run ({cfg.train.epochs} epochs, {total} steps), so the learning rate would never "
                          "reach optim.lr; lower optim.warmup_epochs or train longer")
    head_only = round(cfg.optim.head_warmup_epochs * steps_per_epoch)
    if head_only and head_only + warmup >= total:
        raise ConfigError(f"optim.head_warmup_epochs {cfg.optim.head_warmup_epochs:g} plus optim.warmup_epochs "
                          f"{cfg.optim.warmup_epochs:g} ({head_only} + {warmup} steps) is not shorter than the run "
                          f"({cfg.train.epochs} epochs, {total} steps), so the backbone would never train at "
                          "optim.lr; shorten them or train longer")
    decay = cfg.train.ema_decay
    if decay is not None and not cfg.model.init and decay ** total > 0.01:  # fine-tuning starts trained
        limit = 0.01 ** (1 / total)
        raise ConfigError(f"train.ema_decay {decay:g} averages over about {1 / (1 - decay):,.0f} steps, but the run "
                          f"has {total:,}: the untrained weights would still make up {decay ** total:.0%} of the "
                          f"average at the end; use train.ema_decay <= {math.floor(limit * 1e5) / 1e5:g} "
                          "or train longer")


def check_data_keys(model: ModelSection, *, in_channels: int, num_classes: int, img_size) -> dict:
    """The three model keys the data decides, as a dict; a value the section gives for one of them must agree
    with the data."""
    data_has = {"in_channels": in_channels, "num_classes": num_classes, "img_size": img_size}
    what = {"in_channels": "channels", "num_classes": "classes", "img_size": "pixels per side"}
    for key, value in data_has.items():
        given = getattr(model, key)
        given = value if given is None else given
        same = pair(given, f"model.{key}") == pair(value) if key == "img_size" else given == value
        if not same:
            raise ConfigError(f"model.{key} is {given!r} but the data has {value!r} {what[key]}; leave model.{key} "
                              "out and the data decides it" + (" (or set data.img_size for an image folder)"
                                                               if key == "img_size" else ""))
    return data_has


def resolve_model_config(model: ModelSection, *, in_channels: int, num_classes: int, img_size) -> ViTConfig:
    """The run's :class:`ViTConfig`: the data set decides in_channels, num_classes and img_size (a value given
    for one of them must agree with the data), a preset ``name`` the architecture (the section may add to it,
    e.g. drop_path_rate, but not contradict it)."""
    fields = {k: v for k, v in model.given().items() if k not in ("name", "init")}
    fields.update(check_data_keys(model, in_channels=in_channels, num_classes=num_classes, img_size=img_size))
    name = model.name
    if name is not None:
        preset = PRESETS[name]
        clash = [f"{k} {fields[k]!r} (the preset has {v!r})" for k, v in preset.items()
                 if k != "img_size" and k in fields and fields[k] != v]
        if clash:
            raise ConfigError(f"model.name {name} fixes the architecture, but the model section also sets "
                              f"{', '.join(clash)}; remove model.name or those keys")
        fields = {**preset, **fields}
    return ViTConfig.from_dict(fields, "model")


# ---------------------------------------------------------------------------------------------------------
# The reference of every key, generated from the dataclasses above (their field comments are the meanings)

SECTIONS = (("", RunConfig, "the run"), ("data", DataConfig, "what to train on, its splits, batches and images"),
            ("model", ViTConfig, "the architecture (ViTConfig); plus `name` (a preset such as "
                                 "vit_tiny_patch16_224) and `init` (weights to fine-tune from)"),
            ("optim", OptimConfig, "AdamW and the learning-rate schedule"), ("train", LoopConfig, "the loop"),
            ("train.lora", LoraSettings, "LoRA adapters through Hugging Face peft, when `train.lora` is set "
                                         "(`--set train.lora.rank=8`; needs `pip install 'vitkit[peft]'`)"))


def field_comments(cls) -> dict[str, str]:
    """{field: the comment at the end of its line} of a dataclass, read from its source."""
    import inspect
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s{4}(\w+): .*?  # (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def reference() -> str:
    """Every config key with its type, default and meaning, as Markdown (docs/config.md is this text)."""
    lines = ["# Config keys", "",
             "Every key of a `vitkit train` config, generated from the code (`vitkit config` prints this page).",
             "Precedence: defaults < the YAML recipe (`--config`) < `--set section.key=value`. In the model",
             "section, `in_channels`, `num_classes` and `img_size` come from the data.", ""]
    for section, cls, about in SECTIONS:
        lines += [f"## `{section or 'top level'}`: {about}", "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        hints, notes = typing.get_type_hints(cls), field_comments(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]) or (cls is RunConfig and f.name == "model"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            key = f"{section}.{f.name}" if section else f.name
            shown = "null" if default is None else (list(default) if isinstance(default, tuple) else default)
            if isinstance(shown, bool):
                shown = str(shown).lower()
            kind = "a mapping or null" if any(map(dataclasses.is_dataclass, typing.get_args(hints[f.name]))) \
                else type_name(hints[f.name])
            lines.append(f"| `{key}` | {kind} | `{shown}` | "
                         f"{notes.get(f.name, '').replace('|', chr(92) + '|')} |")
        lines.append("")
    lines += ["## Changing a key when resuming", "",
              "A resume (`--resume`) trains with the run's own config.yaml. `--set` may change only these keys:", ""]
    lines += [f"- `{k}`" + (f": {why}" if why else "") for k, why in RESUMABLE_CHANGES.items()]
    return "\n".join(lines) + "\n"
