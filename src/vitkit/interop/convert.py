"""Applying a key table: find the format of a state dict by its keys, strip its prefix, and rename its tensors
to vitkit's (timm's) keys with the format's rules."""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache
from typing import Mapping

import torch

from ..errors import CheckpointError
from .catalog import FORMATS
from .rules import Format

Tensor = torch.Tensor

# Top-level names of a vitkit model: a converted key outside them was not placed by any rule.
VITKIT_MODULES = ("cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed.", "norm_pre.", "blocks.",
                  "norm.", "fc_norm.", "attn_pool.", "head.", "head_dist.", "rope.", "head_norm.", "pre_logits.")


def unwrap(state: dict) -> dict:
    """Training checkpoints nest the weights: {'model': ...}, {'state_dict': ...}, DINOv2's {'teacher': ...},
    the Perception Encoder's {'weights': ...} (perception_models reads both of the last)."""
    for key in ("model", "state_dict", "model_state_dict", "module", "teacher", "weights"):
        if isinstance(state.get(key), dict):
            return unwrap(state[key])
    return state


@lru_cache(maxsize=None)
def _glob(pattern: str) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern))


def _has(keys, pattern: str) -> bool:
    if "*" not in pattern:
        return pattern in keys
    rx = _glob(pattern)
    return any(rx.match(k) for k in keys)


def _strip(state: dict, fmt: Format) -> dict | None:
    """``state`` with the format's prefix stripped, if the format's markers are there (else None)."""
    for p in (*fmt.prefixes, ""):
        keys = {k[len(p):] for k in state if k.startswith(p)} if p else set(state)
        if fmt.markers and all(_has(keys, m) for m in fmt.markers) and not any(_has(keys, u) for u in fmt.unless):
            if not p:
                return dict(state)
            if fmt.scoped_prefix:
                return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
            return {k[len(p):] if k.startswith(p) else k: v for k, v in state.items()}
    return None


def _unscan(state: dict) -> dict:
    """JAX scan layout: one ``Transformer/encoderblock/...`` tensor per parameter with a leading depth axis
    (depth, ...) -> ``Transformer/encoderblock_{i}/...`` tensors (...)."""
    scan = "Transformer/encoderblock/"
    out = {}
    for k, v in state.items():
        if k.startswith(scan):
            for i in range(v.shape[0]):
                out[f"Transformer/encoderblock_{i}/{k[len(scan):]}"] = v[i]
        else:
            out[k] = v
    return out


def _placeholders(state: dict, fmt: Format) -> dict[str, str]:
    found = {}
    for name, pattern in fmt.placeholders.items():
        rx = re.compile(pattern)
        found[name] = next((m.group(1) for k in sorted(state) if (m := rx.search(k))), "")
    return found


def _block_indices(state: dict, fmt: Format, fields: dict) -> list[int]:
    """Every block index that a ``{i}`` rule of the format finds in the keys, or that a key already in vitkit's
    layout (``blocks.{i}.``) has."""
    patterns = {r"blocks\.(\d+)\..*"}
    for rule in fmt.rules:
        for t in rule.theirs:
            if "{i}" in t:
                parts = [re.escape(p.format(**fields)) for p in t.split("{i}")]
                patterns.add(r"(\d+)".join(parts))
    rx = re.compile("|".join(f"^(?:{p})$" for p in sorted(patterns)))
    return sorted({int(next(g for g in m.groups() if g is not None)) for k in state if (m := rx.match(k))})


def source_keys(state: dict, fmt: Format) -> dict:
    """The source's tensors as the format's rules see them: unwrapped, prefix stripped (and scoped)."""
    state = unwrap(state)
    return _strip(state, fmt) or dict(state)


class _Reading(Mapping):
    """A user's callable rule sees the whole state dict through this: what it reads counts as placed."""

    def __init__(self, state: dict):
        self._state, self.read = state, set()

    def __getitem__(self, key):
        value = self._state[key]
        self.read.add(key)
        return value

    def __contains__(self, key):
        return key in self._state

    def __iter__(self):
        return iter(self._state)

    def __len__(self):
        return len(self._state)


def _call(rule, state: dict, i, used: set):
    view = _Reading(state)
    try:
        value = rule.fn(view) if i is None else rule.fn(view, i)
    except KeyError as e:
        raise CheckpointError(f"rules= entry {rule.ours!r} (a callable) reads {e.args[0]!r}, which the weights do "
                              "not have (their keys are listed by vitkit inspect)") from None
    used.update(view.read)
    return value, tuple(sorted(view.read))


def convert_state_dict(state: dict, fmt: str | Format, trace: dict | None = None
                       ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """Rename ``state`` (a ``fmt`` checkpoint) to vitkit's keys with the format's table.

    Returns ``(converted, dropped_pre_logits, facts)``: tensors no rule consumed stay in ``converted`` under
    their own names (the load check reports them), the optional representation layer is split off, and
    ``facts`` holds architecture facts only the raw layout shows (JAX: heads). Half-precision tensors are
    widened to float32 first, so the rules' arithmetic is exact. ``trace``, when given, is filled with
    ``{vitkit key: (their keys, transform name)}`` for what the rules made."""
    spec = FORMATS[fmt] if isinstance(fmt, str) else fmt
    state = {k: v.float() if isinstance(v, Tensor) and v.dtype in (torch.float16, torch.bfloat16) else v
             for k, v in source_keys(state, spec).items()}
    if spec.scan:
        state = _unscan(state)
    for pattern, repl in spec.renames:
        state = {re.sub(pattern, repl, k): v for k, v in state.items()}
    raw_facts = spec.facts(state) if spec.facts else {}
    pre_logits = {k: v for k, v in state.items() if spec.pre_logits and k.startswith(spec.pre_logits)}
    whole = state
    state = {k: v for k, v in state.items()
             if k not in pre_logits and not any(re.search(p, k) for p in spec.ignore)}
    fields = _placeholders(state, spec)
    facts = {**raw_facts, **_facts(state, spec, fields)}
    out, used, done = {}, set(), set()
    blocks = _block_indices(state, spec, fields)
    for rule in spec.rules:
        for i in blocks if "{i}" in rule.ours else [None]:
            target = rule.ours.format(i=i)
            if target in done:
                continue
            if rule.whole:
                value, keys = _call(rule, whole, i, used)
            else:
                keys = [t.format(i=i, **fields) for t in rule.theirs]
                if not (all(k in state for k in keys) and all(w.format(i=i, **fields) in state for w in rule.when)
                        and not any(u.format(i=i, **fields) in state for u in rule.unless)):
                    continue
                value = rule.fn(*(state[k] for k in keys))
                used.update(keys)
            done.add(target)
            if value is not None:
                out[target] = value
            if trace is not None:
                trace[target] = (tuple(keys), getattr(rule.fn, "__name__", "callable"))
    leftover = {k: v for k, v in state.items() if k not in used and k not in done}
    return {**leftover, **out}, pre_logits, facts


def _facts(state: dict, spec: Format, fields: dict) -> dict:
    """Architecture facts only a raw layout shows: JAX attention kernels (D, H, hd) hold the head count."""
    if "mha" not in spec.placeholders:
        return {}
    q = state.get(f"Transformer/encoderblock_0/MultiHeadDotProductAttention_{fields['mha']}/query/kernel")
    return {"num_heads": q.shape[1]} if isinstance(q, Tensor) and q.ndim == 3 else {}


def unplaced_keys(state: dict) -> list[str]:
    """Converted keys that lie outside every vitkit module: no rule knew where they go."""
    return [k for k in state if not k.startswith(VITKIT_MODULES)]
