"""Load-test ``vitkit serve``: requests/s and p50/p95/p99 latency at 1, 8 and 64 concurrent clients, with and
without dynamic batching, against a real ``vitkit serve`` subprocess on 127.0.0.1. Prints one Markdown table.

    .venv/bin/python benchmarks/serve_load.py                       # ViT-Ti/16, 224 px, on the CPU
    .venv/bin/python benchmarks/serve_load.py --device cuda         # the same on a GPU
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/NAME/checkpoints/best

Without ``--checkpoint`` the model is ViT-Ti/16 at 224x224 (5.7 M parameters, 10 classes), freshly
initialised and saved to a temporary folder: speed does not depend on the weights. Each client uploads a
320x240 JPEG (one of 16, about 20 KB) as multipart to ``POST /predict`` and waits for the answer before
sending the next; each level sends a fixed number of requests (``--requests``, at least 4 per client) after
a short untimed warm-up, so the run ends by itself. Both servers (batching on and off) run side by side and
the two take turns at each level, so a change in the machine's other load falls on both alike. The clients run in this process (httpx, asyncio) on the
same machine as the server, so on a small CPU they take some of its cores: the numbers are for the pair.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def make_checkpoint(folder: Path, img_size: int) -> Path:
    from vitkit import create_model
    from vitkit.checkpoint import save_weights
    from vitkit.data.preprocess import Preprocess

    model = create_model("vit_tiny_patch16_224", num_classes=10, img_size=img_size)
    meta = {"classes": [f"class{k}" for k in range(10)], "preprocess": Preprocess((img_size, img_size)).to_dict()}
    return save_weights(model.eval(), folder / "vit_tiny", meta)


def make_images(n: int = 16) -> list[bytes]:
    """n distinct 320x240 JPEGs: smooth colour gradients with noise, like small photos."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320] / 320.0
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 255, (3, 3))
        img = a * x[..., None] + b * y[..., None] + c[None, None] * 0.5 + rng.normal(0, 8, (240, 320, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def start_server(checkpoint: Path, device: str, batching: bool, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(checkpoint), "--port", "0",
           "--device", device, *([] if batching else ["--no-batching"]), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    found = re.search(r"at (http://\S+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"serve_load.py: vitkit serve did not start ({line.strip() or 'no output'})")
    return proc, found.group(1)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully on SIGTERM as on Ctrl-C
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def load(url: str, images: list[bytes], clients: int, requests: int) -> dict:
    """``requests`` uploads by ``clients`` concurrent clients, each waiting for its answer before the next."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal next_index, errors
        while next_index < requests:
            k = next_index
            next_index += 1
            t = time.perf_counter()
            r = await c.post("/predict", files={"file": (f"{k}.jpg", images[k % len(images)], "image/jpeg")})
            latencies.append(time.perf_counter() - t)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        for k in range(min(clients, 8)):  # untimed warm-up: connections open, caches warm
            await c.post("/predict", files={"file": ("w.jpg", images[k % len(images)], "image/jpeg")})
        before = (await c.get("/health")).json()
        t = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t
        after = (await c.get("/health")).json()
    ms = np.array(latencies) * 1000
    batches = after["batches"] - before["batches"]
    return {"requests": requests, "errors": errors, "rps": requests / wall, "p50": np.percentile(ms, 50),
            "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "batch": (after["images"] - before["images"]) / max(batches, 1)}


def hardware(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    import torch

    line = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        line += f", GPU {torch.cuda.get_device_name()}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{line}; load average {load:.1f} at the start"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="a vitkit checkpoint (default: a fresh ViT-Ti/16 at --img-size)")
    p.add_argument("--img-size", type=int, default=224, help="input size of the default model (default 224)")
    p.add_argument("--device", default="cpu", help="the server's --device (default cpu)")
    p.add_argument("--clients", default="1,8,64", help="concurrency levels (default 1,8,64)")
    p.add_argument("--requests", type=int, default=64, help="requests per level, at least 4 per client (default 64)")
    p.add_argument("--serve-args", default="", help="more options for vitkit serve, e.g. '--max-batch 16'")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    extra = shlex.split(args.serve_args)
    command = " ".join(["python benchmarks/serve_load.py", *map(shlex.quote, argv or sys.argv[1:])])
    machine = hardware(args.device)
    print(f"hardware: {machine}", file=sys.stderr)
    images = make_images()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else make_checkpoint(Path(tmp), args.img_size)
        servers = {}
        try:
            for batching in (True, False):  # both up at once; the idle one takes no CPU
                servers[batching] = start_server(checkpoint, args.device, batching, extra)
            for clients in levels:  # the two modes alternate, so a change in the machine's load hits both
                for batching, (_, url) in servers.items():
                    r = asyncio.run(load(url, images, clients, max(args.requests, 4 * clients)))
                    results[batching, clients] = r
                    print(f"batching={batching} clients={clients}: {r['rps']:.1f} req/s, p50 {r['p50']:.0f} ms",
                          file=sys.stderr)
        finally:
            for proc, _ in servers.values():
                stop_server(proc)
    rows = [(batching, clients, results[batching, clients]) for batching in (True, False) for clients in levels]
    model = args.checkpoint or f"ViT-Ti/16 at {args.img_size}x{args.img_size} (5.7 M parameters, random weights)"
    print(f"Model: {model}; server: `vitkit serve --device {args.device} {args.serve_args}`".rstrip("` ") + "` "
          "(batching: --max-batch 32 --max-wait-ms 5 unless given); uploads: 320x240 JPEG, multipart, POST /predict.  ")
    print(f"Hardware: {machine}.  ")
    print(f"Command: `{command}`\n")
    print("| batching | clients | requests | requests/s | p50 ms | p95 ms | p99 ms | images per forward pass "
          "| errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for batching, clients, r in rows:
        mode = "on" if batching else "off (--no-batching)"
        print(f"| {mode} | {clients} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
              f"{r['p99']:.0f} | {r['batch']:.1f} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
