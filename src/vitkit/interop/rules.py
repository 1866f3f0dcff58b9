"""The vocabulary of the key tables: a :class:`Rule` makes one vitkit key from some of theirs, a :class:`Format`
is one library's whole layout, a :class:`Profile` is what a model family implies beyond its keys, and
:data:`TRANSFORMS` are the named tensor maps rules may use. Every table in this package, and every table a
user writes for :meth:`vitkit.VisionTransformer.from_pretrained` (``rules=``), is made of these."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch

from ..errors import CheckpointError, ConfigError

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------------------
# Tensor transforms. Torch stores Linear weights as (out, in); JAX kernels are (in, out).


def same(t: Tensor) -> Tensor:
    return t


def cat(*ts: Tensor) -> Tensor:
    """q, k, v (D, D) or (D,) each -> qkv (3D, D) or (3D,), in the order given (timm's layout is q, k, v)."""
    return torch.cat(ts, dim=0)


def token(t: Tensor) -> Tensor | None:
    """A learned token stored as (D,), (1, D) or (1, 1, D) -> (1, 1, D); an empty one (0, D) is dropped."""
    return t.reshape(1, -1, t.shape[-1]) if t.numel() else None


def pos(t: Tensor) -> Tensor:
    """A position table stored as (T, D) -> (1, T, D)."""
    return t.reshape(1, -1, t.shape[-1])


def transpose(t: Tensor) -> Tensor:
    return t.T


def zeros(t: Tensor) -> Tensor:
    """A missing bias: zeros as long as the first axis of the weight it belongs to."""
    return torch.zeros(t.shape[0], dtype=t.dtype)


def add(*ts: Tensor) -> Tensor:
    return sum(ts[1:], ts[0])


def patch_channels(n: int) -> int:
    """The channels C of a flattened patch of n = C * P * P values: 3 (RGB) or 1 (grey)."""
    for c in (3, 1):
        if n % c == 0 and math.isqrt(n // c) ** 2 == n // c:
            return c
    raise CheckpointError(f"a flattened patch of {n} values is neither 3 x P x P nor 1 x P x P; write the patch "
                          "embedding with a conv-shaped weight (D, C, P, P) in a rules= table")


def patches(w: Tensor) -> Tensor:
    """A Linear (D, P*P*C) on patches flattened in (p1 p2 c) order (einops ``b c (h p1) (w p2) -> b (h w)
    (p1 p2 c)``, vit-pytorch, SigLIP2) -> the equivalent conv weight (D, C, P, P)."""
    d, n = w.shape
    c = patch_channels(n)
    p = math.isqrt(n // c)
    return w.reshape(d, p, p, c).permute(0, 3, 1, 2).contiguous()


def patches_cpp(w: Tensor) -> Tensor:
    """A Linear (D, C*P*P) on patches flattened in (c p1 p2) order (``x.unfold``, a conv weight's own order)
    -> the conv weight (D, C, P, P)."""
    d, n = w.shape
    c = patch_channels(n)
    p = math.isqrt(n // c)
    return w.reshape(d, c, p, p)


def patch_norm(t: Tensor, *_) -> Tensor:
    """A LayerNorm over (p1 p2 c)-ordered patch values -> the same over vitkit's (c p1 p2) order."""
    c = patch_channels(t.numel())
    p = math.isqrt(t.numel() // c)
    return t.reshape(p, p, c).permute(2, 0, 1).reshape(-1)


def q_of_qkv(t: Tensor) -> Tensor:
    """The query rows of a fused (3D, ...) in-projection (q, k, v rows) -> (D, ...)."""
    return t[: t.shape[0] // 3]


def kv_of_qkv(t: Tensor) -> Tensor:
    """The key and value rows of a fused (3D, ...) in-projection -> (2D, ...), k rows first."""
    return t[t.shape[0] // 3:]


def cls_plus_class_pos(cls: Tensor, pos_embed: Tensor, *_registers) -> Tensor:
    """DINOv2 with registers adds the position embedding to [CLS] and the patches but not to the registers,
    which sit between them. timm's equivalent (``no_embed_class``) folds the class slot into the token;
    the registers are only an input here, so the rule applies to register models only."""
    return cls + pos_embed[:, :1]


def patch_pos(pos_embed: Tensor, *_registers) -> Tensor:
    """The patch part of a position table whose class slot was folded into [CLS] (see above)."""
    return pos_embed[:, 1:]


# JAX / flax layouts


def jax_conv(k: Tensor) -> Tensor:
    return k.permute(3, 2, 0, 1)  # (P, P, C, D) -> (D, C, P, P)


def jax_heads_in(*ks: Tensor) -> Tensor:
    return torch.cat([k.flatten(1).T for k in ks], dim=0)  # n x (D, H, hd) -> n x (H*hd, D) -> (nD, D)


def jax_heads_bias(*bs: Tensor) -> Tensor:
    return torch.cat([b.reshape(-1) for b in bs], dim=0)  # n x (H, hd) -> (nD,)


def jax_heads_out(k: Tensor) -> Tensor:
    return k.flatten(0, 1).T  # (H, hd, D) -> (H*hd, D) -> (D, H*hd)


TRANSFORMS: dict[str, Callable[..., Tensor | None]] = {
    "same": same, "cat": cat, "token": token, "pos": pos, "transpose": transpose, "zeros": zeros, "add": add,
    "patches": patches, "patches_cpp": patches_cpp, "patch_norm": patch_norm, "q_of_qkv": q_of_qkv,
    "kv_of_qkv": kv_of_qkv, "jax_conv": jax_conv, "jax_heads_in": jax_heads_in, "jax_heads_bias": jax_heads_bias,
    "jax_heads_out": jax_heads_out,
}

# --------------------------------------------------------------------------------------------------------------
# Rules and formats


@dataclass(frozen=True)
class Rule:
    """``ours`` (a vitkit key) is ``fn(*theirs)``. ``{i}`` stands for the block index, other ``{name}``s for
    the format's placeholders. A rule applies when all of ``theirs`` and ``when`` are present and none of
    ``unless``; the first rule that applies to a key wins, so alternatives are listed in order of preference.
    ``fn`` returning None drops the key (an empty token). ``whole``: ``fn`` is a user's callable that receives
    the source's whole state dict (unwrapped, prefix stripped; and the block index for a ``{i}`` key) and
    returns the tensor; the tensors it reads count as placed, and ``theirs`` is empty."""

    ours: str
    theirs: tuple[str, ...]
    fn: Callable[..., Tensor | None] = same
    when: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    whole: bool = False


def wb(ours: str, *theirs: str, fn: Callable[..., Tensor] = same, **conditions) -> list[Rule]:
    """The weight and the bias of one module (several modules concatenated when ``theirs`` has more)."""
    return [Rule(f"{ours}.{p}", tuple(f"{t}.{p}" for t in theirs), fn, **conditions) for p in ("weight", "bias")]


@dataclass(frozen=True)
class Assume:
    """A fact the weights cannot tell: ``field`` becomes ``value`` unless the source (a config file, a live
    module) or the caller says otherwise, and loading warns with ``why``, one clause naming what could not be
    inferred and how to say it. A callable ``value`` is computed from the converted state dict; ``test``
    (of the source's own keys) limits the assumption to some files."""

    field: str
    value: Any
    why: str
    test: Callable[[dict], bool] | None = None


@dataclass(frozen=True)
class Require:
    """A fact the weights cannot tell and no default may stand in for, because the keys are also those of a
    model that computes something else (e.g. timm's RoPE models, whose rotary embedding is not in their weights):
    when ``test`` (of the source's own keys) holds, the source or the caller must say one of ``fields``, else
    loading stops with ``why`` (one clause: what the keys could be, and what to pass). No ``fields``: a layout
    vitkit cannot compute at all, refused with ``why`` (what it has that vitkit lacks)."""

    fields: tuple[str, ...]
    why: str
    test: Callable[[dict], bool]


@dataclass(frozen=True)
class Profile:
    """What a model family implies beyond its keys: config ``defaults`` (documented facts, silent),
    assumptions (warned), and the preprocessing it was trained with (mean, std, interpolation, crop_pct,
    crop_mode). It applies when the converted state dict has every ``when`` key and no ``unless`` key; a
    format's first matching profile wins."""

    family: str
    when: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    defaults: dict = field(default_factory=dict)
    assume: tuple[Assume, ...] = ()
    preprocess: dict | None = None
    test: Callable[[dict], bool] | None = None

    def matches(self, state: dict) -> bool:
        return (all(k in state for k in self.when) and not any(k in state for k in self.unless)
                and (self.test is None or self.test(state)))


@dataclass(frozen=True)
class Format:
    """How one library stores a ViT.

    ``markers`` are keys (``*`` matches anything) that all exist, after one of ``prefixes`` is stripped, only
    in this format (and ``unless`` keys that none of its files has). ``placeholders`` name parts of keys that vary between files, each found by a regex with
    one group (e.g. the attribute holding an ``nn.TransformerEncoder``). Keys that no rule consumes keep
    their names, so timm's table is nearly empty and a foreign format's leftovers show up in the load error.
    ``scoped_prefix``: keys outside the stripped prefix belong to other models (a text tower) and are
    dropped. ``renames`` (regex, replacement) apply first; ``ignore`` (regexes) drops tensors that do not
    change the outputs; ``pre_logits`` is the prefix of an optional representation layer vitkit does not
    have, ``foreign_head`` that of a classifier on other features than vitkit's pooling (both are dropped and
    the head starts afresh, with a warning). ``defaults`` are what the library implies; ``profiles`` what each model family in it implies;
    ``require`` the facts a caller must give when the keys are ambiguous; ``facts`` computes what only the raw
    layout shows (heads, rotary embedding settings) from the keys after ``renames``, or raises one
    CheckpointError when they follow no scheme vitkit computes.
    """

    name: str
    markers: tuple[str, ...]
    rules: tuple[Rule, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    prefixes: tuple[str, ...] = ()
    scoped_prefix: bool = False
    placeholders: dict[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    pre_logits: str | None = None
    foreign_head: str | None = None  # a classifier vitkit's head cannot reproduce: dropped, a new one starts
    unless: tuple[str, ...] = ()  # keys that rule the format out
    scan: bool = False  # JAX: Transformer/encoderblock/... tensors carry a leading depth axis
    facts: Callable[[dict], dict] | None = None
    defaults: dict = field(default_factory=dict)
    assume: tuple[Assume, ...] = ()
    require: tuple[Require, ...] = ()
    profiles: tuple[Profile, ...] = ()
    label: str = ""  # how messages name the format
    doc: str = ""  # what docs/formats.md says of it beyond the table: what it drops, what it computes its own way

    def profile(self, state: dict) -> Profile:
        return next((p for p in self.profiles if p.matches(state)), Profile(family=""))


# --------------------------------------------------------------------------------------------------------------
# A user's own layout


_CALL = re.compile(r"^\s*(\w+)\((.*)\)\s*$")


def custom_format(rules) -> Format:
    """A :class:`Format` from a user's table: a ``Format``; a list of :class:`Rule`; or a mapping
    ``{vitkit key: theirs}`` where ``theirs`` is one key (renamed), a tuple/list of keys (concatenated along
    the first axis, e.g. separate q, k, v into the fused qkv), ``"transform(key, ...)"`` with a name of
    :data:`TRANSFORMS` (``patches``, ``patches_cpp``, ``token``, ``pos``, ``transpose``, ``zeros`` ...), or a
    callable ``fn(state)`` (``fn(state, i)`` for a ``{i}`` key) of the source's whole state dict returning the
    tensor (folding two Linears, scaling, slicing). ``{i}`` stands for the block index on both sides. Keys the
    table does not name keep theirs."""
    if isinstance(rules, Format):
        return rules
    if isinstance(rules, Mapping):
        rules = [_rule(ours, theirs) for ours, theirs in rules.items()]
    rules = tuple(rules)
    bad = [r for r in rules if not isinstance(r, Rule)]
    if bad:
        raise ConfigError(f"rules= takes a mapping {{vitkit key: their key(s)}}, a list of Rule or a Format; "
                          f"got a {type(bad[0]).__name__} in the list")
    for r in rules:
        if "?" in r.ours:
            raise ConfigError(f"rules= entry {r.ours!r} is still a placeholder: replace it with the vitkit key "
                              "that tensor is (docs/formats.md lists vitkit's keys)")
    return Format(name="custom", markers=(), rules=rules, label="rules= table")


def extend_format(base: Format, rules) -> Format:
    """``base`` with a user's table (see :func:`custom_format`) in front: a rule for a vitkit key replaces the
    layout's rule for that key, and the layout still places everything else (the tensors a user's rule reads
    stay available to the layout's other rules)."""
    extra = custom_format(rules)
    if extra is base or not isinstance(rules, (Mapping, list, tuple)):
        return extra  # a Format given as rules= is a complete layout
    return replace(base, rules=extra.rules + base.rules, label=f"{base.label or base.name} + rules=")


def _rule(ours: str, theirs) -> Rule:
    if isinstance(theirs, Rule):
        return theirs
    if callable(theirs):
        return Rule(ours, (), theirs, whole=True)
    if isinstance(theirs, (tuple, list)) and theirs and all(isinstance(t, str) for t in theirs):
        return Rule(ours, tuple(theirs), cat if len(theirs) > 1 else same)
    if isinstance(theirs, str):
        call = _CALL.match(theirs)
        if not call:
            return Rule(ours, (theirs.strip(),))
        name, args = call.group(1), [a.strip() for a in call.group(2).split(",") if a.strip()]
        if name not in TRANSFORMS:
            raise ConfigError(f"rules= entry {ours!r} names an unknown transform {name!r}; expected one of "
                              f"{', '.join(TRANSFORMS)}")
        if not args:
            raise ConfigError(f"rules= entry {ours!r} gives transform {name!r} no key to read")
        return Rule(ours, tuple(args), TRANSFORMS[name])
    raise ConfigError(f"rules= entry {ours!r} must be a key, a tuple of keys, 'transform(key, ...)' or a "
                      f"callable of the state dict, got {theirs!r}")


def heads_of(dim_head: int) -> Callable[[dict], int]:
    """``num_heads = D // dim_head`` of a converted state dict (the value of a default or an assumption)."""
    def heads(state: dict) -> int:
        return max(1, state["patch_embed.proj.weight"].shape[0] // dim_head)
    heads.__name__ = f"D // {dim_head}"
    return heads
