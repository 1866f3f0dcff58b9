"""What the commands share: argument types, and the one way they load a checkpoint for inference."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def load_predictor(checkpoint: str, device: str):
    from ..predictor import Predictor
    from ..devices import pick_device
    return Predictor.load(checkpoint, pick_device(device, no_gpu="use --device cpu (or auto)"))


def read_rules(path: str | None) -> dict | None:
    """A rules YAML file (``vitkit inspect`` / ``convert --rules``): ``vitkit key: their key``, a list of their
    keys (concatenated) or ``"transform(key, ...)"``, ``{i}`` for the block index; None without a file. A
    callable rule cannot be written in YAML (that needs ``from_pretrained(rules=)`` in Python)."""
    if path is None:
        return None
    from ..typed_config import load_config
    from ..errors import ConfigError

    data = load_config(path)
    for key, value in data.items():
        if not isinstance(key, str) or not (isinstance(value, str) or (
                isinstance(value, list) and value and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"rules file {path}: entry {key!r} must map a vitkit key to their key, a list of their "
                              f"keys or 'transform(key, ...)', got {value!r} (a callable rule needs Python: "
                              "from_pretrained(..., rules={key: fn}))")
    return data


def model_settings(sets: list[str]) -> dict:
    """``--set model.KEY=VALUE`` (YAML values) -> keyword arguments of ``from_pretrained``: a ViTConfig field
    for what the weights cannot tell (``model.num_heads=4``, ``model.norm_style=pre``), or ``num_classes`` /
    ``img_size``."""
    import typing

    from ..compat import apply_aliases
    from ..config import ViTConfig
    from ..typed_config import _coerce, did_you_mean, parse_override
    from ..errors import ConfigError

    types = typing.get_type_hints(ViTConfig)
    fields = set(ViTConfig.__dataclass_fields__)
    out = {}
    for text in sets:
        path, value = parse_override(text)
        if len(path) != 2 or path[0] != "model":
            raise ConfigError(f"--set takes model.KEY=VALUE here (a ViTConfig field), got {text!r}")
        key = path[1]
        name = next(iter(apply_aliases({key: value})))
        if name not in fields:
            raise ConfigError(f"--set {text}: {key!r} is not a model key{did_you_mean(key, fields, 'model.')}")
        out[key] = _coerce(value, types[name], f"model.{key}")  # 1e-5 is text to YAML 1.1
    return out
