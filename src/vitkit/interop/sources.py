"""Reading a weights source: a file (safetensors, PyTorch, OpenAI's TorchScript, npz), a Hugging Face / timm /
open_clip model folder, a vitkit run, a state dict or a live model, as tensors plus what the source says
about its architecture (heads, eps, activation, pooling ...) and preprocessing, which the shapes cannot tell."""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_safetensors, resolve_weights_path, torch_load_error
from ..config import ViTConfig
from ..errors import CheckpointError
from . import preprocess as pp
from .describe import class_names, hf_hints, module_hints, open_clip_hints, timm_folder_hints

Tensor = torch.Tensor


@dataclass
class Source:
    """Tensors as found, what the source says about its architecture and preprocessing, and a name for
    messages. ``format`` is set when the object or file kind tells it; else the keys do."""

    state: dict[str, Any]
    hints: dict[str, Any]
    name: str
    format: str | None = None
    preprocess: dict | None = None
    classes: list[str] | None = None  # the names of the head's outputs, when the source says
    folder: bool = False  # a model folder, whose own files should say how its images were prepared
    metadata: dict = field(default_factory=dict)  # a vitkit file's own record (classes, preprocessing ...)


def read_source(src: Any) -> Source:
    """Tensors, architecture hints and a display name of a file, folder, state dict or live model (a
    :class:`Source` already read is itself)."""
    if isinstance(src, Source):
        return src
    if isinstance(src, (str, Path)):
        return _read_path(Path(src))
    if isinstance(src, dict):
        return Source(dict(src), {}, "the given state dict")
    if isinstance(src, torch.nn.Module):
        return _read_module(src)
    raise CheckpointError(f"cannot load weights from a {type(src).__name__}; expected a file path, a state "
                          "dict or a timm / transformers / torchvision / open_clip / vit-pytorch model")


# Weights files in model folders, and the description that comes with them.
_FOLDERS = (("config.json", ("model.safetensors", "pytorch_model.bin")),  # Hugging Face or timm
            ("open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")))


def _read_path(path: Path) -> Source:
    if path.is_dir():
        for config_name, weights in _FOLDERS:
            if not (path / config_name).is_file():
                continue
            file = next((path / w for w in weights if (path / w).is_file()), None)
            if file is None:
                raise CheckpointError(f"model folder {path} has {config_name} but none of {', '.join(weights)}")
            config = _read_json(path / config_name)
            src = _read_path(file)
            if config_name == "open_clip_config.json":
                hints, preprocess = open_clip_hints(config)
            elif "architecture" in config:  # timm's Hub folders
                hints, preprocess = timm_folder_hints(config)
            else:
                hints, preprocess = hf_hints(config), None
            if (path / "preprocessor_config.json").is_file():
                preprocess = pp.from_hf_processor(_read_json(path / "preprocessor_config.json")) or preprocess
            return Source(src.state, hints, str(path), None, preprocess, class_names(config), folder=True)
    if not path.is_file():  # a vitkit run folder, or RUN/checkpoints/best
        path = resolve_weights_path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return Source(_read_npz(path), {}, str(path), "jax")
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if _is_torchscript(path):
        return _read_torchscript(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise torch_load_error(path, e) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state dict")
    return Source(obj, {}, str(path))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None


def _read_safetensors(path: Path) -> Source:
    """A safetensors file; one with vitkit's header (read here only when a caller's ``rules=`` or ``source=``
    asks for a key table: :func:`vitkit.checkpoint.read_own` reads it directly) brings its config as hints."""
    state, cfg, meta = read_safetensors(path)
    meta = meta if isinstance(meta, dict) else {}
    if cfg is not None:
        return Source(state, cfg.to_dict(), str(path), "vitkit", meta.get("preprocess"), metadata=meta)
    return Source(state, {}, str(path), metadata=meta)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (OpenAI's CLIP files) is a zip with compiled code beside the tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/__torch__" in n for n in z.namelist())


def _read_torchscript(path: Path) -> Source:
    """OpenAI's CLIP ``.pt`` files: read with TorchScript's own loader (it builds no arbitrary Python object)
    and widen the fp16 weights to float32. OpenAI's models all compute QuickGELU with 64-wide heads."""
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, which reads no .pt
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is a TorchScript archive that cannot be read ({e})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    hints = {"act": "quick_gelu"}
    width = state.get("visual.conv1.weight")
    if isinstance(width, Tensor):
        hints["num_heads"] = width.shape[0] // 64
    return Source(state, hints, str(path), None, dict(pp.CLIP))


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
    """A live model's tensors plus the architecture facts its modules know (heads, eps, activation ...)."""
    name = f"the given {type(m).__name__}"
    state = m.state_dict()
    if isinstance(getattr(m, "config", None), ViTConfig):  # a vitkit model
        return Source(state, m.config.to_dict(), name, "vitkit")
    hints, fmt, preprocess = module_hints(m)
    described = getattr(m, "config", None) or getattr(m, "pretrained_cfg", None)  # transformers' or timm's
    if described is not None and hasattr(described, "to_dict"):
        described = described.to_dict()
    classes = class_names(described) if isinstance(described, dict) else None
    return Source(state, hints, name, fmt, preprocess, classes)
