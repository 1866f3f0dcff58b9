"""``vitkit serve``: a checkpoint behind HTTP (FastAPI + uvicorn), with dynamic batching and a web page.

The command is :mod:`vitkit.commands.serve`. Modules, one job each: :mod:`~vitkit.serve.app` (routes and errors),
:mod:`~vitkit.serve.oip` (Open Inference Protocol v2 routes), :mod:`~vitkit.serve.service` (what the routes
do), :mod:`~vitkit.serve.batching` (the model thread), :mod:`~vitkit.serve.inputs` (reading requests and
decoding uploads), :mod:`~vitkit.serve.render` (attention PNGs), and ``page.html``.

FastAPI is imported only when the service is built, so ``import vitkit.serve`` works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..predictor import Predictor
    from .service import Settings


def create_app(predictor: Predictor, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving a :class:`vitkit.predictor.Predictor` (see :func:`vitkit.serve.app.create_app`)."""
    from .app import create_app as create
    from .service import Settings

    return create(predictor, settings or Settings())


__all__ = ["create_app"]
