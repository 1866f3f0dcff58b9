"""The HTTP service: the page, health and model description, predictions, attention and patch features, and the Open
Inference Protocol routes (:mod:`vitkit.serve.oip`), over one :class:`~vitkit.serve.service.Service`.

Every error is answered as ``{"error": "one sentence"}`` with a 4xx status (a 5xx only for a bug), and the
service goes on answering: bad input is refused before it reaches the model.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import VitkitError
from ..predictor import Predictor
from . import oip
from .inputs import BodyLimit, RequestError, read_request
from .service import Service, Settings

ROUTES = "GET /, /health, /info, /v2/models/{name}; POST /predict, /attention, /features, /v2/models/{name}/infer"


def create_app(predictor: Predictor, settings: Settings = Settings()) -> FastAPI:
    """The FastAPI app serving ``predictor``; its model thread runs while the app's lifespan does."""
    service = Service(predictor, settings)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            service.stop()

    # No /docs: Swagger UI loads its scripts from a CDN, which this service must not depend on.
    app = FastAPI(title="vitkit serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_upload_mb * 2**20))
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        """{"status": "ok", "batches", "images"}: 200 while the model thread runs, else 503."""
        w = service.worker
        return JSONResponse({"status": "ok" if w.alive else "down", "batches": w.batches, "images": w.images},
                            200 if w.alive else 503)

    @app.get("/info")
    async def info():
        """Architecture, classes, image size, preprocessing, vitkit version, device and batching."""
        return service.info()

    @app.post("/predict")
    async def predict(request: Request):
        """Multipart files, or JSON {"image"|"images": base64, "top_k"} -> {"predictions": [{"image",
        "top_k": [{"class", "probability"}]}]}, the numbers of ``vitkit predict --json``."""
        uploads, opts = await read_request(request, {"top_k": int})
        return {"predictions": await service.classify(uploads, opts.get("top_k"))}

    @app.post("/attention")
    async def attention(request: Request):
        """One image (multipart or JSON) with ``layer`` (default the last), ``head`` (default the mean of
        the heads) and ``format`` (png or array) -> rollout and [CLS] attention (see Service.attention)."""
        uploads, opts = await read_request(request, {"layer": int, "head": int, "format": str})
        if len(uploads) != 1:
            raise RequestError(422, f"/attention takes one image, got {len(uploads)}")
        return await service.attention(uploads[0], opts.get("layer", -1), opts.get("head"),
                                       opts.get("format", "png"))

    @app.post("/features")
    async def features(request: Request):
        """One image (multipart or JSON) with ``format`` (png or array) -> its patch features' first three
        principal components as colours, and with ``array`` the features themselves (see Service.features)."""
        uploads, opts = await read_request(request, {"format": str})
        if len(uploads) != 1:
            raise RequestError(422, f"/features takes one image, got {len(uploads)}")
        return await service.features(uploads[0], opts.get("format", "png"))

    oip.add_routes(app, service)
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        return _error(e.status, e.message)

    @app.exception_handler(VitkitError)
    async def vitkit_error(request: Request, e: VitkitError):  # an image that cannot be decoded
        return _error(400, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        if e.status_code == 404:
            return _error(404, f"there is no {request.url.path}; the routes are {ROUTES}")
        if e.status_code == 405:
            return _error(405, f"{request.url.path} does not take {request.method}; the routes are {ROUTES}")
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        return _error(500, f"internal error ({type(e).__name__}: {e}); this is a bug in vitkit serve")
