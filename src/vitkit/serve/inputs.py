"""What a request carries, checked: its images (multipart files, or base64 strings in a JSON body) and a few
options. The bytes of an image are decoded by :func:`vitkit.data.images.open_image`, as files are.

Anything wrong is a :class:`RequestError`, an HTTP status with one sentence, which the app answers as
``{"error": "..."}``. :class:`BodyLimit` refuses an over-size body by its Content-Length before reading it,
and one without a length (chunked) as soon as it has read past the limit.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request


MAX_IMAGES = 64  # images in one request: a bound on the memory one request can take once decoded
EXPECTED = ('multipart/form-data (image files) or application/json ({"image": "<base64>"} or '
            '{"images": ["<base64>", ...]})')


class RequestError(Exception):
    """A request the service cannot answer: ``status`` (4xx) and a one-sentence message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    """One image of a request, still encoded: its name (file name, or ``images[i]``) and bytes."""

    name: str
    data: bytes


async def read_request(request: Request, options: dict[str, type]) -> tuple[list[Upload], dict[str, Any]]:
    """The images of a multipart or JSON request and its ``options`` (name -> int or str; from form fields,
    JSON fields or the query string), checked for type but not range."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = {k: _convert(k, v, options[k]) for k, v in request.query_params.items() if k in options}
    if media == "multipart/form-data":
        uploads, opts = await _read_form(request, options)
    elif media == "application/json":
        body = await request.body()
        if not body:
            raise RequestError(400, f"the request body is empty; expected {EXPECTED}")
        uploads, opts = await run_in_threadpool(_read_json, body, options)
    elif not await request.body():
        raise RequestError(400, f"the request body is empty; expected {EXPECTED}")
    else:
        raise RequestError(415, f"the request is {media or 'of no content type'}; expected {EXPECTED}")
    if not uploads:
        raise RequestError(400, f"the request holds no image; expected {EXPECTED}")
    if len(uploads) > MAX_IMAGES:
        raise too_many_images(len(uploads))
    return uploads, {**query, **opts}


async def _read_form(request: Request, options: dict[str, type]) -> tuple[list[Upload], dict[str, Any]]:
    try:
        form = await request.form(max_files=MAX_IMAGES, max_fields=len(options) + 4)
    except (MultiPartException, HTTPException) as e:  # starlette raises the parser's error as an HTTP 400
        message = getattr(e, "message", None) or getattr(e, "detail", None) or str(e)
        if message.startswith("Too many files"):  # the parser stops at the limit: the same answer as JSON's
            raise too_many_images(f"more than {MAX_IMAGES}") from None
        raise RequestError(400, f"the multipart body is malformed ({message})") from None
    uploads, opts = [], {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(Upload(value.filename or key, await value.read()))
            elif key in options:
                opts[key] = _convert(key, value, options[key])
            else:
                raise RequestError(422, f"unknown form field {key!r}; expected image files"
                                   + (f" and {', '.join(options)}" if options else ""))
    finally:
        await form.close()
    return uploads, opts


def _read_json(body: bytes, options: dict[str, type]) -> tuple[list[Upload], dict[str, Any]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise RequestError(422, f'the JSON body must be an object such as {{"images": ["<base64>"]}}, '
                                f"not {type(doc).__name__}")
    allowed = ["image", "images", *options]
    for key in doc:
        if key not in allowed:
            raise RequestError(422, f"unknown field {key!r}; expected {', '.join(allowed)}")
    if ("image" in doc) == ("images" in doc):
        raise RequestError(422, 'give either "image" (one base64 string) or "images" (a list of them)')
    if "image" in doc:
        items = [("image", doc["image"])]
    elif isinstance(doc["images"], list):
        items = [(f"images[{i}]", s) for i, s in enumerate(doc["images"])]
    else:
        raise RequestError(422, f'"images" must be a list of base64 strings, not {type(doc["images"]).__name__}')
    if len(items) > MAX_IMAGES:
        raise too_many_images(len(items))
    opts = {}
    for key, kind in options.items():
        if key in doc:
            value = doc[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise RequestError(422, f'"{key}" must be {_kind(kind)}, got {json.dumps(value)}')
            opts[key] = value
    return [Upload(name, b64decode(s, name)) for name, s in items], opts


def too_many_images(count) -> RequestError:
    """The one answer to a request of too many images, multipart or JSON: 413 and one sentence."""
    return RequestError(413, f"the request holds {count} images; at most {MAX_IMAGES} are taken at once")


def b64decode(s: Any, name: str) -> bytes:
    """The bytes of a base64 string (a ``data:`` URL's prefix and line breaks allowed)."""
    if not isinstance(s, str):
        raise RequestError(422, f"{name} must be a base64 string, got {type(s).__name__}")
    if s.startswith("data:"):
        s = s.partition(",")[2]
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{name} is not valid base64") from None


def _convert(key: str, value: str, kind: type):
    if kind is int:
        try:
            return int(value)
        except ValueError:
            raise RequestError(422, f"{key} must be an integer, got {value!r}") from None
    return value


def _kind(kind: type) -> str:
    return "an integer" if kind is int else "a string"


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413. A declared Content-Length is
    judged before a byte is read; a body without one is cut off once it passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            status, msg = (413, self.too_large()) if length.isdigit() else (400, "the Content-Length is not a number")
            body = json.dumps({"error": msg}).encode()
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestError(413, self.too_large())
            return message

        await self.app(scope, limited_receive, send)

    def too_large(self) -> str:
        return (f"the request body is larger than the {self.max_bytes / 2**20:g} MiB this service takes "
                "(vitkit serve --max-upload-mb)")
