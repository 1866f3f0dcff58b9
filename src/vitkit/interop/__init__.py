"""Other libraries' ViT weights in vitkit's terms, exactly: a state dict in vitkit's (timm's) keys, the
:class:`ViTConfig` that computes what the source computes, and the preprocessing the model was trained with.
:func:`vitkit.pretrained.load` builds the model from them; nothing here builds a model (vitkit's own
files take a shorter road there: :func:`vitkit.checkpoint.read_own`).

:func:`load_pretrained` takes a file (``.safetensors``, ``.pth``/``.bin``, OpenAI's TorchScript ``.pt``,
``.npz``), a Hugging Face / timm / open_clip model folder, a vitkit run folder, a state dict, or a live timm /
transformers / torchvision / open_clip / vit-pytorch / ``nn.TransformerEncoder`` model. It

1. reads the tensors and whatever the source says about its architecture (``config.json``,
   ``open_clip_config.json``, the live modules: heads, eps, activation, pooling ...),
2. finds the format by its keys (docs/formats.md lists them) and renames the tensors to vitkit's keys with
   that format's declarative table (:data:`FORMATS`), which a caller's ``rules=`` extend or replace,
3. infers the :class:`ViTConfig` from the shapes, the source's description and the caller's overrides; what
   none of them tells takes the family's documented default, with a warning naming it,
4. resamples the position embedding for another ``img_size`` and re-initialises the head for another
   ``num_classes`` (with a warning), and
5. hands them to :mod:`vitkit.pretrained`, whose model raises one :class:`CheckpointError` listing every missing, unexpected or
   mis-shaped tensor.

Numerics follow the source: Hugging Face models keep their ``layer_norm_eps`` (1e-12 by default), JAX
checkpoints default to the tanh GELU that flax computes (pass ``act="gelu"`` to reproduce timm's port).
"""

from __future__ import annotations

import warnings

from ..checkpoint import Pretrained, without_head
from ..compat import apply_aliases
from ..errors import CheckpointError, ConfigError
from .architecture import infer_config, representation_layer
from .catalog import FORMATS, SOURCE_ALIASES
from .convert import convert_state_dict, source_keys, unplaced_keys
from .placement import choose_format, detect_format, unplaced_error
from .rules import TRANSFORMS, Assume, Format, Profile, Rule, custom_format, extend_format
from .sources import Source, read_source
from .support import SUPPORT, formats_markdown

__all__ = ["Pretrained", "load_pretrained", "read_source", "Source", "detect_format", "convert_state_dict",
           "infer_config", "FORMATS", "Format", "Rule", "Profile", "Assume", "TRANSFORMS", "custom_format",
           "extend_format", "SUPPORT", "formats_markdown"]


# --------------------------------------------------------------------------------------------------------------
# The entry point: read -> convert -> assume -> infer -> adapt


def load_pretrained(src, source: str = "auto", num_classes: int | None = None, img_size=None, rules=None,
                    **overrides) -> Pretrained:
    """Read ``src`` (see :meth:`vitkit.VisionTransformer.from_pretrained`) and convert it to vitkit's keys and
    architecture. ``source`` forces the format (a name of :data:`SOURCE_ALIASES`); ``rules`` (see
    :func:`custom_format`) adds to and overrides what the detected or forced layout places, so only the tensors
    no layout places need a rule; with no layout found, or ``source='rules'``, the table alone is the layout.
    ``overrides`` are ViTConfig fields, e.g. ``num_heads``, ``act``, ``norm_style`` for facts the weights cannot
    tell, ``drop_path_rate`` for fine-tuning. A head for another ``num_classes`` starts fresh (with a warning)."""
    if source not in SOURCE_ALIASES:
        raise ConfigError(f"unknown weights source {source!r}; expected one of: {', '.join(SOURCE_ALIASES)}")
    read = read_source(src)
    spec = choose_format(read, source, rules)
    state, pre_logits, foreign, facts = _convert(read, spec)
    profile = spec.profile(state)
    said = set(apply_aliases(dict(overrides))) | ({"img_size"} if img_size is not None else set())
    hints = _assume(read, spec, profile, state, facts, said)
    found = _infer(read, spec, state, pre_logits, foreign, hints, overrides, img_size)
    found.preprocess = _preprocess(read, profile)
    return found.adapted(num_classes, img_size, stacklevel=3)


def _convert(read: Source, spec: Format) -> tuple[dict, dict, dict, dict]:
    """Step 2: the source's tensors in vitkit's keys, as (state, the representation layer's tensors, a
    classifier on other features than vitkit's pooled token, facts the table found). Tensors no rule places
    are one CheckpointError (a rotary embedding's, with its own sentence)."""
    state, pre_logits, facts = convert_state_dict(read.state, spec)
    foreign = {k: v for k, v in state.items() if spec.foreign_head and k.startswith(spec.foreign_head)}
    state = {k: v for k, v in state.items() if k not in foreign}
    lost = unplaced_keys(state)
    rope = [k for k in lost if "rope" in k.lower() or k.endswith(("periods", "inv_freq"))]
    if rope:
        raise CheckpointError(f"{read.name} holds the tensors of a rotary position embedding ({', '.join(rope[:3])}) "
                              "that vitkit does not compute; it was not loaded")
    if lost:
        raise unplaced_error(read.name, spec, lost, state, read.state)
    return state, pre_logits, foreign, facts


def _assume(read: Source, spec: Format, profile: Profile, state: dict, facts: dict, said: set) -> dict:
    """Step 3: the architecture hints (the format's and the family's defaults, the table's facts, the source's
    own words), refusing what cannot load as it is unless the caller ``said`` it, and taking each documented
    assumption the source and the caller leave open (one warning names them)."""
    hints = {**spec.defaults, **profile.defaults, **facts, **read.hints}
    said = said | set(hints)
    raw = source_keys(read.state, spec) if spec.require or any(a.test for a in spec.assume + profile.assume) else {}
    for need in spec.require:  # the source's own keys and vitkit's, as converted
        if need.test({**raw, **state}) and not any(f in said for f in need.fields):
            raise CheckpointError(f"{read.name} cannot be loaded as it is: {need.why}")
    assumed = [a for a in spec.assume + profile.assume
               if a.field not in said and (a.test is None or a.test(raw))]
    hints.update({a.field: a.value for a in assumed})
    hints = {k: v(state) if callable(v) else v for k, v in hints.items()}
    if assumed:
        warnings.warn(f"{read.name}: " + "; ".join(a.why for a in assumed), stacklevel=4)
    return hints


def _infer(read: Source, spec: Format, state: dict, pre_logits: dict, foreign: dict, hints: dict, overrides: dict,
           img_size) -> Pretrained:
    """Step 4: the checkpoint's own architecture from the shapes, the hints and the caller's ``overrides``,
    with the representation layer placed and a foreign classifier dropped (its head starts fresh)."""
    if pre_logits:  # the representation layer: head(tanh(pre_logits.fc(x))) (the ViT paper's in21k models)
        state.update(representation_layer(pre_logits, spec.pre_logits))
        hints.setdefault("head_act", "tanh")
    if foreign:  # e.g. a classifier on the mean of un-normed tokens: keep the backbone, start a new head
        hints.setdefault("num_classes", next(iter(foreign.values())).shape[0])
        state = without_head(state)
        warnings.warn(f"{read.name} has a classifier ({spec.foreign_head}*) on other features than vitkit's "
                      "pooled token; it was dropped and a new head starts from scratch", stacklevel=4)
    cfg = infer_config(state, hints, overrides, img_size)
    return Pretrained(cfg, state, read.name, bool(foreign), spec.name, classes=None if foreign else read.classes,
                      metadata=read.metadata)


def _preprocess(read: Source, profile: Profile) -> dict | None:
    """How the source's images were prepared: its own words, else its family's (with a warning for a model
    folder, whose files should have said)."""
    preprocess = read.preprocess or (dict(profile.preprocess) if profile.preprocess else None)
    if read.folder and read.preprocess is None and preprocess is not None:  # files and modules never say
        warnings.warn(f"{read.name} does not say how its images were prepared; assuming {profile.family}'s "
                      f"(mean {_short(preprocess['mean'])}, std {_short(preprocess['std'])}, "
                      f"{preprocess['interpolation']}, crop_pct {preprocess['crop_pct']:.3g}, "
                      f"{preprocess.get('crop_mode', 'center')}); set data.mean/std/interpolation/crop_pct if "
                      "its training did otherwise", stacklevel=4)
    return preprocess


def _short(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"
