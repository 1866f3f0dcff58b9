"""Downloads against a local HTTP server on 127.0.0.1: md5, retries, resume after a cut, atomic rename."""

import hashlib
import io
import pickle
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from conftest import require_data

from vitkit.data import download
from vitkit.data import load_dataset
from vitkit.data.download import download_dataset, download_url
from vitkit.errors import DataError


class Server:
    """Serves ``files`` (name -> bytes). Modes per name: 'ok'; 'cut' (first response stops half way and the
    connection is closed); 'always-cut'; 'no-range' (ignores Range, always 200). Records every Range header."""

    def __init__(self):
        self.files, self.modes, self.ranges, self.hits = {}, {}, [], {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                if name not in server.files:
                    self.send_error(404)
                    return
                data, mode = server.files[name], server.modes.get(name, "ok")
                server.hits[name] = server.hits.get(name, 0) + 1
                rng = self.headers.get("Range")
                server.ranges.append((name, rng))
                start = int(rng[len("bytes="):-1]) if rng and mode != "no-range" else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = mode == "always-cut" or (mode == "cut" and server.hits[name] == 1)
                self.wfile.write(body[: len(body) // 2] if cut else body)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _blob(n=300_000, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_download_verifies_md5_and_renames(server, tmp_path):
    data = _blob()
    server.files["a.bin"] = data
    out = download_url(f"{server.url}/a.bin", tmp_path / "a.bin", hashlib.md5(data).hexdigest(), backoff=0)
    assert out.read_bytes() == data and not (tmp_path / "a.bin.part").exists()
    # A second call finds the verified file and does not fetch again.
    download_url(f"{server.url}/a.bin", tmp_path / "a.bin", hashlib.md5(data).hexdigest(), backoff=0)
    assert server.hits["a.bin"] == 1


def test_cut_connection_is_resumed_with_a_range_request(server, tmp_path):
    data = _blob(seed=1)
    server.files["b.bin"], server.modes["b.bin"] = data, "cut"
    download_url(f"{server.url}/b.bin", tmp_path / "b.bin", hashlib.md5(data).hexdigest(), backoff=0)
    assert (tmp_path / "b.bin").read_bytes() == data
    assert server.ranges == [("b.bin", None), ("b.bin", f"bytes={len(data) // 2}-")]


def test_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    data = _blob(seed=2)
    server.files["c.bin"], server.modes["c.bin"] = data, "no-range"
    (tmp_path / "c.bin.part").write_bytes(b"stale bytes from an old attempt")
    download_url(f"{server.url}/c.bin", tmp_path / "c.bin", hashlib.md5(data).hexdigest(), backoff=0)
    assert (tmp_path / "c.bin").read_bytes() == data


def test_wrong_md5_deletes_and_raises(server, tmp_path):
    server.files["d.bin"] = _blob(seed=3)
    with pytest.raises(DataError, match=r"d.bin has md5 [0-9a-f]{32}, expected 0{32}; the file was deleted"):
        download_url(f"{server.url}/d.bin", tmp_path / "d.bin", "0" * 32, backoff=0)
    assert list(tmp_path.iterdir()) == []


def test_retries_exhausted_keeps_part_and_never_creates_the_file(server, tmp_path):
    data = _blob(seed=4)
    server.files["e.bin"], server.modes["e.bin"] = data, "always-cut"
    with pytest.raises(DataError, match="e.bin failed after 3 attempts"):
        download_url(f"{server.url}/e.bin", tmp_path / "e.bin", hashlib.md5(data).hexdigest(), retries=2, backoff=0)
    assert not (tmp_path / "e.bin").exists()
    part = (tmp_path / "e.bin.part").read_bytes()
    assert 0 < len(part) < len(data) and data.startswith(part)  # each attempt appended the next half
    server.modes["e.bin"] = "ok"  # the next call resumes the partial file
    download_url(f"{server.url}/e.bin", tmp_path / "e.bin", hashlib.md5(data).hexdigest(), backoff=0)
    assert (tmp_path / "e.bin").read_bytes() == data and server.ranges[-1] == ("e.bin", f"bytes={len(part)}-")


def test_http_404_fails_at_once(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        download_url(f"{server.url}/missing.bin", tmp_path / "m.bin", retries=5, backoff=10)


def test_fashion_mnist_download_from_a_mirror_then_load(server, tmp_path):
    root = require_data("fashion-mnist")
    for name in download.RESOURCES["fashion-mnist"]["files"]:
        server.files[name] = (root / name).read_bytes()
    server.modes["t10k-images-idx3-ubyte.gz"] = "cut"
    download_dataset("fashion-mnist", tmp_path / "fm", mirrors=[f"{server.url}/nowhere", server.url], backoff=0)
    test = load_dataset("fashion-mnist", root=tmp_path / "fm", split="test")
    assert len(test) == 10_000 and torch.bincount(test.labels).tolist() == [1000] * 10


def test_cifar10_archive_download_extract_and_load(server, tmp_path, monkeypatch):
    buf = io.BytesIO()
    rng = np.random.default_rng(5)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            payload = pickle.dumps({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 7]},
                                   protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    archive = buf.getvalue()
    server.files["cifar-10-python.tar.gz"] = archive
    monkeypatch.setitem(download.RESOURCES, "cifar10", {"mirrors": [server.url], "extract": True,
                        "files": {"cifar-10-python.tar.gz": hashlib.md5(archive).hexdigest()}})
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path))
    with pytest.raises(DataError, match="fetch it with --set data.download=true"):
        load_dataset("cifar10")
    ds = load_dataset("cifar10", download=True)
    assert len(ds) == 10 and ds.labels.tolist() == [1, 7] * 5 and (tmp_path / "cifar-10" / "cifar-10-batches-py").is_dir()
