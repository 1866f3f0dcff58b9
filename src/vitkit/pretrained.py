"""A model with the weights of a source: ``from_pretrained`` and ``create_model`` (timm's names).

The road is short and the same for every source: :func:`vitkit.hub.resolve` turns a Hub name into a folder in
the cache, then vitkit's own weights (a run, ``RUN/checkpoints/best``, a vitkit ``.safetensors`` file, a live
vitkit model) are read as saved by :func:`vitkit.checkpoint.read_own`, with no key table, and any other
library's go through :func:`vitkit.interop.load_pretrained` (read, convert, assume, infer); both end in one
:class:`~vitkit.checkpoint.Pretrained`, adapted to the caller's ``num_classes`` and ``img_size``, which
:func:`load` builds as ``VisionTransformer(config)`` and fills with ``load_state_dict``. The model module
defines the model only; this one is where files become models.
"""

from __future__ import annotations

from . import hub, interop
from .checkpoint import Pretrained, check_state_dict, read_own
from .errors import ConfigError
from .model import VisionTransformer
from .presets import get_preset


def read(src, source: str = "auto", num_classes: int | None = None, img_size=None, rules=None,
         **overrides) -> Pretrained:
    """The weights of ``src`` (a path, state dict or live model; no Hub name) ready for a model: vitkit's own
    directly, unless ``source`` names another layout or ``rules=`` asks for a key table; every other source
    through :func:`vitkit.interop.load_pretrained`. A head for another ``num_classes`` starts fresh."""
    own = read_own(src, overrides) if source in ("auto", "vitkit") and rules is None else None
    if own is not None:
        return own.adapted(num_classes, img_size, stacklevel=3)
    return interop.load_pretrained(src, source, num_classes, img_size, rules=rules, **overrides)


def load(src, source: str = "auto", num_classes: int | None = None, img_size=None, *, arch: str | None = None,
         **overrides) -> tuple[VisionTransformer, Pretrained]:
    """(the model, eval mode, the record it was built from) of :func:`from_pretrained`'s arguments: the record
    keeps what the model does not (a vitkit file's metadata), for :class:`vitkit.predictor.Predictor`."""
    if arch is not None:
        get_preset(hub.parse_name(arch)[0])  # an unknown name is one sentence, with "did you mean"
    named = hub.named_architecture(arch if arch is not None else src)  # a timm name fixes the architecture
    named_size = named.pop("img_size", None)
    img_size, overrides = named_size if img_size is None else img_size, {**named, **overrides}
    found = read(hub.resolve(src), source, num_classes, img_size, **overrides)
    model = VisionTransformer(found.config)
    state = found.state_for(model)
    check_state_dict(model, state, found.label)
    model.load_state_dict(state)
    # How the source's images were prepared (mean, std, interpolation, crop_pct, crop_mode), or None.
    model.pretrained_preprocess = found.preprocess
    model.pretrained_classes = found.classes  # the names of the head's outputs, when the source has them
    return model.eval(), found


def from_pretrained(src, source: str = "auto", num_classes: int | None = None, img_size=None, *,
                    arch: str | None = None, **overrides) -> VisionTransformer:
    """A model (eval mode) with the weights of ``src``, computing what the source computes.

    ``src``: a ``.safetensors`` / ``.pth`` / ``.bin`` / ``.npz`` file, a Hugging Face model folder, a vitkit
    run folder or ``run/checkpoints/best``, a state dict, or a live timm / transformers / torchvision /
    vitkit model, or a Hub name: ``hf-hub:org/name[@revision]`` or timm's tagged name
    (``vit_small_patch16_224.augreg_in21k``), downloaded through ``huggingface_hub`` (its cache,
    ``HF_ENDPOINT``, safetensors before pickles); a timm name also fixes the architecture, as
    :func:`create_model` does (``..._clip_quickgelu_224.openai``: QuickGELU). ``source`` forces the format
    ('timm', 'hf', 'torchvision', 'jax', 'vitkit'); 'auto' detects it. ``num_classes`` other than the
    checkpoint's re-initialises the head (with a warning); ``img_size`` other than the checkpoint's resamples
    the position embedding. ``overrides`` are ViTConfig fields (see :func:`vitkit.interop.load_pretrained`);
    ``arch`` names the preset the weights are of (``arch="vit_small_patch16_dinov3"`` for a bare timm state
    dict), for what the keys cannot tell (a rotary embedding is in no timm state dict). A file that does not
    fit is one CheckpointError listing every missing, unexpected or mis-shaped tensor.
    """
    return load(src, source, num_classes, img_size, arch=arch, **overrides)[0]


def create_model(name: str, pretrained: bool = False, **overrides) -> VisionTransformer:
    """A model by timm's name, e.g. ``create_model("vit_base_patch16_224", num_classes=10, img_size=32)``.

    ``pretrained=True`` loads the Hub weights of the name, as timm does: a tagged name
    (``vit_small_patch16_224.augreg_in21k``) its tag, an untagged one timm's default tag, and
    ``hf-hub:org/name`` that repository. ``overrides`` are ViTConfig fields (``num_classes`` other than the
    weights' re-initialises the head; ``img_size`` resamples the position embedding).
    """
    arch, _ = hub.parse_name(name)
    if arch.startswith(hub.HUB_PREFIX):
        if not pretrained:
            raise ConfigError(f"{name!r} names weights on the Hub, not an architecture; "
                              "pass pretrained=True, or an architecture name such as 'vit_base_patch16_224'")
        return from_pretrained(name, **overrides)
    if not pretrained:
        return VisionTransformer(get_preset(arch, **overrides))
    # the weights of the name's repository, built as the name says (an untagged name: timm's default tag)
    return from_pretrained(hub.pretrained_source(name), **{**hub.named_architecture(arch), **overrides})
