"""Typed configs from plain data: dict -> dataclass with one sentence per mistake, range checks, YAML files and
``--set section.key=value`` overrides. Every config of vitkit (the model's, a run's, the NumPy model's) is
loaded through here."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .fileio import atomic_write_text


def check_literals(obj) -> None:
    """Raise a ConfigError naming the first field of dataclass ``obj`` whose value is not one of its
    ``Literal[...]`` choices (for code that builds the dataclass directly, not through :func:`from_dict`)."""
    for name, tp in typing.get_type_hints(type(obj)).items():
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
        if choices and getattr(obj, name) not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {getattr(obj, name)!r}")


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
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # an optional value: the one type's own sentence
            return _coerce(value, arms[0], key)
        for arm in arms:
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                pass  # the next arm; when none takes it, one sentence names them all
        raise ConfigError(f"config key '{key}' must be {type_name(tp)}, got {_describe(value)}")
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
    raise ConfigError(f"config key '{key}' must be {type_name(tp)}, got {_describe(value)}")


_FLOAT_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def type_name(tp) -> str:
    """How a config error and the key reference (``vitkit config``) name a type: "an integer or null"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
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
# YAML files and command-line overrides


class DuplicateKey(yaml.YAMLError):
    """A mapping names one key twice (PyYAML would silently keep the last value)."""

    def __init__(self, key, first, second):  # the two keys' start marks
        super().__init__(f"key {key!r} appears twice (lines {first.line + 1} and {second.line + 1}); keep one")
        self.problem, self.problem_mark = str(self), None  # the sentence names both lines


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key instead of keeping its last value."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(key, seen[key], key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                break
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def safe_load(text: str):
    """``yaml.safe_load``, refusing repeated keys (:class:`DuplicateKey`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def load_config(config_path: str | Path) -> dict:
    """A YAML file as a dict; a missing file, invalid YAML or a key given twice is a ConfigError naming the
    file (a repeated key would otherwise silently keep its last value)."""
    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
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


def parse_override(text: str) -> tuple[list[str], object]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        parsed = safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML") from None
    return key.strip().split("."), parsed  # a number YAML 1.1 reads as text (3e-4) is coerced where typed


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
