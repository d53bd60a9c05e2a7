"""A request's images: its body read within the server's limits, each image decoded by featurize's own decoder
(``featurize.images.decode_file``: the same pixels, pixel limit and reasons as ``cli featurize`` gives a file).

The body is one image (any ``image/*`` or ``application/octet-stream`` type, or none) or a
``multipart/form-data`` form with one or more files. It is counted while it streams: a declared
``Content-Length`` above the limit is refused before a byte is read, and a body that passes it on the way is
refused there (413), never buffered whole. Each upload keeps at most ``SPOOL_BYTES`` in memory; the rest is
spooled to a temporary file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from tempfile import SpooledTemporaryFile
from typing import BinaryIO

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message, Receive

from clothprobe.featurize.images import BadImage, decode_file
from clothprobe.serve.settings import SPOOL_BYTES, ServeSettings

RAW_TYPES = ("image/", "application/octet-stream")
FORM = "multipart/form-data"


class RequestError(Exception):
    """A request the server refuses: its HTTP status and the reason (a JSON error)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Upload:
    """One uploaded image: its file name (``None`` for a raw body) and its bytes, spooled."""

    name: str | None
    file: BinaryIO


def _too_large(settings: ServeSettings) -> RequestError:
    return RequestError(413, f"the upload is larger than the server's limit of {settings.max_upload_mb} MB "
                             f"(cli serve --max-upload-mb)")


def _counted(receive: Receive, settings: ServeSettings) -> Receive:
    """``receive`` that refuses the body as soon as it passes ``max_upload_mb``."""
    seen = 0

    async def receive_counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > settings.max_upload_bytes:
                raise _too_large(settings)
        return message

    return receive_counted


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _raw(request: Request) -> list[Upload]:
    upload = Upload(None, SpooledTemporaryFile(max_size=SPOOL_BYTES))  # noqa: SIM115 - the caller closes it
    try:
        async for chunk in request.stream():
            upload.file.write(chunk)
    except BaseException:
        upload.file.close()
        raise
    return [upload]


async def _form(request: Request, settings: ServeSettings) -> list[Upload]:
    form = await request.form(max_files=settings.max_files, max_fields=settings.max_files)
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        await form.close()
        raise RequestError(400, "the form holds no file; send the images as its file fields")
    return [Upload(f.filename, f.file) for f in files]


async def read_uploads(request: Request, settings: ServeSettings) -> list[Upload]:
    """The request's images, still encoded; ``RequestError`` for a body the server refuses. A client that goes
    away mid-upload raises ``ClientDisconnect``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != FORM and kind and not kind.startswith(RAW_TYPES):
        raise RequestError(415, f"a body of type {kind!r} is not an image; send one image (image/jpeg, image/png, "
                                f"... or application/octet-stream) or a {FORM} form of image files")
    declared = _declared_length(request)
    if declared is not None and declared > settings.max_upload_bytes:
        raise _too_large(settings)  # before reading a byte: a client that waits for 100-continue sends nothing
    counted = Request(request.scope, _counted(request.receive, settings))
    try:
        async with asyncio.timeout(settings.upload_timeout_s):
            return await (_form(counted, settings) if kind == FORM else _raw(counted))
    except TimeoutError:
        raise RequestError(408, f"the upload took longer than {settings.upload_timeout_s:g} s") from None


def decode_upload(upload: Upload, size: int, max_pixels: int) -> np.ndarray | str:
    """The image as featurize decodes it, or the reason it cannot be used."""
    try:
        return decode_file(upload.file, size, max_pixels)
    except BadImage as err:
        return str(err)
    finally:
        upload.file.close()

