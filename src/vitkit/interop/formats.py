"""How other libraries store a ViT, as data: one declarative key table per format (:class:`Format`), the tensor
transforms its rules use, detection of a format by its keys, and the conversion to vitkit's (timm's) keys."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import CheckpointError

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
SOURCE_ALIASES = {"auto": "auto", "timm": "timm", "vitkit": "vitkit", "hf": "hf", "huggingface": "hf",
                   "transformers": "hf", "torchvision": "torchvision", "jax": "jax", "npz": "jax",
                   "big_vision": "jax"}

# Sub-module numbers of a JAX encoder block: google-research/vision_transformer vs big_vision (as in timm's
# _load_weights: mha_sub, b_sub, ln1_sub = (0, 0, 1) if big_vision else (1, 3, 2)).
_JAX_SUBS_ORIGINAL = {"mha": 1, "ln2": 2, "mlp": 3}
_JAX_SUBS_BIG_VISION = {"mha": 0, "ln2": 1, "mlp": 0}


# --------------------------------------------------------------------------------------------------------------
# Converting the tensors to vitkit's (timm's) keys


def detect_format(state: dict[str, Any]) -> str:
    """The format whose marker key (possibly under one of its prefixes) the state dict has."""
    for fmt in (TIMM, HF, TORCHVISION, JAX):
        if any(f"{p}{fmt.marker}" in state for p in ("", *fmt.prefixes)):
            return fmt.name
    raise CheckpointError("cannot tell the format of these weights: no patch embedding key of timm "
                          "('patch_embed.proj.weight'), Hugging Face, torchvision or JAX was found")


def unwrap(state: dict) -> dict:
    """Training checkpoints often nest the weights: {'model': ...} or {'state_dict': ...}."""
    for key in ("model", "state_dict", "model_state_dict", "module"):
        if isinstance(state.get(key), dict):
            return unwrap(state[key])
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
    state = _strip_prefix(unwrap(state), spec)
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


