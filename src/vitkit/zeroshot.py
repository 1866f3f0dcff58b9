"""Zero-shot classifiers: a CLIP or SigLIP image tower whose head holds its classes' text embeddings.

For images x, class names c_1..c_C and prompt templates t_1..t_K::

    T[c] = n( mean_k n( text(t_k(c)) ) )            (C, E): one unit vector per class
    logits(x) = s * n( P f(x) ) @ T^T               (B, C)

with n(v) = v / ||v||, f(x) the pooled image feature (B, D), P (E, D) the image projection (CLIP; none for a
SigLIP tower, whose embedding is its attention-pooled feature: P = I, E = D) and s the logit scale.

This is open_clip's computation: ``zero_shot_classifier.build_zero_shot_classifier`` builds T (as its
transpose, (E, C)) by ``encode_text(normalize=True)``, the mean over templates and a second normalisation;
``CLIP.encode_image(normalize=True)`` is n(P f(x)); ``CLIP.get_logits`` scales by ``logit_scale.exp()`` (the
parameter holds log s), and open_clip_train's zero-shot evaluation by a fixed 100, the value CLIP's training
clamps s to and ends at.

In vitkit's model the projection is ``pre_logits.fc`` (``head_hidden_dim=E``, ``head_act="identity"``,
``head_hidden_bias=False``), ``head_l2norm=True`` is n( ), and ``head`` is a bias-free Linear(E, C) whose
weight is s * T, so the checkpoint predicts, serves and evaluates like any other.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from .config import ViTConfig
from .errors import CheckpointError, ConfigError, DataError

DEFAULT_LOGIT_SCALE = 100.0  # exp(ln 100): where CLIP's learned scale ends (its clamp); open_clip's eval uses 100
EMBEDDINGS_KEY = "text_embeddings"  # the tensor read from a .safetensors file that holds more than one
TEMPLATE_SETS = ("openai", "simple")  # open_clip.zero_shot_metadata's OPENAI_ / SIMPLE_IMAGENET_TEMPLATES


def class_weights(embeddings: torch.Tensor) -> torch.Tensor:
    """Text embeddings (C, E), or (C, K, E) for K templates per class -> T (C, E), float32: each embedding
    normalised, averaged over the templates, normalised again (open_clip's ``build_zero_shot_classifier``)."""
    e = nn.functional.normalize(embeddings.float(), dim=-1)
    if e.ndim == 3:
        e = e.mean(dim=1)  # (C, E)
    return e / e.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------------------------------
# The image tower


def image_projection(model: nn.Module, name: str) -> tuple[torch.Tensor | None, int]:
    """(P, E) of a model that gives an image embedding: P (E, D) the projection (None: the pooled feature is
    the embedding) and E the embedding's width. A head that is a classifier rather than an embedding is one
    CheckpointError."""
    cfg: ViTConfig = model.config
    if cfg.distilled:
        raise CheckpointError(f"{name} has a distillation head (DeiT), so it is a classifier, not an image tower "
                              "of a CLIP model")
    if cfg.head_l2norm:  # already a zero-shot checkpoint: its projection is in pre_logits
        if cfg.head_hidden_dim is None:
            return None, cfg.pooled_dim
        if cfg.head_act == "identity" and not cfg.head_hidden_bias:
            return model.pre_logits.fc.weight.detach(), cfg.head_hidden_dim
    if cfg.head_hidden_dim is not None:
        raise CheckpointError(f"{name} has a hidden layer in its head ({cfg.head_act}), so it is a trained "
                              "classifier, not the image tower of a CLIP model")
    if cfg.num_classes == 0:  # no projection (SigLIP): the pooled feature is the embedding
        return None, cfg.pooled_dim
    bias = getattr(model.head, "bias", None)
    if bias is not None and bool(bias.detach().ne(0).any()):
        raise CheckpointError(f"{name} has a head of {cfg.num_classes} outputs with a bias, so it is a trained "
                              "classifier, not the image projection of a CLIP model (which has none)")
    return model.head.weight.detach(), cfg.num_classes


def zero_shot_model(model: nn.Module, weights: torch.Tensor, logit_scale: float, name: str = "the checkpoint"):
    """A copy of the image tower ``model`` whose head is s * T (``weights`` T (C, E), unit rows; ``logit_scale``
    s): logits = s * n(P f) @ T^T, the projection P moved to ``pre_logits.fc``."""
    from .model import VisionTransformer

    projection, width = image_projection(model, name)
    if weights.shape[1] != width:
        head = f" (or its head is a {width}-class classifier, not a projection)" \
            if projection is not None and not model.config.head_l2norm else ""
        raise DataError(f"the text embeddings are {weights.shape[1]} wide but the image embedding of {name} is "
                        f"{width} wide: they come from different models{head}")
    cfg = model.config.replace(num_classes=weights.shape[0], head_bias=False, head_l2norm=True,
                               head_hidden_dim=None if projection is None else width,
                               head_act="tanh" if projection is None else "identity",
                               head_hidden_bias=projection is None)
    out = VisionTransformer(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("head.", "pre_logits."))}
    if projection is not None:
        state["pre_logits.fc.weight"] = projection  # (E, D)
    state["head.weight"] = logit_scale * weights.float()  # (C, E)
    out.load_state_dict(state)
    return out.eval()


def stored_logit_scale(state: dict) -> float | None:
    """exp(logit_scale) of a whole CLIP checkpoint (open_clip's and Hugging Face's keep the log of the scale,
    ``logit_scale``, beside the towers), or None when the file holds no text side."""
    for d in (state, state.get("state_dict"), state.get("model")):
        if not isinstance(d, dict):
            continue
        for key in ("logit_scale", "module.logit_scale"):
            v = d.get(key)
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                return float(v.float().exp())
    return None


def check_logit_scale(s: float) -> float:
    if not (math.isfinite(s) and s > 0):
        raise ConfigError(f"--logit-scale must be a positive number (CLIP's is 100), got {s}")
    return float(s)


# ------------------------------------------------------------------------------------------------------------
# Files


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, stripped, without the blank lines at its end; one sentence for a file
    that cannot be read, holds nothing, or has a blank line among its entries."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"{what} file {path} is empty; it needs one entry a line")
    blank = [i for i, line in enumerate(lines, 1) if not line]
    if blank:
        raise DataError(f"{what} file {path} has an empty line (line {blank[0]}); it needs one entry a line")
    return lines


def read_class_names(path: str | Path) -> list[str]:
    """One class name a line, each once."""
    names = read_lines(path, "class names")
    first: dict[str, int] = {}
    for i, n in enumerate(names, 1):
        if n in first:
            raise DataError(f"class names file {path} names {n!r} twice (lines {first[n]} and {i}); each class "
                            "needs its own name")
        first[n] = i
    return names


def read_templates(spec: str) -> list[str]:
    """``openai`` (open_clip's 80 OPENAI_IMAGENET_TEMPLATES), ``simple`` (its 7 SIMPLE_IMAGENET_TEMPLATES) or a
    file of one template a line with ``{}`` where the class name goes (``a photo of a {}.``)."""
    if spec in TEMPLATE_SETS and not Path(spec).is_file():
        from open_clip import zero_shot_metadata as z  # needs the extra; callers import open_clip first
        fns = z.OPENAI_IMAGENET_TEMPLATES if spec == "openai" else z.SIMPLE_IMAGENET_TEMPLATES
        return [fn("{}") for fn in fns]
    templates = read_lines(spec, "templates")
    for i, t in enumerate(templates, 1):
        try:
            ok = "{}" in t and t.format("x") is not None
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"templates file {spec}: line {i} ({t!r}) needs one {{}} where the class name goes "
                            "and no other braces, e.g. 'a photo of a {}.'")
    return templates


def read_text_embeddings(path: str | Path) -> torch.Tensor:
    """A ``.npy`` array or ``.safetensors`` tensor (its only tensor, else the one named ``text_embeddings``) of
    shape (C, E) or (C, K, E), float32; one sentence for an unreadable file, another shape or a non-finite value."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text embeddings file {path} does not exist")
    if path.suffix.lower() == ".npy":
        import numpy as np
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError / OSError / UnpicklingError for foreign files
            raise DataError(f"text embeddings file {path} is not a readable .npy array ({e})") from None
        if array.dtype.kind not in "fiu":
            raise DataError(f"text embeddings file {path} holds {array.dtype} values, expected numbers")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    elif path.suffix.lower() == ".safetensors":
        tensor = _safetensors_tensor(path)
    else:
        raise DataError(f"text embeddings file {path} must be a .npy or .safetensors file")
    if tensor.ndim not in (2, 3) or 0 in tensor.shape:
        raise DataError(f"text embeddings in {path} have the shape {tuple(tensor.shape)}; expected (classes, width) "
                        "or (classes, templates, width)")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise DataError(f"text embeddings in {path} hold NaN or infinite values")
    if (tensor.norm(dim=-1) == 0).any():
        raise DataError(f"text embeddings in {path} hold an all-zero embedding, which has no direction")
    return tensor


def _safetensors_tensor(path: Path) -> torch.Tensor:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            key = keys[0] if len(keys) == 1 else EMBEDDINGS_KEY if EMBEDDINGS_KEY in keys else None
            if key is None:
                raise DataError(f"text embeddings file {path} holds {len(keys)} tensors ({', '.join(keys[:5])}) and "
                                f"none named {EMBEDDINGS_KEY!r}; save one tensor, or name it so")
            return f.get_tensor(key)
    except DataError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise DataError(f"text embeddings file {path} is truncated or not a safetensors file ({e})") from None


def check_rows(embeddings: torch.Tensor, classes: list[str], path) -> None:
    """One embedding (row) per class name, with a hint when the file is open_clip's (E, C) classifier."""
    rows = embeddings.shape[0]
    if rows == len(classes):
        return
    hint = "; it looks transposed (open_clip's build_zero_shot_classifier returns (width, classes): save its .T)" \
        if embeddings.ndim == 2 and embeddings.shape[1] == len(classes) else ""
    raise DataError(f"text embeddings file {path} has {rows} rows but the class names file names {len(classes)} "
                    f"classes; they need one row per class, in the same order{hint}")


# ------------------------------------------------------------------------------------------------------------
# open_clip's text tower


def parse_text_tower(spec: str) -> tuple[str, str | None]:
    """``open_clip:ARCH[:PRETRAINED]`` (a built-in architecture, with a tag or a weights file),
    ``open_clip:local-dir:FOLDER`` or ``open_clip:hf-hub:ORG/NAME`` -> open_clip's (model_name, pretrained)."""
    library, _, rest = spec.partition(":")
    if library != "open_clip" or not rest:
        raise ConfigError(f"--text-tower takes open_clip:ARCH[:PRETRAINED_OR_FILE], open_clip:local-dir:FOLDER or "
                          f"open_clip:hf-hub:ORG/NAME, got {spec!r}")
    if rest.startswith(("local-dir:", "hf-hub:")):
        return rest, None
    arch, _, pretrained = rest.partition(":")
    return arch, pretrained or None


def import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise ConfigError("--text-tower needs open_clip, which is not installed: pip install 'vitkit[clip]' "
                          "(or pass --text-embeddings)") from None
    return open_clip


def open_clip_text_tower(spec: str, device: torch.device):
    """(model, tokenizer) of an open_clip model with its weights (``require_pretrained``: random text
    embeddings classify nothing); one sentence when open_clip cannot load it."""
    open_clip = import_open_clip()
    name, pretrained = parse_text_tower(spec)
    if pretrained is None and not name.startswith(("local-dir:", "hf-hub:")):
        raise ConfigError(f"--text-tower {spec}: say which weights, open_clip:{name}:TAG_OR_FILE (a model "
                          "without them has random text embeddings)")
    logging.disable(logging.ERROR)  # open_clip logs the failure it then raises: it is said once, below
    try:
        model = open_clip.create_model(name, pretrained=pretrained, device=device, require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # open_clip raises RuntimeError / ValueError / FileNotFoundError with its own text
        first = str(e).strip().splitlines()[0].split(". Available")[0][:300] if str(e).strip() else type(e).__name__
        raise ConfigError(f"open_clip could not load the text tower {spec} ({first})") from None
    finally:
        logging.disable(logging.NOTSET)
    return model.eval(), tokenizer


@torch.no_grad()
def open_clip_class_weights(model, tokenizer, classes: list[str], templates: list[str], device: torch.device,
                            batch_classes: int = 10) -> torch.Tensor:
    """T (C, E) from open_clip's text tower: ``encode_text`` of every template filled with every class name,
    ``batch_classes`` classes at a time, reduced by :func:`class_weights`."""
    out = []
    for i in range(0, len(classes), batch_classes):
        batch = classes[i:i + batch_classes]
        texts = [t.format(c) for c in batch for t in templates]
        emb = model.encode_text(tokenizer(texts).to(device))  # (c * K, E)
        out.append(class_weights(emb.reshape(len(batch), len(templates), -1)).cpu())
    return torch.cat(out)
