"""``vitkit serve``: load a checkpoint, bind the port, run the app under uvicorn until Ctrl-C or SIGTERM.

The socket is bound here, before uvicorn starts, so a port in use (or a host that is not this machine's) is
one sentence and exit 2 like every other person's error, and ``--port 0`` can pick a free port and say which.
"""

from __future__ import annotations

import argparse
import errno
import re
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, VitkitError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vitkit serve", description="Serve a checkpoint over HTTP: GET / (a page), /health, /info; POST "
        "/predict, /attention; the Open Inference Protocol v2 under /v2.")
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoints/best, a .safetensors file or a run")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                             "the network, and the service has no authentication)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--max-batch", type=int, default=32, help="images in one forward pass at most (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a request waits for others to batch with (default 5)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0,
                        help="the largest request body taken, in MiB (default 10)")
    parser.add_argument("--top-k", type=int, default=5, help="classes returned by default (default 5)")
    parser.add_argument("--no-batching", action="store_true", help="run each request alone")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    for name, value, low in (("--max-batch", args.max_batch, 1), ("--top-k", args.top_k, 1),
                             ("--max-wait-ms", args.max_wait_ms, 0), ("--port", args.port, 0)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if args.port > 65535:
        raise ConfigError(f"--port must be at most 65535 (0 picks a free one), got {args.port}")
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise VitkitError(f"vitkit serve needs FastAPI, uvicorn and python-multipart ({e}); "
                          "pip install 'vitkit[serve]'") from None

    with terminated_as_exception():
        try:
            return serve(args)
        except Terminated:  # while loading, or re-raised by uvicorn once the requests in flight are answered
            print("vitkit serve: stopped (SIGTERM)", file=sys.stderr, flush=True)
            return 143


def serve(args) -> int:
    """Load the checkpoint, bind the socket and serve until stopped (Ctrl-C: KeyboardInterrupt, which the
    dispatcher turns into exit 130)."""
    from ..predictor import Predictor
    from ..devices import pick_device
    from ..serve.app import create_app
    from ..serve.service import Settings

    predictor = Predictor.load(args.checkpoint, pick_device(args.device, no_gpu="use --device cpu (or auto)"))
    settings = Settings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, batching=not args.no_batching,
                        max_upload_mb=args.max_upload_mb, top_k=args.top_k, name=model_name(predictor.path))
    app = create_app(predictor, settings)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    cfg = predictor.model.config
    batching = (f"batches of up to {args.max_batch} within {args.max_wait_ms:g} ms" if settings.batching
                else "no batching")
    print(f"vitkit serve: {settings.name} (ViT {cfg.embed_dim}d x {cfg.depth}, {len(predictor.classes)} classes) "
          f"on {predictor.device}, {batching}, at {url}  (Ctrl-C or SIGTERM stops)", flush=True)
    server = make_server(app, access_log=args.access_log)
    server.run(sockets=[sock])
    if not server.started:
        raise VitkitError(f"the service at {url} did not start; uvicorn's log above says why")
    return 0


class Terminated(Exception):
    """SIGTERM arrived: the service stops as for Ctrl-C, and the command exits 143 (128 + 15)."""


@contextmanager
def terminated_as_exception():
    """SIGTERM raises :class:`Terminated` instead of killing the process. uvicorn handles the signal itself
    while it serves (finishing the requests in flight) and raises it again when it has stopped; with this
    handler in place that becomes an exception, so the command can say so and exit 143 (systemd, docker and
    Kubernetes stop services with SIGTERM)."""
    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def model_name(path: Path) -> str:
    """The model's name in /info and the /v2 routes: the run's folder name for ``RUN/checkpoints/*``, else
    the file's stem; characters other than letters, digits, '.', '_' and '-' become '-'."""
    from ..runs import Run

    run = Run.holding(path)
    name = run.path.name if run is not None else path.stem
    return re.sub(r"[^A-Za-z0-9._-]", "-", name) or "vitkit"


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a port in use or a foreign address is a VitkitError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise VitkitError(f"--host {host!r} is not an address or name this machine knows ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise VitkitError(f"port {port} on {host} is in use by another program; stop it or pass --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise VitkitError(f"--host {host} is not an address of this machine") from None
        if e.errno == errno.EACCES:
            raise VitkitError(f"port {port} needs privileges to listen on; pass --port 1024 or above") from None
        raise
    return sock


def make_server(app, access_log: bool = False):
    """A uvicorn server for ``app``; ``server.run(sockets=[listen(...)])`` serves until stopped. The first
    SIGINT or SIGTERM is announced on stderr: the service then accepts no new connection, finishes the
    requests in flight (10 s at most) and stops."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:
                print(f"vitkit serve: {signal.Signals(sig).name} received: finishing the requests in flight and "
                      "accepting no new ones", file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)

    return Server(uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on",
                                 timeout_graceful_shutdown=10))
