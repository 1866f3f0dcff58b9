"""What a source says about its architecture beyond the tensors, in ViTConfig's field names: Hugging Face
``config.json``, ``open_clip_config.json``, timm's Hub ``config.json``, and the modules of a live timm,
transformers, torchvision, open_clip, vit-pytorch or ``nn.TransformerEncoder`` model."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..presets import PRESETS
from ..errors import CheckpointError, ConfigError
from . import preprocess as pp
from .timm_modules import act_name as timm_act_name, timm_architecture

# --------------------------------------------------------------------------------------------------------------
# Class names


def class_names(config: dict) -> list[str] | None:
    """The names of a classifier's outputs, in order, from a model folder's ``config.json``: Hugging Face's
    ``id2label`` (unless it is the placeholder ``LABEL_0``, ``LABEL_1`` ...), or timm's ``label_names`` (a list,
    or {index: name}), each through ``label_descriptions`` when given (ImageNet's synsets -> their words).
    None when the file names no classes, or not every output."""
    labels = config.get("label_names") or config.get("id2label")
    if isinstance(labels, (list, tuple)):
        labels = dict(enumerate(labels))
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        by_index = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    names = [by_index[i] for i in range(len(by_index))]
    if all(re.fullmatch(r"LABEL_\d+", n) for n in names):  # transformers' default, not names
        return None
    words = config.get("label_descriptions")
    return [str(words.get(n, n)) for n in names] if isinstance(words, dict) else names


# --------------------------------------------------------------------------------------------------------------
# Hugging Face config.json

_HF_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
            "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
# transformers' defaults, for config.json files that leave them out (they store only what differs)
_HF_DEFAULTS = {
    "vit": {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "num_attention_heads": 12, "image_size": 224,
            "qkv_bias": True},
    "clip_vision_model": {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "num_attention_heads": 12,
                          "image_size": 224},
    "siglip_vision_model": {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "num_attention_heads": 12,
                            "image_size": 224},
    "dinov2": {"hidden_act": "gelu", "layer_norm_eps": 1e-6, "num_attention_heads": 12, "image_size": 224,
               "qkv_bias": True},
    "dinov3_vit": {"hidden_act": "gelu", "layer_norm_eps": 1e-5, "num_attention_heads": 6, "image_size": 224,
                   "rope_theta": 100.0},
    "aimv2_vision_model": {"hidden_act": "silu", "rms_norm_eps": 1e-5, "num_attention_heads": 8, "image_size": 224,
                           "qkv_bias": False, "use_head": True, "is_native": False},
}
_HF_TYPES = {"vit": "vit", "deit": "vit", "clip": "clip_vision_model", "clip_vision_model": "clip_vision_model",
             "siglip": "siglip_vision_model", "siglip_vision_model": "siglip_vision_model", "dinov2": "dinov2",
             "dinov2_with_registers": "dinov2", "dinov3_vit": "dinov3_vit", "aimv2": "aimv2_vision_model",
             "aimv2_vision_model": "aimv2_vision_model"}


def _dinov3_vit(d: dict) -> dict:
    """DINOv3ViT rotates q and k by its patch centres over any grid and pools [CLS]. Its pos_embed_shift, _jitter
    and _rescale augment those coordinates in training mode only, so inference is the same without them."""
    return {"rope": "dinov3", "rope_temperature": float(d["rope_theta"]), "dynamic_img_size": True}


def _aimv2(d: dict) -> dict:
    """Aimv2VisionModel: RMSNorm throughout; refused with its attention-pooling head or native-resolution table."""
    if d["is_native"]:
        raise CheckpointError("the AIMv2 model is native-resolution (is_native=True): it adds a sin-cos position "
                              "table in its own layout, which vitkit does not compute; it was not loaded")
    if d["use_head"]:
        raise CheckpointError("the AIMv2 model has its attention-pooling head (use_head=True: a learned query "
                              "without a projection and no MLP), which is not vitkit's MAP head; it was not loaded "
                              "(build it with use_head=False for its tokens)")
    return {"norm_layer": "rmsnorm"}


_HF_FAMILY = {"dinov3_vit": _dinov3_vit, "aimv2_vision_model": _aimv2}


def hf_hints(config: Any) -> dict:
    """Heads, eps, activation, image size and qkv bias from a Hugging Face config (object or config.json dict),
    and what a family adds (DINOv3ViT's rotation, AIMv2's RMSNorm and refusals); for a CLIP, SigLIP or AIMv2
    model, from its vision config."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    model_type = d.get("model_type", "vit")
    if model_type not in _HF_TYPES:
        raise CheckpointError(f"Hugging Face model_type {model_type!r} is not one vitkit computes (it reads "
                              f"{', '.join(sorted(_HF_TYPES))}); it was not loaded")
    kind = _HF_TYPES[model_type]
    if isinstance(d.get("vision_config"), dict):
        d = d["vision_config"]
    d = {**_HF_DEFAULTS[kind], **{k: v for k, v in d.items() if v is not None}}
    act = d["hidden_act"]
    if act not in _HF_ACTS:
        raise ConfigError(f"unsupported Hugging Face hidden_act {act!r}; expected one of {', '.join(_HF_ACTS)}")
    hints = {"num_heads": d["num_attention_heads"], "norm_eps": d.get("layer_norm_eps", d.get("rms_norm_eps")),
             "act": _HF_ACTS[act], "img_size": d["image_size"]}
    if "qkv_bias" in d:
        hints["qkv_bias"] = d["qkv_bias"]
    if d.get("use_swiglu_ffn"):  # Dinov2's SwiGLU gates with SiLU whatever hidden_act says
        hints["act"] = "silu"
    hints.update(_HF_FAMILY[kind](d) if kind in _HF_FAMILY else {})
    return hints


# --------------------------------------------------------------------------------------------------------------
# open_clip and timm model folders


def open_clip_hints(config: dict) -> tuple[dict, dict | None]:
    """Heads (width // head_width), activation (quick_gelu) and image size from ``open_clip_config.json``,
    and its preprocessing."""
    model = config.get("model_cfg", config)
    vision = model.get("vision_cfg", {})
    preprocess = pp.from_open_clip(config.get("preprocess_cfg", {}))
    if vision.get("timm_model_name"):  # a timm trunk: its definition holds the facts
        name = vision["timm_model_name"]
        trunk = _timm_on_meta(name, num_classes=0, global_pool=vision.get("timm_pool", ""))
        if trunk is None:
            raise CheckpointError(f"open_clip_config.json names the timm trunk {name!r}, which the installed timm "
                                  "(if any) does not describe, so what it computes cannot be checked")
        return timm_architecture(trunk), preprocess
    width = vision.get("width", 768)
    hints = {"num_heads": width // vision.get("head_width", 64),
             "act": "quick_gelu" if model.get("quick_gelu") else "gelu", "img_size": vision.get("image_size", 224)}
    return hints, preprocess


def timm_folder_hints(config: dict) -> tuple[dict, dict | None]:
    """A timm Hub folder's ``config.json`` names the architecture: its definition in the installed timm (built on
    the meta device, no memory) gives the facts, else vitkit's preset of that name; its ``pretrained_cfg`` gives
    the preprocessing. An architecture neither describes is refused: the keys alone cannot prove what it computes."""
    arch = config["architecture"]
    kwargs = {"num_classes": config.get("num_classes", 0), **config.get("model_args", {})}
    model = _timm_on_meta(arch, **kwargs)
    if model is not None:
        hints = timm_architecture(model)
    elif arch in PRESETS:
        hints = {k: v for k, v in PRESETS[arch].items() if k != "num_classes"}
    else:
        raise CheckpointError(f"the folder's config.json names the timm architecture {arch!r}, which neither "
                              "vitkit's presets nor the installed timm describe, so what it computes cannot be "
                              "checked; install a timm that has it, or load the weights file with from_pretrained("
                              "..., arch=NAME) of a matching preset")
    return hints, pp.from_timm_cfg(config.get("pretrained_cfg"))


def _timm_on_meta(name: str, **kwargs):
    try:
        import timm
    except ImportError:
        return None
    if not timm.is_model(name):
        return None
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # the folder's model_args do not fit the installed timm's definition
        raise CheckpointError(f"the installed timm cannot build {name!r} with the folder's arguments ({e})") from None


# --------------------------------------------------------------------------------------------------------------
# Live models


def module_hints(m: nn.Module) -> tuple[dict, str | None, dict | None]:
    """(hints, format if the module's kind tells it, preprocessing) of a live model."""
    module = type(m).__module__
    if module.startswith("timm."):
        return timm_architecture(m), "timm", pp.from_timm_cfg(getattr(m, "pretrained_cfg", None))
    if module.startswith("transformers."):
        return hf_hints(m.config), None, None
    if module.startswith("torchvision."):
        hints = {"num_heads": m.encoder.layers[0].num_heads, "img_size": m.image_size, "norm_eps": m.encoder.ln.eps}
        return hints, "torchvision", None
    if module.startswith("open_clip."):
        return _open_clip_module_hints(m), None, None
    if module.startswith("vit_pytorch."):
        return _vit_pytorch_hints(m), None, None
    layer = next((x for x in m.modules() if isinstance(x, nn.TransformerEncoderLayer)), None)
    if layer is not None:
        return {"num_heads": layer.self_attn.num_heads, "norm_style": "pre" if layer.norm_first else "post",
                "norm_eps": layer.norm1.eps, "act": _encoder_act(layer)}, None, None
    mha = next((x for x in m.modules() if isinstance(x, nn.MultiheadAttention)), None)
    if mha is not None:  # blocks written around nn.MultiheadAttention: their heads (norms and act are code)
        norm = next((x for x in m.modules() if isinstance(x, nn.LayerNorm)), None)
        return {"num_heads": mha.num_heads, **({"norm_eps": norm.eps} if norm is not None else {})}, None, None
    return {}, None, None


def _open_clip_module_hints(m) -> dict:
    tower = getattr(m, "visual", m)
    if hasattr(tower, "trunk"):
        return timm_architecture(tower.trunk)
    block = tower.transformer.resblocks[0]
    return {"num_heads": block.attn.num_heads, "act": act_name(block.mlp.gelu), "norm_eps": block.ln_1.eps,
            "img_size": tuple(tower.image_size)}


def _vit_pytorch_hints(m) -> dict:
    """Heads from the attention module; SimpleViT's image size from its sin-cos table (a plain attribute, not
    in the state dict) and the patch size its einops Rearrange cuts."""
    attn = m.transformer.layers[0][0]
    while not hasattr(attn, "heads") and hasattr(attn, "fn"):  # PreNorm(...), before 0.10 Residual(PreNorm(...))
        attn = attn.fn
    hints = {"num_heads": attn.heads}
    cls = getattr(m, "cls_token", None)
    if getattr(m, "pool", None) in ("cls", "mean") and isinstance(cls, torch.Tensor) and cls.ndim == 3:
        if m.pool == "mean":  # before 1.16 the mean is over all tokens, [CLS] included
            raise CheckpointError("this vit-pytorch ViT (before 1.16) pools the mean of all tokens, its [CLS] token "
                                  "included, which vitkit does not compute; it was not loaded")
        hints["pool"] = "cls"
    scale = getattr(attn, "scale", None)  # dim_head ** -0.5 since 0.6.7; dim ** -0.5 before
    if isinstance(scale, float):
        own = abs(scale - (attn.to_qkv.out_features // 3 // attn.heads) ** -0.5) <= 1e-12
        hints["attn_scale"] = None if own else scale
    table, cut = getattr(m, "pos_embedding", None), getattr(getattr(m, "to_patch_embedding", [None])[0], "axes_lengths", {})
    if isinstance(table, torch.Tensor) and not isinstance(table, nn.Parameter) and "p1" in cut:
        side = int(table.shape[-2] ** 0.5)  # a square grid
        h, w = side * cut["p1"], side * cut.get("p2", cut["p1"])
        hints["img_size"] = h if h == w else (h, w)
    return hints


def _encoder_act(layer: nn.TransformerEncoderLayer) -> str:
    act = layer.activation
    if act is torch.nn.functional.relu:
        return "relu"
    if act is torch.nn.functional.gelu:
        return "gelu"
    if isinstance(act, nn.Module):
        return act_name(act)
    raise ConfigError(f"nn.TransformerEncoderLayer activation {getattr(act, '__name__', act)!r} is not "
                      "supported; vitkit has relu, gelu, gelu_tanh, quick_gelu and silu")


def act_name(act: nn.Module) -> str:
    """vitkit's name of an activation module; one sentence for an activation vitkit does not have."""
    name = timm_act_name(act)
    if name is None:
        raise CheckpointError(f"activation {type(act).__name__} is not supported; vitkit has GELU (exact or tanh), "
                              "QuickGELU, SiLU and ReLU")
    return name
