"""Load other libraries' ViT weights into a vitkit :class:`~vitkit.model.VisionTransformer`, exactly.

One entry point, :func:`from_pretrained`, takes a file (``.safetensors``, ``.pth``/``.bin``, ``.npz``), a
Hugging Face model folder, a vitkit run folder, a state dict, or a live timm / transformers / torchvision
model. It

1. reads the tensors (and whatever the source says about its architecture: heads, norm eps, pooling ...),
2. detects the format by a marker key and renames the tensors to timm's keys (vitkit's own) with that
   format's declarative key table (:data:`FORMATS`),
3. infers the :class:`ViTConfig` from the tensor shapes plus the source's description plus the caller's
   overrides,
4. resamples the position embedding for another ``img_size`` and re-initialises the head for another
   ``num_classes`` (with a warning), and
5. loads the tensors, raising one :class:`CheckpointError` that lists every missing, unexpected or
   mis-shaped tensor.

Numerics follow the source: Hugging Face models keep their ``layer_norm_eps`` (1e-12 by default), JAX
checkpoints default to the tanh GELU that flax computes (pass ``act="gelu"`` to reproduce timm's port).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .config import VARIANTS, ViTConfig, apply_aliases
from .errors import CheckpointError, ConfigError

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------------------
# Tensor transforms used by the key tables (JAX stores kernels as (in, out), torch as (out, in))


def _same(t: Tensor) -> Tensor:
    return t


def _cat(*ts: Tensor) -> Tensor:
    """q, k, v (D, D) or (D,) each -> qkv (3D, D) or (3D,), in q, k, v order (timm's layout)."""
    return torch.cat(ts, dim=0)


def _jax_conv(k: Tensor) -> Tensor:
    return k.permute(3, 2, 0, 1)  # (P, P, C, D) -> (D, C, P, P)


def _jax_dense(k: Tensor) -> Tensor:
    return k.T  # (in, out) -> (out, in)


def _jax_qkv_kernel(*ks: Tensor) -> Tensor:
    return torch.cat([k.flatten(1).T for k in ks], dim=0)  # 3 x (D, H, hd) -> 3 x (H*hd, D) -> (3D, D)


def _jax_qkv_bias(*bs: Tensor) -> Tensor:
    return torch.cat([b.reshape(-1) for b in bs], dim=0)  # 3 x (H, hd) -> (3D,)


def _jax_out_kernel(k: Tensor) -> Tensor:
    return k.flatten(0, 1).T  # (H, hd, D) -> (H*hd, D) -> (D, H*hd)


# --------------------------------------------------------------------------------------------------------------
# Key tables: one per format


@dataclass(frozen=True)
class Rule:
    """``ours`` (a timm/vitkit key) is ``fn(*theirs)``. ``{i}`` stands for the block index; in the JAX table
    ``{mha}``, ``{ln2}`` and ``{mlp}`` stand for the sub-module numbers, which differ between Google's repos."""

    ours: str
    theirs: tuple[str, ...]
    fn: Callable[..., Tensor] = _same


def _wb(ours: str, *theirs: str, fn: Callable[..., Tensor] = _same) -> list[Rule]:
    """The weight and the bias of one module (several modules concatenated when ``theirs`` has more)."""
    return [Rule(f"{ours}.{p}", tuple(f"{t}.{p}" for t in theirs), fn) for p in ("weight", "bias")]


@dataclass(frozen=True)
class Format:
    """How one library stores a ViT.

    ``marker`` is a key only this format has (after a ``prefixes`` entry is stripped); ``blocks`` matches a
    key of block ``i`` (group 1). Keys that no rule consumes keep their names, so timm's table is empty
    (identity) and a foreign format's leftovers show up as "unexpected" in the load error. ``ignore`` lists
    key prefixes dropped silently (they do not change the model's outputs); ``pre_logits`` is the prefix of
    an optional representation layer, which vitkit does not have. ``defaults`` are the config fields the
    format implies when the source does not say.
    """

    name: str
    marker: str
    blocks: str
    rules: tuple[Rule, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()  # regex renames applied first
    prefixes: tuple[str, ...] = ()
    scoped_prefix: bool = False  # True: keys outside the detected prefix are other models' (dropped)
    ignore: tuple[str, ...] = ()
    pre_logits: str | None = None
    defaults: dict = field(default_factory=dict)


TIMM = Format(
    name="timm", marker="patch_embed.proj.weight", blocks=r"blocks\.(\d+)\.",
    renames=((r"^blocks\.(\d+)\.gamma_([12])$", r"blocks.\1.ls\2.gamma"),),  # DeiT III layer scale
    prefixes=("module.",), pre_logits="pre_logits.")

_HF_V4 = "encoder.layer.{i}."  # files on the Hub (transformers 4 names)
_HF_V5 = "layers.{i}."  # live models of transformers >= 5
HF = Format(
    name="hf", marker="embeddings.patch_embeddings.projection.weight", blocks=r"(?:encoder\.layer|layers)\.(\d+)\.",
    rules=tuple([
        *_wb("patch_embed.proj", "embeddings.patch_embeddings.projection"),
        Rule("cls_token", ("embeddings.cls_token",)),
        Rule("pos_embed", ("embeddings.position_embeddings",)),
        *_wb("blocks.{i}.norm1", _HF_V4 + "layernorm_before"),
        *_wb("blocks.{i}.attn.qkv", *(_HF_V4 + f"attention.attention.{n}" for n in ("query", "key", "value")),
             fn=_cat),
        *_wb("blocks.{i}.attn.proj", _HF_V4 + "attention.output.dense"),
        *_wb("blocks.{i}.norm2", _HF_V4 + "layernorm_after"),
        *_wb("blocks.{i}.mlp.fc1", _HF_V4 + "intermediate.dense"),
        *_wb("blocks.{i}.mlp.fc2", _HF_V4 + "output.dense"),
        *_wb("blocks.{i}.norm1", _HF_V5 + "layernorm_before"),
        *_wb("blocks.{i}.attn.qkv", *(_HF_V5 + f"attention.{n}_proj" for n in "qkv"), fn=_cat),
        *_wb("blocks.{i}.attn.proj", _HF_V5 + "attention.o_proj"),
        *_wb("blocks.{i}.norm2", _HF_V5 + "layernorm_after"),
        *_wb("blocks.{i}.mlp.fc1", _HF_V5 + "mlp.fc1"),
        *_wb("blocks.{i}.mlp.fc2", _HF_V5 + "mlp.fc2"),
        *_wb("norm", "layernorm"),
        *_wb("head", "classifier"),
    ]),
    prefixes=("vit.",),
    # ViTModel's tanh pooler feeds no logits (the classifier reads the normed [CLS]); the mask token is for
    # masked image modelling only.
    ignore=("pooler.", "embeddings.mask_token"),
    defaults={"norm_eps": 1e-12})  # HF's default layer_norm_eps

_TV = "encoder.layers.encoder_layer_{i}."
TORCHVISION = Format(
    name="torchvision", marker="conv_proj.weight", blocks=r"encoder\.layers\.encoder_layer_(\d+)\.",
    rules=tuple([
        *_wb("patch_embed.proj", "conv_proj"),
        Rule("cls_token", ("class_token",)),
        Rule("pos_embed", ("encoder.pos_embedding",)),
        *_wb("blocks.{i}.norm1", _TV + "ln_1"),
        Rule("blocks.{i}.attn.qkv.weight", (_TV + "self_attention.in_proj_weight",)),  # q, k, v rows like timm
        Rule("blocks.{i}.attn.qkv.bias", (_TV + "self_attention.in_proj_bias",)),
        *_wb("blocks.{i}.attn.proj", _TV + "self_attention.out_proj"),
        *_wb("blocks.{i}.norm2", _TV + "ln_2"),
        *_wb("blocks.{i}.mlp.fc1", _TV + "mlp.0"),
        *_wb("blocks.{i}.mlp.fc2", _TV + "mlp.3"),
        *_wb("blocks.{i}.mlp.fc1", _TV + "mlp.linear_1"),  # checkpoints older than torchvision 0.13
        *_wb("blocks.{i}.mlp.fc2", _TV + "mlp.linear_2"),
        *_wb("norm", "encoder.ln"),
        *_wb("head", "heads.head"),
    ]),
    prefixes=("module.",), pre_logits="heads.pre_logits.")

_JB = "Transformer/encoderblock_{i}/"
_JA = _JB + "MultiHeadDotProductAttention_{mha}/"
JAX = Format(
    name="jax", marker="embedding/kernel", blocks=r"Transformer/encoderblock_(\d+)/",
    rules=(
        Rule("patch_embed.proj.weight", ("embedding/kernel",), _jax_conv),
        Rule("patch_embed.proj.bias", ("embedding/bias",)),
        Rule("cls_token", ("cls",)),  # (1, 1, D)
        Rule("pos_embed", ("Transformer/posembed_input/pos_embedding",)),  # (1, 1 + N, D), with a CLS slot
        Rule("pos_embed", ("pos_embedding",)),  # big_vision: (1, N, D), added before the CLS is prepended
        Rule("blocks.{i}.norm1.weight", (_JB + "LayerNorm_0/scale",)),
        Rule("blocks.{i}.norm1.bias", (_JB + "LayerNorm_0/bias",)),
        Rule("blocks.{i}.attn.qkv.weight", tuple(_JA + f"{n}/kernel" for n in ("query", "key", "value")),
             _jax_qkv_kernel),
        Rule("blocks.{i}.attn.qkv.bias", tuple(_JA + f"{n}/bias" for n in ("query", "key", "value")),
             _jax_qkv_bias),
        Rule("blocks.{i}.attn.proj.weight", (_JA + "out/kernel",), _jax_out_kernel),
        Rule("blocks.{i}.attn.proj.bias", (_JA + "out/bias",)),
        Rule("blocks.{i}.norm2.weight", (_JB + "LayerNorm_{ln2}/scale",)),
        Rule("blocks.{i}.norm2.bias", (_JB + "LayerNorm_{ln2}/bias",)),
        Rule("blocks.{i}.mlp.fc1.weight", (_JB + "MlpBlock_{mlp}/Dense_0/kernel",), _jax_dense),
        Rule("blocks.{i}.mlp.fc1.bias", (_JB + "MlpBlock_{mlp}/Dense_0/bias",)),
        Rule("blocks.{i}.mlp.fc2.weight", (_JB + "MlpBlock_{mlp}/Dense_1/kernel",), _jax_dense),
        Rule("blocks.{i}.mlp.fc2.bias", (_JB + "MlpBlock_{mlp}/Dense_1/bias",)),
        Rule("norm.weight", ("Transformer/encoder_norm/scale",)),
        Rule("norm.bias", ("Transformer/encoder_norm/bias",)),
        Rule("head.weight", ("head/kernel",), _jax_dense),
        Rule("head.bias", ("head/bias",)),
    ),
    # opt/target/: google-research/vision_transformer; params/: big_vision; params/img/: SigLIP's image tower
    prefixes=("opt/target/", "params/img/", "params/"), scoped_prefix=True, pre_logits="pre_logits/",
    defaults={"act": "gelu_tanh"})  # flax's nn.gelu is the tanh approximation

VITKIT = dataclasses.replace(TIMM, name="vitkit")
FORMATS: dict[str, Format] = {f.name: f for f in (TIMM, HF, TORCHVISION, JAX, VITKIT)}
_SOURCE_ALIASES = {"auto": "auto", "timm": "timm", "vitkit": "vitkit", "hf": "hf", "huggingface": "hf",
                   "transformers": "hf", "torchvision": "torchvision", "jax": "jax", "npz": "jax",
                   "big_vision": "jax"}

# Sub-module numbers of a JAX encoder block: google-research/vision_transformer vs big_vision (as in timm's
# _load_weights: mha_sub, b_sub, ln1_sub = (0, 0, 1) if big_vision else (1, 3, 2)).
_JAX_SUBS_ORIGINAL = {"mha": 1, "ln2": 2, "mlp": 3}
_JAX_SUBS_BIG_VISION = {"mha": 0, "ln2": 1, "mlp": 0}


# --------------------------------------------------------------------------------------------------------------
# Reading a source


@dataclass
class Source:
    """Tensors as found, what the source says about its architecture, and a name for messages."""

    state: dict[str, Any]
    hints: dict[str, Any]
    name: str
    format: str | None = None  # known from the object or file kind; else detected from the keys


def read_source(src: Any) -> Source:
    """Tensors, architecture hints and a display name of a file, folder, state dict or live model."""
    if isinstance(src, (str, Path)):
        return _read_path(Path(src))
    if isinstance(src, dict):
        return Source(dict(src), {}, "the given state dict")
    if isinstance(src, torch.nn.Module):
        return _read_module(src)
    raise CheckpointError(f"cannot load weights from a {type(src).__name__}; expected a file path, a state "
                          "dict or a timm / transformers / torchvision model")


def _read_path(path: Path) -> Source:
    if path.is_dir():
        if (path / "config.json").is_file():  # a Hugging Face model folder
            for name in ("model.safetensors", "pytorch_model.bin"):
                if (path / name).is_file():
                    src = _read_path(path / name)
                    hf_config = json.loads((path / "config.json").read_text())
                    return Source(src.state, _hf_hints(hf_config), str(path), "hf")
            raise CheckpointError(f"Hugging Face folder {path} has no model.safetensors or pytorch_model.bin")
        from .checkpoint import resolve_weights_path
        return _read_path(resolve_weights_path(path))  # a vitkit run folder
    if not path.is_file():
        if path.suffix == "" and path.with_name(path.name + ".safetensors").is_file():  # run/checkpoints/best
            return _read_path(path.with_name(path.name + ".safetensors"))
        raise CheckpointError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return Source(_read_npz(path), {}, str(path), "jax")
    if suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"weights file {path} is truncated or not a safetensors file ({e})") from None
        if "vitkit_config" in header:
            return Source(state, json.loads(header["vitkit_config"]), str(path), "vitkit")
        return Source(state, {}, str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"weights file {path} cannot be read as a PyTorch checkpoint ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"weights file {path} holds a {type(obj).__name__}, expected a state dict")
    return Source(obj, {}, str(path))


def _read_npz(path: Path) -> dict[str, Tensor]:
    import numpy as np
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise CheckpointError(f"weights file {path} is not a readable .npz archive ({e})") from None
    out = {}
    for k, a in arrays.items():
        if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # bfloat16 saved by JAX as raw 2-byte values
            a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        out[k] = torch.from_numpy(np.ascontiguousarray(a))
    return out


def _read_module(m: torch.nn.Module) -> Source:
    """A live model's tensors plus the architecture facts that shapes cannot tell (heads, eps, pooling)."""
    module = type(m).__module__
    name = f"the given {type(m).__name__}"
    state = m.state_dict()
    if isinstance(getattr(m, "config", None), ViTConfig):  # a vitkit model
        return Source(state, m.config.to_dict(), name, "vitkit")
    if module.startswith("timm."):
        return Source(state, _timm_hints(m), name, "timm")
    if module.startswith("transformers."):
        return Source(state, _hf_hints(m.config), name, "hf")
    if module.startswith("torchvision."):
        block = m.encoder.layers[0]
        hints = {"num_heads": block.num_heads, "img_size": m.image_size, "norm_eps": m.encoder.ln.eps}
        return Source(state, hints, name, "torchvision")
    return Source(state, {}, name)


def _timm_hints(m) -> dict:
    pools = {"token": "cls", "avg": "mean"}
    if m.global_pool not in pools:
        raise CheckpointError(f"timm global_pool={m.global_pool!r} is not supported; vitkit pools 'token' "
                              "([CLS]) or 'avg' (mean of patch tokens)")
    block = m.blocks[0]
    img_size = getattr(m.patch_embed, "img_size", None)
    hints = {"num_heads": block.attn.num_heads, "pool": pools[m.global_pool],
             "no_embed_class": bool(getattr(m, "no_embed_class", False)), "norm_eps": block.norm1.eps,
             "act": _act_name(block.mlp.act), "dynamic_img_size": bool(getattr(m, "dynamic_img_size", False))}
    if img_size is not None:
        hints["img_size"] = tuple(img_size)
    if getattr(m, "pos_embed", None) is None:
        hints["pos_embed"] = "none"
    return hints


def _act_name(act: torch.nn.Module) -> str:
    name, approx = type(act).__name__, getattr(act, "approximate", "none")
    if name == "GELU":
        return "gelu_tanh" if approx == "tanh" else "gelu"
    if name in ("GELUTanh", "GELU_tanh"):
        return "gelu_tanh"
    if name == "ReLU":
        return "relu"
    raise CheckpointError(f"activation {name} is not supported; vitkit has GELU (exact or tanh) and ReLU")


def _hf_hints(hf_config) -> dict:
    """Heads, eps, activation and image size from a Hugging Face ViTConfig (object or config.json dict)."""
    c = ViTConfig.from_hf(hf_config)
    return {"num_heads": c.num_heads, "norm_eps": c.norm_eps, "act": c.act, "img_size": c.img_size,
            "qkv_bias": c.qkv_bias}


# --------------------------------------------------------------------------------------------------------------
# Converting the tensors to vitkit's (timm's) keys


def detect_format(state: dict[str, Any]) -> str:
    """The format whose marker key (possibly under one of its prefixes) the state dict has."""
    for fmt in (TIMM, HF, TORCHVISION, JAX):
        if any(f"{p}{fmt.marker}" in state for p in ("", *fmt.prefixes)):
            return fmt.name
    raise CheckpointError("cannot tell the format of these weights: no patch embedding key of timm "
                          "('patch_embed.proj.weight'), Hugging Face, torchvision or JAX was found")


def _unwrap(state: dict) -> dict:
    """Training checkpoints often nest the weights: {'model': ...} or {'state_dict': ...}."""
    for key in ("model", "state_dict", "model_state_dict", "module"):
        if isinstance(state.get(key), dict):
            return _unwrap(state[key])
    return state


def _strip_prefix(state: dict, fmt: Format) -> dict:
    for p in fmt.prefixes:
        if f"{p}{fmt.marker}" in state:
            if fmt.scoped_prefix:
                return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
            return {k[len(p):] if k.startswith(p) else k: v for k, v in state.items()}
    return state


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


def convert_state_dict(state: dict, fmt: str) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """Rename ``state`` (a ``fmt`` checkpoint) to vitkit's keys with the format's table.

    Returns ``(converted, dropped_pre_logits, facts)``: unconsumed keys stay in ``converted`` under their
    own names (the load check reports them), the optional representation layer is split off, and
    ``facts`` holds architecture facts only the raw layout shows (JAX: heads)."""
    spec = FORMATS[fmt]
    state = _strip_prefix(_unwrap(state), spec)
    facts: dict = {}
    fields: dict = {}
    if spec is JAX:
        state = _unscan(state)
        big_vision = any(k.startswith("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/") for k in state)
        fields = _JAX_SUBS_BIG_VISION if big_vision else _JAX_SUBS_ORIGINAL
        q = state.get(f"Transformer/encoderblock_0/MultiHeadDotProductAttention_{fields['mha']}/query/kernel")
        if q is not None and q.ndim == 3:
            facts["num_heads"] = q.shape[1]  # (D, H, hd)
    for pattern, repl in spec.renames:
        state = {re.sub(pattern, repl, k): v for k, v in state.items()}
    pre_logits = {k: v for k, v in state.items() if spec.pre_logits and k.startswith(spec.pre_logits)}
    state = {k: v for k, v in state.items()
             if k not in pre_logits and not any(k.startswith(p) for p in spec.ignore)}
    blocks = {int(m.group(1)) for k in state if (m := re.match(spec.blocks, k))}
    depth = max(blocks) + 1 if blocks else 0
    out, used = {}, set()
    for rule in spec.rules:
        for i in range(depth) if "{i}" in rule.ours else [None]:
            keys = [t.format(i=i, **fields) for t in rule.theirs]
            if all(k in state for k in keys):
                out[rule.ours.format(i=i)] = rule.fn(*(state[k] for k in keys))
                used.update(keys)
    out.update({k: v for k, v in state.items() if k not in used})
    return out, pre_logits, facts


# --------------------------------------------------------------------------------------------------------------
# Architecture from tensors

_HEADS_BY_WIDTH = {dim: heads for dim, _, heads, _ in VARIANTS.values()}  # the paper's variants


def infer_config(state: dict[str, Tensor], hints: dict | None = None, overrides: dict | None = None,
                 img_size=None) -> ViTConfig:
    """The ``ViTConfig`` of a vitkit-keyed state dict: shapes give the sizes; ``hints`` (what the source
    says: heads, eps, pooling, image size) and then ``overrides`` (the caller) win over shape guesses.
    ``img_size`` (the caller's) is taken as the checkpoint's own size only for a position embedding that
    is no square grid plus prefix slots but fits that size (see :func:`_infer_grid`)."""
    hints, overrides = dict(hints or {}), apply_aliases(dict(overrides or {}))
    w = state.get("patch_embed.proj.weight")
    if not isinstance(w, Tensor) or w.ndim != 4:
        raise CheckpointError("the weights have no 4-d patch embedding 'patch_embed.proj.weight' "
                              "(D, C, P, P); is this a plain ViT?")
    dim, chans, patch = w.shape[0], w.shape[1], w.shape[-1]  # (D, C, P, P)
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    fc1 = state.get("blocks.0.mlp.fc1.weight")  # (M, D)
    cls = "cls_token" in state
    regs = state["reg_token"].shape[1] if "reg_token" in state else 0  # (1, R, D)
    fc_norm = "fc_norm.weight" in state
    fields = dict(
        patch_size=patch, in_channels=chans, embed_dim=dim, depth=max(depth, 1),
        mlp_ratio=fc1.shape[0] / dim if fc1 is not None else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in state, class_token=cls, reg_tokens=regs,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        pool="mean" if fc_norm or not cls else "cls", fc_norm=fc_norm,
        final_norm=fc_norm or "norm.weight" in state,
        layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state else None)  # any value: gamma is loaded
    fields.update(hints)
    fields.update(overrides)
    fields.setdefault("num_heads", _HEADS_BY_WIDTH.get(dim))
    if fields["num_heads"] is None:
        raise ConfigError(f"cannot tell the number of attention heads of a width-{dim} model from its weights; "
                          "pass num_heads=...")
    pos = state.get("pos_embed")  # (1, L, D)
    if isinstance(pos, Tensor) and pos.ndim == 3 and fields.get("pos_embed", "learn") == "learn":
        _infer_grid(fields, pos.shape[1], patch, int(fields["class_token"]) + fields["reg_tokens"], img_size)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ViTConfig)})
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; expected ViTConfig fields")
    return ViTConfig(**fields)


def _infer_grid(fields: dict, length: int, patch: int, prefix: int, caller_img_size=None) -> None:
    """Image size and whether the position embedding covers the prefix tokens, from its length L.

    In order: the source's own image size; a square grid after the prefix slots (the usual layout); the
    caller's ``img_size`` if its grid fits L (non-square checkpoints); a square grid without prefix slots
    (big_vision, DeiT III: ``no_embed_class``)."""
    def patches(img_size) -> int:
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        return (h // patch) * (w // patch)

    if "img_size" not in fields and caller_img_size is not None and not _is_square(length - prefix) \
            and length in (patches(caller_img_size), patches(caller_img_size) + prefix):
        fields["img_size"] = caller_img_size
    if "img_size" in fields:
        fields.setdefault("no_embed_class", prefix > 0 and length == patches(fields["img_size"]))
        return
    covers = fields.get("no_embed_class") is not True and prefix > 0 and _is_square(length - prefix)
    if covers:
        n = length - prefix
    elif _is_square(length):
        n = length
    else:
        raise CheckpointError(f"cannot infer the patch grid of a {length}-token position embedding with "
                              f"{prefix} prefix token(s); pass img_size=(height, width) of the checkpoint")
    fields["img_size"] = math.isqrt(n) * patch
    fields.setdefault("no_embed_class", prefix > 0 and not covers)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


# --------------------------------------------------------------------------------------------------------------
# The entry point


def from_pretrained(src, source: str = "auto", num_classes: int | None = None, img_size=None, **overrides):
    """A :class:`VisionTransformer` (eval mode) with the weights of ``src``, computing what the source computes.

    ``src``: a ``.safetensors`` / ``.pth`` / ``.bin`` / ``.npz`` file, a Hugging Face model folder, a vitkit
    run folder or ``run/checkpoints/best``, a state dict, or a live timm / transformers / torchvision /
    vitkit model. ``source`` forces the format ('timm', 'hf', 'torchvision', 'jax', 'vitkit'); 'auto'
    detects it. ``num_classes`` other than the checkpoint's re-initialises the head (with a warning);
    ``img_size`` other than the checkpoint's resamples the position embedding (bicubic, antialiased, as
    timm). ``overrides`` are ViTConfig fields, e.g. ``num_heads`` for a state dict of a non-standard width,
    ``drop_path_rate`` for fine-tuning, ``act="gelu"`` to reproduce timm's port of a JAX checkpoint.
    """
    from .layers import resample_pos_embed
    from .model import VisionTransformer

    if source not in _SOURCE_ALIASES:
        raise ConfigError(f"unknown weights source {source!r}; expected one of: {', '.join(_SOURCE_ALIASES)}")
    read = read_source(src)
    fmt = _SOURCE_ALIASES[source]
    if fmt == "auto":
        fmt = read.format or detect_format(_unwrap(read.state))
    state, pre_logits, facts = convert_state_dict(read.state, fmt)
    hints = {**FORMATS[fmt].defaults, **facts, **read.hints}
    new_head = bool(pre_logits)
    if pre_logits:  # head(tanh(pre_logits(x))) cannot be reproduced: keep the features, drop both layers
        if "head.weight" in state:
            hints.setdefault("num_classes", state["head.weight"].shape[0])  # (C, R)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        warnings.warn(f"{read.name} has a pre-logits (representation) layer, which vitkit does not have; it "
                      "was dropped and the head after it starts from scratch", stacklevel=3)
    cfg = infer_config(state, hints, overrides, img_size)  # the checkpoint's own architecture

    target = cfg.replace(**{k: v for k, v in (("num_classes", num_classes), ("img_size", img_size))
                            if v is not None})
    if target.num_classes != cfg.num_classes:
        new_head = True
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        had = f"a {cfg.num_classes}-class head" if cfg.num_classes else "no head"
        now = f"a new {target.num_classes}-class head starts from scratch" if target.num_classes else \
            "it is removed (num_classes=0)"
        warnings.warn(f"{read.name} has {had}; {now}", stacklevel=3)
    if target.grid_size != cfg.grid_size and isinstance(state.get("pos_embed"), Tensor):
        prefix = 0 if cfg.no_embed_class else cfg.num_prefix_tokens
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], target.grid_size, cfg.grid_size, prefix)

    model = VisionTransformer(target)
    own = model.state_dict()
    if new_head:  # the new head keeps its fresh initialisation
        state.update({k: v for k, v in own.items() if k.startswith("head.")})
    from .checkpoint import check_state_dict
    check_state_dict(model, state, f"{read.name} ({fmt} format)")
    model.load_state_dict(state)
    return model.eval()
