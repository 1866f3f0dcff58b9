"""The Open Inference Protocol (KServe v2 / Triton HTTP) routes, so their clients call the model unchanged.

``POST /v2/models/{name}/infer`` takes one input, either

- ``FP32`` of shape [B, C, H, W]: images already preprocessed as ``/info`` describes, or
- ``BYTES`` of shape [B]: encoded image files (base64 strings in JSON), preprocessed here,

and answers the outputs ``probabilities`` (FP32 [B, classes]) and ``label`` (BYTES [B], the top-1 class), or
those the request names. Triton's binary tensor extension (``Inference-Header-Content-Length``, an input's
``binary_data_size``, an output's or the request's ``binary_data`` / ``binary_data_output``), which
tritonclient uses by default, is understood both ways.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from .inputs import MAX_IMAGES, RequestError, Upload, b64decode
from .service import Service

HEADER_LENGTH = "inference-header-content-length"
OUTPUTS = ("probabilities", "label")


def add_routes(app: FastAPI, service: Service) -> None:
    """Add the v2 routes for ``service``'s model (named ``service.settings.name``) to ``app``."""
    name = service.settings.name
    p = service.predictor
    c, (h, w) = p.preprocess.channels, p.preprocess.img_size

    def model(requested: str) -> None:
        if requested != name:
            raise RequestError(404, f"model {requested!r} is not served here; this server serves {name!r}")

    @app.get("/v2")
    async def server_metadata():
        return {"name": "vitkit", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return JSONResponse({"ready": service.worker.alive}, 200 if service.worker.alive else 503)

    @app.get("/v2/models/{model_name}")
    async def model_metadata(model_name: str):
        model(model_name)
        return {"name": name, "versions": ["1"], "platform": "pytorch_vitkit",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(p.classes)]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]}]}

    @app.get("/v2/models/{model_name}/ready")
    async def model_ready(model_name: str):
        model(model_name)
        return JSONResponse({"name": name, "ready": service.worker.alive}, 200 if service.worker.alive else 503)

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request):
        model(model_name)
        body = await request.body()
        if not body:
            raise RequestError(400, "the request body is empty; expected an inference request "
                                    '{"inputs": [{"name", "shape", "datatype", "data"}]}')
        doc, x, uploads, wanted, binary = await service.off_loop(_parse, body, request.headers.get(HEADER_LENGTH),
                                                                 (c, h, w))
        if uploads is not None:
            x = await service.inputs(uploads)
        probs = await service.probabilities(x)  # (B, classes)
        if not torch.isfinite(probs).all():  # finite inputs far outside any image's range (1e30, say)
            raise RequestError(422, f"the FP32 input (values up to {x.abs().max().item():.3g}) makes the model's "
                                    "probabilities non-finite; send images preprocessed as /info describes "
                                    "(normalised values, within a few units of 0)")
        labels = [p.classes[i] for i in probs.argmax(1).tolist()]
        tensors = {"probabilities": ("FP32", list(probs.shape), probs.numpy()),
                   "label": ("BYTES", [len(labels)], labels)}
        reply: dict[str, Any] = {"model_name": name, "model_version": "1"}
        if isinstance(doc.get("id"), str):
            reply["id"] = doc["id"]
        return _reply(reply, [(n, *tensors[n], binary[n]) for n in wanted])


def _parse(body: bytes, header_length: str | None, chw: tuple[int, int, int]):
    """(request JSON, FP32 input or None, encoded images or None, outputs wanted, which of them binary)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of "
                                    f"{len(body)} bytes")
        body, tail = body[:int(header_length)], body[int(header_length):]
    else:
        tail = b""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the inference request is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or len(doc["inputs"]) != 1:
        raise RequestError(422, 'an inference request is {"inputs": [one input]} (FP32 [B, C, H, W] images or '
                                "BYTES [B] encoded image files)")
    inp = doc["inputs"][0]
    if not isinstance(inp, dict) or not isinstance(inp.get("shape"), list) or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in inp["shape"]):
        raise RequestError(422, 'the input needs "name", "datatype", a "shape" of non-negative integers and "data"')
    shape, dtype = inp["shape"], inp.get("datatype")
    size = (inp.get("parameters") or {}).get("binary_data_size")
    if size is not None and (not isinstance(size, int) or size > len(tail)):
        raise RequestError(400, f"the input's binary_data_size {size!r} does not fit the {len(tail)} bytes sent")
    raw = tail[:size] if size is not None else None
    if size is None and "data" not in inp:
        raise RequestError(422, 'the input has no "data" (nor a binary_data_size)')
    x = uploads = None
    if dtype == "FP32":
        if len(shape) != 4 or tuple(shape[1:]) != chw or not 1 <= shape[0] <= MAX_IMAGES:
            raise RequestError(422, f"an FP32 input must have the shape [B, {chw[0]}, {chw[1]}, {chw[2]}] with "
                                    f"1 <= B <= {MAX_IMAGES}, got {shape}")
        x = _fp32(raw, inp.get("data"), shape)
    elif dtype == "BYTES":
        if not 1 <= len(shape) <= 2 or math.prod(shape[1:]) != 1 or not 1 <= shape[0] <= MAX_IMAGES:
            raise RequestError(422, f"a BYTES input must have the shape [B] (encoded image files) with "
                                    f"1 <= B <= {MAX_IMAGES}, got {shape}")
        items = _bytes(raw, inp.get("data"), shape[0])
        uploads = [Upload(f"inputs[0][{i}]", d) for i, d in enumerate(items)]
    else:
        raise RequestError(422, f"the input's datatype must be FP32 (preprocessed images) or BYTES (image files), "
                                f"got {dtype!r}")
    binary_all = bool((doc.get("parameters") or {}).get("binary_data_output"))
    wanted, binary = list(OUTPUTS), dict.fromkeys(OUTPUTS, binary_all)
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list) or not all(isinstance(o, dict) for o in doc["outputs"]):
            raise RequestError(422, '"outputs" must be a list of {"name": ...}')
        wanted = []
        for o in doc["outputs"]:
            if o.get("name") not in OUTPUTS:
                raise RequestError(422, f"unknown output {o.get('name')!r}; this model gives {', '.join(OUTPUTS)}")
            wanted.append(o["name"])
            binary[o["name"]] = bool((o.get("parameters") or {}).get("binary_data", binary_all))
    return doc, x, uploads, wanted, binary


def _fp32(raw: bytes | None, data, shape: list[int]) -> torch.Tensor:
    n = math.prod(shape)
    try:
        if raw is not None:
            if len(raw) != 4 * n:
                raise ValueError(f"{len(raw)} bytes for {n} float32 values")
            flat = torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy())
        else:
            flat = torch.tensor(data, dtype=torch.float32).reshape(-1)
            if flat.numel() != n:
                raise ValueError(f"{flat.numel()} values for the shape {shape}")
    except (ValueError, TypeError, RuntimeError) as e:
        raise RequestError(400, f"the FP32 input's data does not fit its shape or is not numbers ({e})") from None
    bad = (~torch.isfinite(flat)).sum().item()
    if bad:
        raise RequestError(422, f"the FP32 input holds {bad} NaN or infinite value{'s' * (bad > 1)}; every value "
                                "must be a finite number (images preprocessed as /info describes)")
    return flat.reshape(shape)


def _bytes(raw: bytes | None, data, n: int) -> list[bytes]:
    """The n elements of a BYTES input: length-prefixed in binary, base64 strings in JSON."""
    if raw is None:
        flat = data[0] if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list) else data
        if not isinstance(flat, list) or len(flat) != n:
            raise RequestError(400, f"the BYTES input must hold {n} base64 strings")
        return [b64decode(s, f"inputs[0].data[{i}]") for i, s in enumerate(flat)]
    items, at = [], 0
    for i in range(n):
        if at + 4 > len(raw) or at + 4 + (size := struct.unpack_from("<I", raw, at)[0]) > len(raw):
            raise RequestError(400, f"the binary BYTES input ends inside element {i} of {n}")
        items.append(raw[at + 4: at + 4 + size])
        at += 4 + size
    return items


def _reply(reply: dict[str, Any], outputs: list[tuple[str, str, list[int], Any, bool]]) -> Response:
    """The response: JSON, or a JSON header followed by the binary outputs (Triton's extension)."""
    tail = []
    reply["outputs"] = []
    for name, dtype, shape, value, binary in outputs:
        out: dict[str, Any] = {"name": name, "datatype": dtype, "shape": shape}
        if binary:
            raw = value.astype("<f4").tobytes() if dtype == "FP32" else b"".join(
                struct.pack("<I", len(b)) + b for b in (s.encode() for s in value))
            out["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            out["data"] = value.reshape(-1).tolist() if dtype == "FP32" else value
        reply["outputs"].append(out)
    if not tail:
        return JSONResponse(reply)
    head = json.dumps(reply).encode()
    return Response(head + b"".join(tail), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})
