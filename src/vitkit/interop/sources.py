"""Reading a weights source: a file (safetensors, PyTorch, npz), a Hugging Face folder, a vitkit run, a state
dict or a live timm / transformers / torchvision model, as tensors plus what the source says about its
architecture (heads, eps, pooling ...) that the shapes cannot tell."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import resolve_weights_path
from ..config import ViTConfig
from ..errors import CheckpointError

Tensor = torch.Tensor

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
    if not path.is_file():  # a vitkit run folder, or RUN/checkpoints/best
        path = resolve_weights_path(path)
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
            raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file ({e})") from None
        if "vitkit_config" in header:
            return Source(state, json.loads(header["vitkit_config"]), str(path), "vitkit")
        return Source(state, {}, str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read as a PyTorch checkpoint ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state dict")
    return Source(obj, {}, str(path))


def _read_npz(path: Path) -> dict[str, Tensor]:
    import numpy as np
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is not a readable .npz archive ({e})") from None
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


