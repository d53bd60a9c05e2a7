"""The HTTP application (Starlette): one exported model, micro-batched.

- ``POST /predict`` (``?k=`` top classes, default 3): one image as the body, or a ``multipart/form-data`` form
  of image files; per image its top-k, every class's probability, the answer and, for a file with a reject
  option, ``unknown`` and the open-set score. An image that cannot be decoded is reported in its place.
- ``GET /healthz``: liveness and load; ``GET /metadata``: what the file says about itself, and the limits;
  ``GET /``: a page to drop photos on (``page.py``).

Every refusal is JSON ``{"error": reason}`` with its status: 400 (bad image, bad ``k``), 404, 405, 408 (a
stalled upload), 413 (too large), 415 (not an image type), 503 (too many requests or images waiting, with
``Retry-After``), 500 (the model failed). The server goes on serving after each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from clothprobe.runs.predicting import UNKNOWN
from clothprobe.serve.batcher import MicroBatcher, QueueFull
from clothprobe.serve.decode import RequestError, Upload, decode_upload, read_uploads
from clothprobe.serve.model import OnnxModel, Scores
from clothprobe.serve.page import PAGE
from clothprobe.serve.settings import DEFAULT_TOP_K, ServeSettings

RETRY_AFTER_S = 1


class Serving:
    """The application's state: the model, its batcher, the decoding threads and the requests inside."""

    def __init__(self, model: OnnxModel, settings: ServeSettings) -> None:
        self.model, self.settings = model, settings
        self.batcher = MicroBatcher(model.run, max_batch=settings.max_batch,
                                    window_s=settings.batch_window_ms / 1000, max_queue=settings.max_queue)
        self.decoders = anyio.CapacityLimiter(settings.model_threads)
        self.requests = 0

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        if self.requests >= self.settings.max_requests:
            raise RequestError(503, f"the server is handling {self.requests} requests (at most "
                                    f"{self.settings.max_requests}); try again in a moment")
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1

    async def decode(self, uploads: list[Upload]) -> list[np.ndarray | str]:
        size, max_pixels = self.model.size, self.settings.max_pixels
        return list(await asyncio.gather(*(anyio.to_thread.run_sync(decode_upload, u, size, max_pixels,
                                                                    limiter=self.decoders) for u in uploads)))


def _top_k(request: Request, classes: int) -> int:
    given = request.query_params.get("k")
    if given is None:
        return min(DEFAULT_TOP_K, classes)
    if not given.isdigit() or not 1 <= int(given) <= classes:
        raise RequestError(400, f"k must be a whole number from 1 to {classes} (the model's classes), got {given!r}")
    return int(given)


def answer(name: str | None, scores: Scores, classes: tuple[str, ...], k: int) -> dict:
    """One image's entry in a /predict answer."""
    p = scores.probabilities
    top = [{"class": classes[i], "probability": float(p[i])} for i in np.argsort(-p, kind="stable")[:k]]
    return {"file": name, "answer": UNKNOWN if scores.unknown else top[0]["class"], "unknown": scores.unknown,
            "openset_score": scores.openset_score, "top": top,
            "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)}}


def _undecodable(uploads: list[Upload], images: list[np.ndarray | str]) -> RequestError:
    if len(uploads) == 1:
        return RequestError(400, f"the upload cannot be used as an image: {images[0]}")
    named = "; ".join(f"{u.name}: {why}" for u, why in zip(uploads, images, strict=True))
    return RequestError(400, f"none of the {len(uploads)} files can be used as an image ({named})")


async def predict(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    info = serving.model.info
    k = _top_k(request, len(info.classes))
    uploads: list[Upload] = []
    with serving.admitted():
        try:
            with serving.batcher.arriving_request():
                uploads = await read_uploads(request, serving.settings)
                images = await serving.decode(uploads)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        finally:
            for upload in uploads:
                upload.file.close()
        good = [im for im in images if isinstance(im, np.ndarray)]
        if not good:
            raise _undecodable(uploads, images)
        scores = iter(await serving.batcher.submit(good))
    rows = [answer(u.name, next(scores), info.classes, k) if isinstance(im, np.ndarray) else
            {"file": u.name, "error": im} for u, im in zip(uploads, images, strict=True)]
    return JSONResponse({"run": info.run, "predictions": rows})


async def healthz(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    b = serving.batcher
    return JSONResponse({"status": "ok", "requests": serving.requests, "arriving": b.arriving, "queued": b.queued,
                         "batches": b.batches, "images": b.images, "process": os.getpid()})


async def metadata(request: Request) -> Response:
    serving: Serving = request.app.state.serving
    return JSONResponse({**asdict(serving.model.info), "limits": asdict(serving.settings)})


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def _refused(request: Request, err: Exception) -> Response:
    if isinstance(err, QueueFull):
        return _error(503, str(err), {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(err, HTTPException):
        allowed = (err.headers or {}).get("Allow")
        reason = (f"{request.method} is not allowed on {request.url.path}; use {allowed}" if allowed else
                  f"{err.detail}: {request.url.path}")
        return _error(err.status_code, reason, err.headers)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if err.status == 503 else None
    if err.status in (408, 413):  # the rest of the body is not wanted: closing stops the client sending it
        headers = {"Connection": "close"}
    return _error(err.status, err.reason, headers)


async def _failed(request: Request, err: Exception) -> Response:
    return _error(500, f"the model failed on this request ({type(err).__name__}: {str(err)[:200]})")


def create_app(model: OnnxModel, settings: ServeSettings | None = None) -> Starlette:
    """The application serving ``model`` within ``settings`` (default limits when None)."""
    serving = Serving(model, settings or ServeSettings())
    routes = [Route("/", page, methods=["GET"]), Route("/predict", predict, methods=["POST"]),
              Route("/healthz", healthz, methods=["GET"]), Route("/metadata", metadata, methods=["GET"])]
    handlers = {RequestError: _refused, QueueFull: _refused, HTTPException: _refused, Exception: _failed}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=serving.lifespan)
    app.state.serving = serving
    return app
