"""Configuration: ``ViTConfig`` (the single description of an architecture), its named presets, typed
validation of plain dicts into dataclasses, and YAML load/save."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .fileio import atomic_write_text

# --------------------------------------------------------------------------------------------------------------
# Typed dict -> dataclass


def from_dict(cls, data: dict | None, section: str = ""):
    """Build dataclass ``cls`` from ``data``, naming the offending key on an unknown key or a wrong type.

    Nested dataclass fields take nested dicts; ints are accepted for floats, lists for tuples.
    """
    data = {} if data is None else data
    where = f"{section}." if section else ""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{section or 'top level'}' must be a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{where}{key}'; expected one of: {', '.join(names)}"
                              + did_you_mean(str(key), names, where))
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if section and not str(e).startswith(f"{section}."):
            raise ConfigError(f"config section '{section}': {e}") from None
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid config section '{section or 'top level'}': {e}") from None


def did_you_mean(key: str, names, prefix: str = "") -> str:
    """``"; did you mean 'train.epochs'?"`` for a misspelt key, or an empty string."""
    import difflib
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def check_positive(obj, names, section: str = "") -> None:
    """Raise a ConfigError naming the first of the fields ``names`` of ``obj`` that is not a positive integer."""
    where = f"{section}." if section else ""
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}{name} must be a positive integer, got {value!r}")


def check_ranges(obj, section: str, rules: dict[str, str]) -> None:
    """Raise a ConfigError naming the first field of ``obj`` outside its interval. ``rules`` maps a field name
    to an interval such as ``"(0, 1]"`` or ``"[0, inf)"``; a None value is skipped, a tuple is checked item by
    item (``betas``)."""
    for name, interval in rules.items():
        value = getattr(obj, name)
        lo_text, hi_text = interval[1:-1].split(",")
        lo, hi = float(lo_text), float(hi_text)
        for v in (value if isinstance(value, (tuple, list)) else (value,)):
            if v is None:
                continue
            ok = (lo < v if interval[0] == "(" else lo <= v) and (v < hi if interval[-1] == ")" else v <= hi)
            if not ok or v != v:  # v != v: NaN
                where = f"{section}.{name}" if section else name
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"{where} must lie in {interval.replace('inf', '∞')}, got {shown!r}")


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-safe data (tuples become lists)."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


def _coerce(value: Any, tp, key: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}' must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str) and _FLOAT_STRING.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads `3e-4` (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise ConfigError(f"config key '{key}' must have {len(args)} items, got {len(value)}")
                return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
            inner = args[0] if args else Any
            seq = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(seq) if (origin is tuple or tp is tuple) else seq
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {_describe(value)}")


_FLOAT_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


# --------------------------------------------------------------------------------------------------------------
# The architecture

RPB_KEYS = {"num_heads", "window_size", "seq_len", "bias_type", "init_std"}
PoolType = Literal["cls", "mean"]
PosEmbedType = Literal["learn", "sincos2d", "none"]
AttnImpl = Literal["fused", "explicit"]


@dataclass
class ViTConfig:
    """Everything that decides a ViT's architecture (and so its state-dict shapes).

    Names follow timm and the paper; Hugging Face names (``hidden_size``, ``num_hidden_layers`` ...) are read
    by :meth:`from_hf`. ``pool="cls"`` classifies from the [CLS] token, ``"mean"`` from the average patch
    token (then ``fc_norm`` defaults to on and the final ``norm`` moves after pooling, as in timm).
    ``norm_style="post"`` with ``act="relu"`` and ``final_norm=False`` is the network of vitkit.scratch.
    ``attn_impl="fused"`` runs ``scaled_dot_product_attention``, which is what timm runs, so logits equal
    timm's bit for bit. ``"explicit"`` runs matmul-softmax-matmul (Hugging Face's
    ``attn_implementation="eager"``). On a CPU it trains 1.1-1.2x faster for sequences of a few dozen
    tokens. It changes no weights, only the float rounding.
    """

    img_size: int | tuple[int, int] = 224  # input height and width (an int for a square)
    patch_size: int = 16  # side of the square patches the image is cut into
    in_channels: int = 3  # 1 for grey images, 3 for colour
    num_classes: int = 1000  # outputs of the head; 0: no head (forward returns the pooled features)
    embed_dim: int = 768  # token width D
    depth: int = 12  # number of transformer blocks
    num_heads: int = 12  # attention heads; must divide embed_dim
    mlp_ratio: float = 4.0  # MLP hidden width as a multiple of embed_dim
    qkv_bias: bool = True  # biases in the query/key/value projection
    drop_rate: float = 0.0  # dropout after the position embedding, in attention output and MLP, before the head
    attn_drop_rate: float = 0.0  # dropout on the attention weights
    drop_path_rate: float = 0.0  # stochastic depth of the last block (linearly less for earlier blocks)
    use_relative_position: bool = False  # a learned relative position bias in every attention layer
    rpb_kwargs: dict | None = None  # the bias's settings: bias_type '2d' (window_size) or '1d' (seq_len)
    pool: PoolType = "cls"  # classify from the [CLS] token ('cls') or the average patch token ('mean')
    class_token: bool = True  # prepend a [CLS] token
    reg_tokens: int = 0  # register tokens after [CLS] (Darcet et al. 2023)
    pos_embed: PosEmbedType = "learn"  # position embedding: learned, fixed 2-d sin-cos, or none
    no_embed_class: bool = False  # the position embedding covers the patches only (DeiT III, big_vision)
    fc_norm: bool | None = None  # a norm after pooling instead of before it; None: on for pool 'mean'
    final_norm: bool = True  # a LayerNorm after the last block
    layer_scale_init: float | None = None  # learned per-channel residual scale, initialised to this (CaiT)
    norm_eps: float = 1e-6  # LayerNorm epsilon
    norm_style: Literal["pre", "post"] = "pre"  # LayerNorm before each branch (ViT) or after the residual add
    act: Literal["gelu", "gelu_tanh", "relu"] = "gelu"  # the MLP's activation
    dynamic_img_size: bool = False  # accept any image size, resampling the position embedding on the fly
    attn_impl: AttnImpl = "fused"  # 'fused' (PyTorch's kernel, timm's numbers) or 'explicit' (faster on a CPU)

    def __post_init__(self):
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        h, w = self.grid_size_of(self.img_size)  # validates divisibility
        check_positive(self, ("patch_size", "in_channels", "embed_dim", "depth", "num_heads"))
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        for name, choices in (("pool", PoolType), ("pos_embed", PosEmbedType),
                              ("norm_style", Literal["pre", "post"]),
                              ("act", Literal["gelu", "gelu_tanh", "relu"]), ("attn_impl", AttnImpl)):
            if getattr(self, name) not in typing.get_args(choices):
                raise ConfigError(f"{name} must be one of {', '.join(map(repr, typing.get_args(choices)))}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        check_ranges(self, "", {"mlp_ratio": "(0, 64]", "norm_eps": "(0, 1)", "layer_scale_init": "(0, 1e6]"})
        if self.mlp_dim < 1:
            raise ConfigError(f"mlp_ratio {self.mlp_ratio} leaves the MLP no hidden unit (embed_dim "
                              f"{self.embed_dim} x mlp_ratio < 1)")
        if self.pool == "cls" and not self.class_token:
            raise ConfigError("pool='cls' needs class_token=True; use pool='mean' for a model without [CLS]")
        if self.reg_tokens < 0:
            raise ConfigError(f"reg_tokens must be >= 0, got {self.reg_tokens}")
        if self.pos_embed == "sincos2d" and self.embed_dim % 4:
            raise ConfigError(f"pos_embed='sincos2d' needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.use_relative_position:
            kw = dict(self.rpb_kwargs or {})
            unknown = sorted(set(kw) - RPB_KEYS)
            if unknown:
                raise ConfigError(f"rpb_kwargs has unknown keys {unknown}; expected some of {sorted(RPB_KEYS)}")
            if kw.get("num_heads", self.num_heads) != self.num_heads:
                raise ConfigError(f"rpb_kwargs num_heads ({kw['num_heads']}) must equal num_heads ({self.num_heads})")
            bias_type = kw.get("bias_type", "2d")
            if bias_type == "2d":
                window = kw.get("window_size", (h, w))
                window = (window, window) if isinstance(window, int) else tuple(window)
                if window != (h, w):
                    raise ConfigError(f"rpb_kwargs window_size {window} must match the patch grid {(h, w)} "
                                      f"(img_size {self.img_size} / patch_size {self.patch_size})")
            elif bias_type == "1d":
                seq = kw.get("seq_len", h * w)
                if seq not in (h * w, h * w + self.num_prefix_tokens):
                    raise ConfigError(f"rpb_kwargs seq_len ({seq}) must be the number of patches ({h * w}) or "
                                      f"of all tokens ({h * w + self.num_prefix_tokens})")
            else:
                raise ConfigError(f"rpb_kwargs bias_type must be '1d' or '2d', got {bias_type!r}")
            if self.dynamic_img_size:
                raise ConfigError("dynamic_img_size=True cannot be combined with a relative position bias, "
                                  "whose table is built for one patch grid")

    def grid_size_of(self, img_size) -> tuple[int, int]:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"img_size {img_size} must be divisible by patch_size {self.patch_size}")
        return (h // self.patch_size, w // self.patch_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.grid_size_of(self.img_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def use_fc_norm(self) -> bool:
        return self.pool == "mean" if self.fc_norm is None else self.fc_norm

    # Hugging Face names, read-only, so seed-003-style code reads the same config.
    hidden_size = property(lambda self: self.embed_dim)
    num_hidden_layers = property(lambda self: self.depth)
    num_attention_heads = property(lambda self: self.num_heads)
    intermediate_size = property(lambda self: self.mlp_dim)
    image_size = property(lambda self: self.img_size)
    num_channels = property(lambda self: self.in_channels)
    hidden_dropout_prob = property(lambda self: self.drop_rate)
    attention_probs_dropout_prob = property(lambda self: self.attn_drop_rate)
    layer_norm_eps = property(lambda self: self.norm_eps)

    @classmethod
    def from_dict(cls, data: dict, section: str = "model") -> "ViTConfig":
        """A validated config from plain data (YAML); aliases as in :meth:`from_kwargs`."""
        return from_dict(cls, apply_aliases(dict(data)), section)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ViTConfig":
        """Like the constructor, also accepting the seeds' and timm's aliases: ``n_heads`` (num_heads),
        ``dropout`` (drop_rate), ``in_chans`` (in_channels)."""
        return cls(**apply_aliases(kwargs))

    @classmethod
    def from_hf(cls, hf: Any, **overrides) -> "ViTConfig":
        """From a Hugging Face ``ViTConfig`` (object or dict): same architecture, HF's ``layer_norm_eps``."""
        d = hf.to_dict() if hasattr(hf, "to_dict") else dict(hf)
        if d.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"unsupported Hugging Face hidden_act {d['hidden_act']!r}; expected 'gelu'")
        num_labels = len(d["id2label"]) if d.get("id2label") else d.get("num_labels", 0)
        kwargs = dict(
            img_size=d.get("image_size", 224), patch_size=d.get("patch_size", 16),
            in_channels=d.get("num_channels", 3), num_classes=num_labels, embed_dim=d.get("hidden_size", 768),
            depth=d.get("num_hidden_layers", 12), num_heads=d.get("num_attention_heads", 12),
            mlp_ratio=d.get("intermediate_size", 3072) / d.get("hidden_size", 768),
            qkv_bias=d.get("qkv_bias", True), drop_rate=d.get("hidden_dropout_prob", 0.0),
            attn_drop_rate=d.get("attention_probs_dropout_prob", 0.0), norm_eps=d.get("layer_norm_eps", 1e-12),
            act="gelu" if d.get("hidden_act", "gelu") == "gelu" else "gelu_tanh")
        kwargs.update(overrides)
        return cls(**kwargs)

    def replace(self, **changes) -> "ViTConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **apply_aliases(changes))

    def to_dict(self) -> dict:
        return to_dict(self)


_ALIASES = {"n_heads": "num_heads", "dropout": "drop_rate", "in_chans": "in_channels"}


def apply_aliases(kwargs: dict) -> dict:
    """Rename the accepted aliases (``n_heads``, ``dropout``, ``in_chans``) to ViTConfig's field names."""
    for alias, name in _ALIASES.items():
        if alias in kwargs:
            value = kwargs.pop(alias)
            if name in kwargs and kwargs[name] != value:
                raise ConfigError(f"{alias}={value!r} contradicts {name}={kwargs[name]!r}; give one of them")
            kwargs[name] = value
    return kwargs


# --------------------------------------------------------------------------------------------------------------
# Named architectures (timm's names)

VARIANTS = {  # width, depth, heads, mlp_ratio (the paper; big_vision's decode_variant)
    "tiny": (192, 12, 3, 4.0),
    "small": (384, 12, 6, 4.0),
    "medium": (512, 12, 8, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 16, 48 / 11),
}
PATCH_SIZES = (8, 14, 16, 32)
IMG_SIZES = (224, 384)


def _build_presets() -> dict[str, dict]:
    presets = {}
    for variant, (dim, depth, heads, ratio) in VARIANTS.items():
        for patch in PATCH_SIZES:
            for img in IMG_SIZES:
                if img % patch:  # e.g. patch 14 needs 224 or 518
                    continue
                presets[f"vit_{variant}_patch{patch}_{img}"] = dict(
                    img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio)
    return presets


PRESETS: dict[str, dict] = _build_presets()


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style pattern, e.g. ``list_models("vit_base_*")``."""
    import fnmatch
    return sorted(n for n in PRESETS if fnmatch.fnmatch(n, pattern))


def get_preset(name: str, **overrides) -> ViTConfig:
    """The ``ViTConfig`` of a named architecture, with any fields overridden."""
    if name not in PRESETS:
        import difflib
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; see vitkit.list_models()"
        raise ConfigError(f"unknown model name {name!r}{hint}")
    return ViTConfig.from_kwargs(**{**PRESETS[name], **overrides})


# --------------------------------------------------------------------------------------------------------------
# YAML


def load_config(config_path: str | Path) -> dict:
    """A YAML file as a dict; a missing file or invalid YAML is a ConfigError naming the file."""
    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; expected a YAML recipe") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def save_config(config: dict, save_path: str | Path) -> None:
    """Write a dict (or dataclass) as YAML, atomically, creating parent folders."""
    if dataclasses.is_dataclass(config):
        config = to_dict(config)
    atomic_write_text(save_path, yaml.safe_dump(config, sort_keys=False))
