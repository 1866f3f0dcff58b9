"""vitkit serve: the HTTP API (TestClient), a real uvicorn server under concurrent requests, the Open Inference
Protocol routes, refused input, startup errors, and the page driven in headless Chromium.

The model is a tiny ViT trained here in a fraction of a second to name the colour of an image, so every test
image has its own, known class: a mix-up between concurrent requests shows as a wrong top-1.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib

import httpx
import numpy as np
import pytest
from conftest import chromium
import torch
from fastapi.testclient import TestClient
from PIL import Image

from vitkit import VisionTransformer
from vitkit.checkpoint import save_weights
from vitkit.cli import main as vitkit_main
from vitkit.data.preprocess import Preprocess
from vitkit.predictor import Predictor
from vitkit.serve import create_app
from vitkit.commands.serve import listen, make_server, model_name
from vitkit.serve.service import Settings
from vitkit.attention_maps import cls_attention_maps, rollout_maps

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "cyan": (40, 200, 210), "magenta": (200, 50, 200), "white": (240, 240, 240), "black": (20, 20, 20)}
CLASSES = list(COLOURS)
LIMIT_MB = 0.25  # the test apps' --max-upload-mb


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on 2 shared cores, two threads spin against each other and everything slows down."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_thread):
    """A 2-layer, 2-head ViT on 16x16 images that names 8 colours, saved as a run's best checkpoint."""
    torch.manual_seed(0)
    pre = Preprocess((16, 16))
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=len(CLASSES), embed_dim=32, depth=2,
                              num_heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    base = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (8, 3)
    for _ in range(25):
        y = torch.randint(0, len(CLASSES), (32,))
        x = (base[y][:, :, None, None] + 25 * torch.randn(32, 3, 16, 16)).clamp(0, 255).round().to(torch.uint8)
        loss = torch.nn.functional.cross_entropy(model(pre.normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("run") / "colours" / "checkpoints" / "best"
    path.parent.mkdir(parents=True)
    return save_weights(model.eval(), path, {"classes": CLASSES, "preprocess": pre.to_dict()})


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def colour_image(name: str, seed: int = 0, size=(24, 20)) -> Image.Image:
    """A noisy patch of one colour, not of the model's size (so it is resized and cropped)."""
    noise = np.random.default_rng(seed).normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    """One encoded image per colour, in several formats and modes (JPEG, RGBA, palette), named by colour."""
    out = {}
    for k, name in enumerate(CLASSES):
        img = colour_image(name, k)
        if name == "green":
            out["green.jpg"] = encode(img, "JPEG")
        elif name == "blue":
            out["blue.png"] = encode(img.convert("RGBA"))
        elif name == "magenta":
            out["magenta.gif"] = encode(img.convert("P"), "GIF")
        else:
            out[f"{name}.png"] = encode(img)
    return out


@pytest.fixture(scope="module")
def image_files(images, tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("images")
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in images]


def colour_of(name: str) -> str:
    return re.split(r"[._]", name.rsplit("/", 1)[-1])[0]


@pytest.fixture(scope="module")
def client(checkpoint):
    """The API with batching (default settings, a small upload limit)."""
    settings = Settings(max_upload_mb=LIMIT_MB, name=model_name(checkpoint))
    with TestClient(create_app(Predictor.load(checkpoint), settings)) as c:
        yield c


def multipart(images: dict[str, bytes]) -> list:
    return [("file", (name, data, "application/octet-stream")) for name, data in images.items()]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def probs_of(prediction: dict) -> dict[str, float]:
    return {r["class"]: r["probability"] for r in prediction["top_k"]}


@pytest.fixture(scope="module")
def expected(checkpoint, image_files) -> dict[str, dict[str, float]]:
    """What ``vitkit predict --json`` prints for the image files: {colour: {class: probability}}."""
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = vitkit_main(["predict", *map(str, image_files), "--checkpoint", str(checkpoint), "--json",
                          "--device", "cpu", "--top-k", str(len(CLASSES))])
    assert rc == 0
    return {colour_of(p["image"]): probs_of(p) for p in json.loads(out.getvalue())}


def assert_close(got: dict[str, float], want: dict[str, float], tol: float = 1e-5):
    assert max(got, key=got.get) == max(want, key=want.get)
    assert got.keys() == want.keys()
    assert all(abs(got[c] - want[c]) <= tol for c in want), (got, want)


# ------------------------------------------------------------------------------------------------------------
# The API


def test_predict_equals_vitkit_predict(client, images, expected):
    """Multipart (many files) and JSON (base64) give vitkit predict's classes and probabilities, and each
    image's top-1 is its own colour."""
    assert sorted(expected) == sorted(CLASSES)
    assert all(max(p, key=p.get) == colour for colour, p in expected.items())  # the model knows its colours
    r = client.post("/predict", files=multipart(images), params={"top_k": len(CLASSES)})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["image"] for p in preds] == list(images)
    for p in preds:
        assert_close(probs_of(p), expected[colour_of(p["image"])], tol=2e-6)
    r = client.post("/predict", json={"images": [b64(d) for d in images.values()], "top_k": len(CLASSES)})
    assert r.status_code == 200, r.text
    for name, p in zip(images, r.json()["predictions"]):
        assert_close(probs_of(p), expected[colour_of(name)], tol=2e-6)
    one = client.post("/predict", json={"image": b64(images["red.png"])}).json()["predictions"]
    assert len(one) == 1 and len(one[0]["top_k"]) == 5 and one[0]["top_k"][0]["class"] == "red"  # --top-k 5


def test_batched_equals_unbatched(checkpoint, client, images, expected):
    """One request of 8 images runs as one batch; with --no-batching, 8 requests run one image each; the
    numbers agree to 1e-5 and with vitkit predict."""
    before = client.get("/health").json()
    batched = client.post("/predict", files=multipart(images), params={"top_k": 8}).json()["predictions"]
    after = client.get("/health").json()
    assert (after["batches"] - before["batches"], after["images"] - before["images"]) == (1, len(images))
    settings = Settings(batching=False, max_upload_mb=LIMIT_MB)
    with TestClient(create_app(Predictor.load(checkpoint), settings)) as alone:
        for (name, data), b in zip(images.items(), batched):
            p = alone.post("/predict", files=multipart({name: data}), params={"top_k": 8}).json()["predictions"][0]
            assert_close(probs_of(p), probs_of(b))
            assert_close(probs_of(p), expected[colour_of(name)])
        assert alone.get("/health").json()["batches"] == len(images) + 1  # + the warm-up
        assert alone.get("/info").json()["batching"]["enabled"] is False


def test_info_health_and_page(client, checkpoint):
    """/info describes the model and its preprocessing; /health is ok; / is one self-contained HTML page."""
    info = client.get("/info").json()
    pre = Predictor.load(checkpoint).preprocess
    assert info["classes"] == CLASSES and info["image_size"] == [16, 16] and info["channels"] == 3
    assert (info["layers"], info["heads"], info["grid"]) == (2, 2, [4, 4])
    assert {k: v for k, v in info["preprocessing"].items() if k != "description"} == pre.to_dict()
    assert info["preprocessing"]["description"] == pre.describe()
    assert info["architecture"]["embed_dim"] == 32 and info["vitkit_version"]
    assert info["name"] == "colours" and info["device"] == "cpu" and info["top_k"] == 5
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//|@import|url\(""", page.text)


def test_attention_arrays_and_pngs(client, checkpoint, images):
    """Arrays equal vitkit.visualize's [CLS] attention (one head, or the mean of heads) and rollout; the PNG
    overlays decode, enlarged from 16x16 to 224x224."""
    predictor = Predictor.load(checkpoint)
    x = predictor.preprocess(Image.open(io.BytesIO(images["red.png"])))[None]
    heads, roll = cls_attention_maps(predictor.model, x, 0)[0], rollout_maps(predictor.model, x)[0]
    r = client.post("/attention", files=multipart({"red.png": images["red.png"]}),
                    data={"layer": "0", "head": "1", "format": "array"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert (a["layer"], a["head"], a["query"], a["grid"]) == (0, 1, "[CLS]", [4, 4])
    assert torch.allclose(torch.tensor(a["attention"]), heads[1], atol=1e-6)
    assert torch.allclose(torch.tensor(a["rollout"]), roll, atol=1e-6)
    a = client.post("/attention", json={"image": b64(images["red.png"]), "layer": -2, "format": "array"}).json()
    assert a["layer"] == 0 and a["head"] is None
    assert torch.allclose(torch.tensor(a["attention"]), heads.mean(0), atol=1e-6)
    a = client.post("/attention", files=multipart({"red.png": images["red.png"]})).json()
    assert (a["layer"], a["format"]) == (1, "png")
    for key in ("input", "rollout", "attention"):
        png = Image.open(io.BytesIO(base64.b64decode(a[key])))
        assert (png.format, png.size, png.mode) == ("PNG", (224, 224), "RGB")


def test_features_arrays_and_png(client, checkpoint, images):
    """/features: the final patch tokens as vitkit predict --dense writes them, their PCA colours equal
    scikit-learn's PCA (min-max scaled), and the PNG is the enlarged input's size with one colour per patch."""
    from sklearn.decomposition import PCA

    predictor = Predictor.load(checkpoint)
    x = predictor.preprocess(Image.open(io.BytesIO(images["red.png"])))[None]
    dense = predictor.features(x, "dense")[0]  # (32, 4, 4)
    a = client.post("/features", files=multipart({"red.png": images["red.png"]}), data={"format": "array"}).json()
    assert a["grid"] == [4, 4]
    torch.testing.assert_close(torch.tensor(a["features"]), dense, rtol=0, atol=1e-6)
    want = PCA(3, svd_solver="full").fit_transform(dense.permute(1, 2, 0).reshape(16, 32).double().numpy())
    want = (want - want.min(0)) / (want.max(0) - want.min(0))
    np.testing.assert_allclose(np.asarray(a["pca"]).reshape(16, 3), want, atol=1e-5)
    a = client.post("/features", json={"image": b64(images["red.png"])}).json()
    png = Image.open(io.BytesIO(base64.b64decode(a["features"])))
    assert (png.format, png.size, png.mode) == ("PNG", (224, 224), "RGB")
    assert len(set(png.getdata())) <= 16  # a flat colour per patch
    r = client.post("/features", files=multipart({"red.png": images["red.png"]}), data={"format": "jpeg"})
    assert r.status_code == 422 and "format must be 'png' or 'array'" in r.json()["error"]


# ------------------------------------------------------------------------------------------------------------
# Open Inference Protocol v2


def test_oip_v2(client, images, expected, checkpoint):
    """Metadata; FP32 and BYTES inputs in JSON and in Triton's binary extension give vitkit predict's numbers."""
    meta = client.get("/v2/models/colours").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert client.get("/v2/models/colours/ready").json()["ready"] is True
    assert client.get("/v2/health/live").json() == {"live": True}
    pre = Predictor.load(checkpoint).preprocess
    names = list(images)
    x = torch.stack([pre(Image.open(io.BytesIO(images[n]))) for n in names])  # (8, 3, 16, 16)

    def check(outputs: dict[str, np.ndarray | list]):
        probs, labels = outputs["probabilities"], outputs["label"]
        assert labels == [colour_of(n) for n in names]
        for n, row in zip(names, np.asarray(probs).reshape(len(names), len(CLASSES))):
            assert_close(dict(zip(CLASSES, row.tolist())), expected[colour_of(n)])

    fp32 = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.flatten().tolist()}
    r = client.post("/v2/models/colours/infer", json={"id": "a1", "inputs": [fp32]})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "a1" and r.json()["model_name"] == "colours"
    check({o["name"]: o["data"] for o in r.json()["outputs"]})
    raw = {"name": "raw", "datatype": "BYTES", "shape": [len(names)], "data": [b64(images[n]) for n in names]}
    r = client.post("/v2/models/colours/infer", json={"inputs": [raw], "outputs": [{"name": "label"}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]
    assert r.json()["outputs"][0]["data"] == [colour_of(n) for n in names]

    # Triton's binary tensor extension, as tritonclient sends it: FP32, then BYTES (length-prefixed) input.
    for inp, blob in ((dict(fp32, data=None), x.numpy().astype("<f4").tobytes()),
                      (dict(raw, data=None), b"".join(struct.pack("<I", len(images[n])) + images[n] for n in names))):
        del inp["data"]
        inp["parameters"] = {"binary_data_size": len(blob)}
        head = json.dumps({"inputs": [inp], "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                                        {"name": "label", "parameters": {"binary_data": True}}]})
        r = client.post("/v2/models/colours/infer", content=head.encode() + blob,
                        headers={"Inference-Header-Content-Length": str(len(head)),
                                 "Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        n = int(r.headers["Inference-Header-Content-Length"])
        reply, tail = json.loads(r.content[:n]), r.content[n:]
        outputs = {}
        for o in reply["outputs"]:
            size = o["parameters"]["binary_data_size"]
            chunk, tail = tail[:size], tail[size:]
            if o["datatype"] == "FP32":
                outputs[o["name"]] = np.frombuffer(chunk, "<f4").reshape(o["shape"])
            else:
                items, at = [], 0
                while at < len(chunk):
                    k = struct.unpack_from("<I", chunk, at)[0]
                    items.append(chunk[at + 4: at + 4 + k].decode())
                    at += 4 + k
                outputs[o["name"]] = items
        check(outputs)


# ------------------------------------------------------------------------------------------------------------
# Bad input


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


NOISE = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
BIG = os.urandom(int(LIMIT_MB * 2**20) + 1000)


def chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def one(name, data):
    return {"files": [("file", (name, data, "image/png"))]}


BAD = {  # case: (method, path, request arguments, status, words the error holds)
    "not an image": ("post", "/predict", one("notes.png", b"hello, not an image"), 400,
                     "notes.png is unreadable: not an image"),
    "truncated image": ("post", "/predict", one("cut.png", NOISE[:len(NOISE) // 2]), 400, "truncated"),
    "bomb (over PIL's limit)": ("post", "/predict", one("bomb.png", png_header(12_000, 12_000)), 400,
                                "decompression bomb"),
    "bomb (over twice the limit)": ("post", "/predict", one("bomb.png", png_header(30_000, 30_000)), 400,
                                    "decompression bomb"),
    "too large, with a length": ("post", "/predict", one("big.png", BIG), 413, "--max-upload-mb"),
    "too large, chunked": ("post", "/predict", {"content": chunks(b"--x\r\n" + BIG), "headers": {
        "content-type": "multipart/form-data; boundary=x"}}, 413, "--max-upload-mb"),
    "too large, JSON": ("post", "/predict", {"json": {"image": b64(BIG)}}, 413, "larger than"),
    "empty body": ("post", "/predict", {}, 400, "empty"),
    "empty JSON body": ("post", "/predict", {"content": b"", "headers": {"content-type": "application/json"}}, 400,
                        "empty"),
    "empty file": ("post", "/predict", one("nothing.png", b""), 400, "nothing.png is empty"),
    "no file": ("post", "/predict", {"content": b'--x\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n'
                                                b"--x--\r\n",
                                     "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, "no image"),
    "form, not multipart": ("post", "/predict", {"data": {"top_k": "3"}}, 415, "x-www-form-urlencoded"),
    "wrong content type": ("post", "/predict", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415,
                           "text/plain"),
    "malformed multipart": ("post", "/predict", {"content": b"abc", "headers": {"content-type": "multipart/form-data"}},
                            400, "multipart"),
    "invalid JSON": ("post", "/predict", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400,
                     "not valid JSON"),
    "JSON not an object": ("post", "/predict", {"json": ["abc"]}, 422, "must be an object"),
    "JSON unknown field": ("post", "/predict", {"json": {"imgs": ["abc"]}}, 422, "unknown field 'imgs'"),
    "JSON no image": ("post", "/predict", {"json": {"top_k": 2}}, 422, "give either"),
    "JSON images not a list": ("post", "/predict", {"json": {"images": "abc"}}, 422, "must be a list"),
    "JSON image not a string": ("post", "/predict", {"json": {"images": [3]}}, 422, "images[0] must be a base64"),
    "JSON bad base64": ("post", "/predict", {"json": {"image": "not base64!"}}, 400, "not valid base64"),
    "top_k out of range": ("post", "/predict", {"json": {"image": b64(NOISE), "top_k": 9}}, 422, "between 1 and 8"),
    "top_k not an integer": ("post", "/predict", {"json": {"image": b64(NOISE), "top_k": True}}, 422, "an integer"),
    "top_k query not an integer": ("post", "/predict?top_k=x", one("a.png", NOISE), 422, "an integer"),
    "unknown form field": ("post", "/predict", {**one("a.png", NOISE), "data": {"layer": "1"}}, 422,
                           "unknown form field"),
    "layer out of range": ("post", "/attention", {**one("a.png", NOISE), "data": {"layer": "2"}}, 422, "layers 0..1"),
    "layer below range": ("post", "/attention", {"json": {"image": b64(NOISE), "layer": -3}}, 422, "layers 0..1"),
    "head out of range": ("post", "/attention", {**one("a.png", NOISE), "data": {"head": "5"}}, 422, "heads 0..1"),
    "unknown format": ("post", "/attention", {"json": {"image": b64(NOISE), "format": "jpeg"}}, 422,
                       "'png' or 'array'"),
    "two images for attention": ("post", "/attention", {"json": {"images": [b64(NOISE)] * 2}}, 422, "one image"),
    "no such route": ("get", "/nope", {}, 404, "the routes are"),
    "wrong method": ("get", "/predict", {}, 405, "does not take GET"),
    "v2 unknown model": ("post", "/v2/models/other/infer", {"json": {}}, 404, "serves 'colours'"),
    "v2 wrong shape": ("post", "/v2/models/colours/infer", {"json": {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}]}}, 422, "[B, 3, 16, 16]"),
    "v2 data not fitting its shape": ("post", "/v2/models/colours/infer", {"json": {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0] * 5}]}}, 400, "does not fit"),
    "v2 wrong datatype": ("post", "/v2/models/colours/infer", {"json": {"inputs": [
        {"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}]}}, 422, "FP32"),
    "v2 NaN input": ("post", "/v2/models/colours/infer", {"content": b'{"inputs": [{"name": "x", "datatype": "FP32", '
                     b'"shape": [1, 3, 16, 16], "data": [' + b", ".join([b"NaN"] * 768) + b"]}]}",
                     "headers": {"content-type": "application/json"}}, 422, "NaN or infinite"),
    "v2 input too large for finite outputs": ("post", "/v2/models/colours/infer", {"json": {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [1e30] * 768}]}}, 422, "non-finite"),
    "v2 not an image": ("post", "/v2/models/colours/infer", {"json": {"inputs": [
        {"name": "x", "datatype": "BYTES", "shape": [1], "data": [b64(b"text")]}]}}, 400, "not an image"),
    "v2 unknown output": ("post", "/v2/models/colours/infer", {"json": {"inputs": [
        {"name": "x", "datatype": "BYTES", "shape": [1], "data": [b64(NOISE)]}], "outputs": [{"name": "logits"}]}},
        422, "unknown output"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_sentence_and_harmless(client, images, case):
    """Each bad request is a 4xx with {"error": one sentence}, and the next good request is answered."""
    method, path, kwargs, status, words = BAD[case]
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert words in body["error"] and "\n" not in body["error"] and len(body["error"]) < 400, body["error"]
    r = client.post("/predict", files=multipart({"red.png": images["red.png"]}))
    assert r.status_code == 200 and r.json()["predictions"][0]["top_k"][0]["class"] == "red"


def test_startup_errors_are_one_sentence(checkpoint, tmp_path, capsys):
    """A missing checkpoint and a port in use each exit 2 with one line on stderr."""
    assert vitkit_main(["serve", "--checkpoint", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit serve: error: checkpoint") and "\n" not in err
    taken = listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert vitkit_main(["serve", "--checkpoint", str(checkpoint), "--port", str(port), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"port {port} on 127.0.0.1 is in use" in err and "\n" not in err
    finally:
        taken.close()
    assert vitkit_main(["serve", "--checkpoint", str(checkpoint), "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err
    # Each option's own sentence (--port 70000 used to name --max-upload-mb too).
    assert vitkit_main(["serve", "--checkpoint", str(checkpoint), "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "vitkit serve: error: --port must be at most 65535 (0 picks a free " \
                                              "one), got 70000"
    assert vitkit_main(["serve", "--checkpoint", str(checkpoint), "--max-upload-mb", "0"]) == 2
    assert capsys.readouterr().err.strip() == "vitkit serve: error: --max-upload-mb must be positive, got 0"


# ------------------------------------------------------------------------------------------------------------
# A real server


@pytest.fixture(scope="module")
def server(checkpoint):
    """``vitkit serve``'s socket and uvicorn server on a free port of 127.0.0.1, in a thread; its URL."""
    settings = Settings(max_batch=16, max_wait_ms=20, max_upload_mb=LIMIT_MB, name=model_name(checkpoint))
    srv = make_server(create_app(Predictor.load(checkpoint), settings))
    sock = listen("127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(15)
    sock.close()


def test_concurrent_requests_are_batched_and_not_mixed_up(server, images, expected):
    """48 requests at once are all answered, each with its own image's class and probabilities, in fewer
    forward passes than requests."""
    order = [list(images)[k % len(images)] for k in range(48)]

    async def main():
        async with httpx.AsyncClient(base_url=server, timeout=60) as c:
            before = (await c.get("/health")).json()
            replies = await asyncio.gather(*(c.post("/predict", files=multipart({n: images[n]}),
                                                    params={"top_k": 8}) for n in order))
            return before, replies, (await c.get("/health")).json()

    before, replies, after = asyncio.run(main())
    assert [r.status_code for r in replies] == [200] * len(order)
    for name, r in zip(order, replies):
        p = r.json()["predictions"][0]
        assert p["image"] == name
        assert_close(probs_of(p), expected[colour_of(name)])
    assert after["images"] - before["images"] == len(order)
    assert after["batches"] - before["batches"] < len(order)


@pytest.mark.parametrize("count, kind", [(65, "multipart"), (1000, "multipart"), (65, "JSON")])
def test_too_many_images_is_one_limit_one_code_one_sentence(server, images, count, kind):
    """1000 multipart files were python-multipart's "Maximum number of files is 65" (400) while JSON was 413
    "at most 64": both are now 413 with the same sentence, and 64 files are taken."""
    with httpx.Client(base_url=server, timeout=60) as c:
        if kind == "multipart":
            r = c.post("/predict", files=[("file", (f"{i}.png", b"x", "image/png")) for i in range(count)])
        else:
            r = c.post("/predict", json={"images": [b64(b"x")] * count})
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error.startswith("the request holds ") and error.endswith(" images; at most 64 are taken at once")
        r = c.post("/predict", files=[("file", (f"{i}.png", images["red.png"], "image/png")) for i in range(64)])
        assert r.status_code == 200 and len(r.json()["predictions"]) == 64


def fp32_request(values, binary: bool = False) -> dict:
    """An Open Inference Protocol request of one FP32 [1, 3, 16, 16] input filled with ``values`` (cycled)."""
    data = (list(values) * 768)[:768]
    inp = {"name": "input", "datatype": "FP32", "shape": [1, 3, 16, 16]}
    if not binary:
        return {"content": json.dumps({"inputs": [{**inp, "data": data}]}).encode(),  # NaN, Infinity as JSON
                "headers": {"content-type": "application/json"}}
    head = json.dumps({"inputs": [{**inp, "parameters": {"binary_data_size": 4 * 768}}]}).encode()
    return {"content": head + np.asarray(data, "<f4").tobytes(),
            "headers": {"inference-header-content-length": str(len(head))}}


@pytest.mark.parametrize("values, binary", [([float("nan")], False), ([0.5, float("inf")], False),
                                            ([float("-inf")], True), ([1e30], False), ([-3e38, 3e38], True)],
                         ids=["nan", "inf", "binary-inf", "1e30", "binary-3e38"])
def test_oip_non_finite_or_absurd_inputs_are_a_4xx_and_valid_json(server, images, values, binary):
    """NaN or 1e30 FP32 inputs were HTTP 500 ("Out of range float values are not JSON compliant") with a
    traceback: non-finite inputs, and inputs that make the probabilities non-finite, are a 422 with one
    sentence; the service answers the next request as usual."""
    with httpx.Client(base_url=server, timeout=60) as c:
        r = c.post("/v2/models/colours/infer", **fp32_request(values, binary))
        assert r.status_code == 422, r.text
        error = json.loads(r.text)["error"]  # strict JSON: no NaN in the answer
        assert "\n" not in error and ("NaN or infinite" in error or "non-finite" in error), error
        ok = c.post("/v2/models/colours/infer", **fp32_request([0.25]))
        assert ok.status_code == 200 and all(math.isfinite(p) for p in ok.json()["outputs"][0]["data"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_finishes_the_requests_in_flight_says_so_and_exits(checkpoint, images, sig):
    """`vitkit serve` under systemd, docker or Kubernetes is stopped with SIGTERM: it died by the signal,
    silently, dropping requests. Now SIGTERM does what Ctrl-C does: the requests in flight (held by a long
    batching wait) are answered, it says so, accepts no new connection, and exits 143 (130 for SIGINT)."""
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(checkpoint), "--port", "0",
                             "--device", "cpu", "--max-wait-ms", "1500"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        url = re.search(r"at (http://\S+)", proc.stdout.readline()).group(1)

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                while True:  # the service answers once its model thread runs
                    try:
                        await c.get("/health")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
                names = list(images)[:6]
                sent = [asyncio.create_task(c.post("/predict", files=multipart({n: images[n]}))) for n in names]
                async with httpx.AsyncClient(base_url=url, timeout=60) as other:  # answered: the 6 were read
                    await other.get("/health")
                proc.send_signal(sig)
                replies = await asyncio.gather(*sent)
                return names, replies

        names, replies = asyncio.run(main())
        assert [r.status_code for r in replies] == [200] * 6
        assert [r.json()["predictions"][0]["top_k"][0]["class"] for r in replies] == [colour_of(n) for n in names]
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert lines[0] == f"vitkit serve: {sig.name} received: finishing the requests in flight and accepting no new ones"
    assert lines[1:] == (["vitkit serve: stopped (SIGTERM)"] if sig == signal.SIGTERM else ["vitkit serve: interrupted"])
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


# ------------------------------------------------------------------------------------------------------------
# The page in headless Chromium, driven over the DevTools protocol


class DevTools:
    """The least of the Chrome DevTools Protocol: JSON commands over a WebSocket (RFC 6455, text frames,
    client frames masked), events kept in ``events``. Written here to need no WebSocket package."""

    def __init__(self, url: str):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.id, self.events = 0, []

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("chromium closed the DevTools connection")
        return data

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        elif n < 1 << 16:
            head = bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
        else:
            head = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", n)
        masked = (np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(head + mask + masked)

    def _message(self) -> dict:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n >= 126:
                n = struct.unpack(">H" if n == 126 else ">Q", self._read(2 if n == 126 else 8))[0]
            payload = self._read(n)  # server frames are not masked
            if b0 & 0x0F == 8:
                raise ConnectionError("chromium closed the DevTools connection")
            if b0 & 0x0F in (0, 1, 2):
                parts.append(payload)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method: str, **params) -> dict:
        self.id += 1
        self._send(json.dumps({"id": self.id, "method": method, "params": params}))
        while True:
            msg = self._message()
            if msg.get("id") == self.id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.eval(expression):
                return value
            time.sleep(0.05)
        says = self.eval("document.body.dataset.state + ': ' + document.getElementById('error').textContent")
        raise AssertionError(f"timed out waiting for {expression}; the page says {says}")

    def errors(self) -> list:
        """Script errors, console.error calls and errors Chromium logged (a resource that failed to load)."""
        return [e for e in self.events
                if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


def test_page_in_chromium(server, image_files, tmp_path):
    """The page loads, an image chosen through its own file input gets its top-1, three decoded attention
    images and the patch-feature colours; moving the layer slider shows layer 0; nothing is logged as an error."""
    exe = chromium()
    profile, log = tmp_path / "profile", tmp_path / "chromium.log"
    with log.open("w") as err:
        proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                 f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"DevTools listening on (ws://\S+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        port = urllib.parse.urlparse(found.group(1)).port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        page = DevTools(target["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=server + "/")
        page.wait("document.body && document.body.dataset.state === 'idle'")
        assert page.eval("document.getElementById('meta').textContent").startswith("ViT 32-d, 2 layers, 2 heads")
        # Before an image is chosen, no image box shows a broken-image icon (nothing to show is not shown).
        shown_empty = json.loads(page.eval("""JSON.stringify([...document.querySelectorAll('img')].filter(
            i => !i.getAttribute('src') && getComputedStyle(i).display !== 'none'
                 && getComputedStyle(i).visibility !== 'hidden').map(i => i.id))"""))
        assert shown_empty == [], shown_empty
        red = next(p for p in image_files if p.name == "red.png")
        root = page.call("DOM.getDocument")["root"]["nodeId"]
        node = page.call("DOM.querySelector", nodeId=root, selector="input[type=file]")["nodeId"]
        page.call("DOM.setFileInputFiles", nodeId=node, files=[str(red)])
        page.wait("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'")
        shown = json.loads(page.eval("""JSON.stringify({
            state: document.body.dataset.state, error: document.getElementById('error').textContent,
            top1: document.getElementById('top1').textContent, bars: document.querySelectorAll('.bar').length,
            fills: [...document.querySelectorAll('.bar .fill')].map(f => f.getBoundingClientRect().width),
            widths: ['input', 'rollout', 'attention', 'features'].map(id => document.getElementById(id).naturalWidth),
            caption: document.getElementById('attention-caption').textContent})"""))
        assert shown["state"] == "done", shown["error"]
        assert shown["top1"].startswith("red ") and shown["bars"] == 5
        assert shown["fills"][0] > 100 and shown["fills"] == sorted(shown["fills"], reverse=True)  # bars drawn
        assert shown["widths"] == [224, 224, 224, 224]  # the patch-feature colours too
        assert shown["caption"] == "[CLS] attention, layer 1, mean of heads"
        page.eval("const l = document.getElementById('layer'); l.value = 0; l.dispatchEvent(new Event('input'))")
        page.wait("document.body.dataset.views === '2' && document.body.dataset.state === 'done'")
        assert page.eval("document.getElementById('attention-caption').textContent").endswith("layer 0, mean of heads")
        assert page.eval("document.getElementById('attention').naturalWidth") == 224
        assert page.errors() == []
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
