"""Ship a trained model: export to ONNX (run by onnxruntime) or to a ``torch.export`` program (``.pt2``), and
check that the exported model computes what the eager model computes.

ONNX uses PyTorch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``); the fused
``scaled_dot_product_attention`` of vitkit's attention exports as it is (to MatMul/Softmax nodes, opset 18).
``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional extra ``vitkit[onnx]`` and are imported only
here, when used. The vitkit metadata of the checkpoint (class names, normalisation) and its architecture
travel with the export: ONNX metadata properties ``vitkit_metadata`` / ``vitkit_config``, and files of the
same names in the ``.pt2`` archive.

    vitkit export --checkpoint runs/digits/checkpoints/best --format onnx --dynamic-batch
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, VitkitError
from .fileio import atomic_path

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
EXAMPLE_DYNAMIC_BATCH = 2  # a batch of 1 would make torch.export specialise the batch dimension to 1
MAX_BATCH = 4096
MIN_OPSET = 18  # what torch.onnx.export(dynamo=True) writes; older opsets need a lossy down-conversion


def _require_onnx():
    """The ONNX packages, or one clear error saying how to get them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise VitkitError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing); "
                          "install them with: pip install vitkit[onnx]") from None
    return onnxruntime


def _example(model: nn.Module, batch: int, img_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A fixed random image batch (B, C, H, W) on the model's device."""
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.config.in_channels, *img_size, generator=g).to(p.device, p.dtype)


def _dynamic_shapes(dynamic_batch: bool):
    return {"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}} if dynamic_batch else None


def _img_size(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.img_size)


def _metadata(model: nn.Module, metadata: dict | None) -> dict[str, str]:
    return {"vitkit_metadata": json.dumps(metadata or {}), "vitkit_config": json.dumps(model.config.to_dict())}


def export_onnx(model: nn.Module, path: str | Path, dynamic_batch: bool = False, batch_size: int = 1,
                metadata: dict | None = None, opset: int = 18) -> Path:
    """Write ``model`` (eval mode, its current image size) as ONNX: input ``images`` (B, C, H, W), output
    ``logits`` (B, classes); B is symbolic with ``dynamic_batch``, else ``batch_size``."""
    _require_onnx()
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(f"ONNX opset {opset} is not available: PyTorch's exporter writes opset {MIN_OPSET} or "
                          f"newer; use --opset {MIN_OPSET}")
    model = model.eval()
    x = _example(model, EXAMPLE_DYNAMIC_BATCH if dynamic_batch else batch_size, _img_size(model))
    try:
        program = torch.onnx.export(model, (x,), None, dynamo=True, dynamic_shapes=_dynamic_shapes(dynamic_batch),
                                    input_names=["images"], output_names=["logits"], opset_version=opset,
                                    verbose=False)
    except Exception as e:  # the exporter's own error types; the message says which operator failed
        raise VitkitError(f"ONNX export failed: {str(e).splitlines()[0]}") from e
    written = program.model.opset_imports.get("", None)
    if written != opset:
        raise VitkitError(f"ONNX export wrote opset {written}, not the {opset} asked for (the converter could not "
                          f"convert this model); use --opset {written}")
    program.model.metadata_props.update(_metadata(model, metadata))
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:  # a full disk leaves an earlier export whole
        program.save(str(tmp))
    return path


def export_pt2(model: nn.Module, path: str | Path, dynamic_batch: bool = False, batch_size: int = 1,
               metadata: dict | None = None) -> Path:
    """Write ``model`` as a ``torch.export`` program (``torch.export.load(path).module()`` runs it)."""
    model = model.eval()
    x = _example(model, EXAMPLE_DYNAMIC_BATCH if dynamic_batch else batch_size, _img_size(model))
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(dynamic_batch))
    except Exception as e:
        raise VitkitError(f"torch.export failed: {str(e).splitlines()[0]}") from e
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        torch.export.save(program, str(tmp), extra_files={f"{k}.json": v for k, v in _metadata(model, metadata).items()})
    return path


def load_exported(path: str | Path, fmt: str):
    """A callable ``images (B, C, H, W) tensor -> logits tensor`` running the exported file: onnxruntime
    (CPU) for ONNX, the unlifted ``torch.export`` module for pt2."""
    if fmt == "onnx":
        ort = _require_onnx()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])
        return run
    module = torch.export.load(str(path)).module()
    return lambda x: module(x)


@torch.no_grad()
def parity(model: nn.Module, path: str | Path, fmt: str, batch_sizes: tuple[int, ...]) -> dict[int, float]:
    """Max abs difference between the exported model and eager ``model`` on random images, per batch size."""
    run = load_exported(path, fmt)
    out = {}
    for i, b in enumerate(batch_sizes):
        x = _example(model, b, _img_size(model), seed=100 + i)
        out[b] = (run(x).to(torch.float32).cpu() - model.eval()(x).float().cpu()).abs().max().item()
    return out


def export(checkpoint: str | Path, fmt: str = "onnx", output: str | Path | None = None,
           dynamic_batch: bool = False, img_size: int | None = None, batch_size: int = 1,
           opset: int = 18) -> tuple[Path, dict[int, float]]:
    """Export a vitkit checkpoint and check it: ``(exported path, {batch size: max abs diff vs eager})``.

    ``img_size`` rebuilds the model for another input size first (resampling its position embedding); the
    default output is the checkpoint's path with the format's suffix. Parity is checked at batch sizes 1 and
    4 with ``dynamic_batch``, else at ``batch_size``."""
    from .checkpoint import resolve_weights_path
    from .predictor import Predictor

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if fmt == "onnx":
        _require_onnx()  # fail before loading anything
    predictor = Predictor.load(checkpoint)
    model, meta = predictor.model, predictor.meta
    if img_size is not None and (img_size, img_size) != _img_size(model):
        model.set_img_size(img_size)
    if output is None:
        output = resolve_weights_path(checkpoint).with_suffix(FORMATS[fmt])
    if fmt == "onnx":
        path = export_onnx(model, output, dynamic_batch, batch_size, meta, opset)
    else:
        path = export_pt2(model, output, dynamic_batch, batch_size, meta)
    return path, parity(model, path, fmt, (1, 4) if dynamic_batch else (batch_size,))
