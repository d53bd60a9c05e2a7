"""Decode any image a user is likely to have into an RGB uint8 square the backbone can take.

JPEG, PNG, WebP, BMP, GIF (first frame), TIFF; grayscale, CMYK, palette, 16-bit; alpha is flattened on
white; EXIF orientation is applied. A file that cannot be decoded raises ``BadImage`` with a reason a
person can act on, so the caller can skip it and report it. ``decode`` reads a path, ``decode_file`` an open
file object (an upload held in memory, ``clothprobe.serve``): the same code, limits and reasons.

Safety and memory:

- Only regular files are read (symbolic links are followed): a FIFO would block forever and a link to
  ``/dev/zero`` would never end. The check runs on the open descriptor, opened without blocking.
- ``max_pixels`` is checked on the header size, before any pixel is decoded. Pillow's own bomb guard
  is left as the application set it (library code changes no process-wide state): above
  ``PIL.Image.MAX_IMAGE_PIXELS`` Pillow warns, above twice it Pillow refuses before clothprobe can look,
  and the reason says so. ``allow_pixels`` is for applications (the CLI) that want ``--max-pixels`` to
  govern alone.
- Full-size pixels held by all decode threads together stay within ``DECODE_MEMORY_BUDGET``; 16-bit and
  float images are scaled to 8 bits strip by strip, without a full-size float copy.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clothprobe._util import files
from clothprobe._util.files import kind_of

DEFAULT_MAX_PIXELS = 50_000_000
RESIZE = "pil-bilinear"  # recorded in the cache: a different resize would give different embeddings

IGNORED_NAMES = {"Thumbs.db", "desktop.ini"}

# Bytes per pixel a decode may hold at its peak: an alpha image is the image, its RGBA view and the white
# background, 4 bytes a pixel each (Pillow keeps RGB as 4). Other modes need less.
PEAK_BYTES_PER_PIXEL = 12
# Full-size pixel memory all decode threads may hold at once: 1 GiB, so decoding stays well under the
# 2 GB the README promises whatever the number of threads. An image above it waits and decodes alone.
DECODE_MEMORY_BUDGET = 1 << 30
STRIP_PIXELS = 1 << 18  # 16-bit and float images are scaled to 8 bits this many pixels at a time

class BadImage(Exception):
    """This file cannot be used; the message says why."""


def is_ignored(name: str) -> bool:
    """Hidden files (``.DS_Store``, ``._x.jpg``) and OS clutter are not images anyone meant to add."""
    return name.startswith(".") or name in IGNORED_NAMES


def _kind_reason(kind: str) -> str:
    return f"not a regular file: {kind}; skipped without opening it"


def not_regular_reason(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file (after following symbolic links), or ``None`` if it is one.

    Never opens the file: opening a FIFO blocks until a writer comes, and reading ``/dev/zero`` never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "file not found (removed during the run?)"
    except OSError as err:
        return f"cannot read: {err.strerror or err}"
    return None if stat.S_ISREG(mode) else _kind_reason(kind_of(path, mode))


@contextmanager
def open_regular(path: str | Path) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading, or ``BadImage`` if it is not a regular file.

    Opened without blocking and checked on the open descriptor, so a FIFO or device put in place after a
    directory scan cannot hang the caller either.
    """
    reason = not_regular_reason(path)
    if reason:
        raise BadImage(reason)
    with contextlib.ExitStack() as stack:
        try:
            fh = stack.enter_context(files.open_regular(path))
        except files.UnreadableFile as err:
            raise BadImage(_kind_reason(err.kind or str(err))) from None
        except OSError as err:
            raise BadImage(f"cannot read: {err.strerror or err}") from None
        yield fh


def allow_pixels(max_pixels: int) -> None:
    """For applications only: raise Pillow's process-wide ``PIL.Image.MAX_IMAGE_PIXELS`` to ``max_pixels``.

    Then Pillow's bomb guard (a warning above the limit, an error above twice it) never refuses an image
    that ``decode(..., max_pixels)`` accepts, and ``max_pixels`` governs alone. It never lowers the limit
    nor re-enables a disabled one (``None``). clothprobe's library code does not call it.
    """
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


class MemoryBudget:
    """Bytes that threads may hold at once; ``hold(n)`` waits until ``n`` fits. A request above the whole
    budget waits until nothing else is held and then runs alone, so it cannot wait forever."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        nbytes = min(nbytes, self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self.in_use + nbytes <= self.capacity)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = MemoryBudget(DECODE_MEMORY_BUDGET)


def _flatten_alpha(im: Image.Image) -> Image.Image:
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _scaled_gray(im: Image.Image, top: float) -> Image.Image:
    """A 16/32-bit integer or float image as 8-bit gray, ``v / top * 255`` rounded and clipped.

    Strip by strip: the only full-size array is the 8-bit result, never a float64 copy of the image.
    """
    width, height = im.size
    out = np.empty((height, width), np.uint8)
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for y in range(0, height, rows):
        strip = np.asarray(im.crop((0, y, width, min(y + rows, height))), dtype=np.float64)
        out[y : y + rows] = np.clip(strip / top * 255.0 + 0.5, 0, 255)  # float to uint8 truncates, as astype
    return Image.fromarray(out)


def _gray_top(im: Image.Image) -> float | None:
    """The value that maps to white for 16/32-bit integer and float modes; ``None`` for other modes."""
    if im.mode.startswith("I;16"):
        return 65535.0
    if im.mode == "I":
        return 65535.0 if im.getextrema()[1] > 255 else 255.0
    if im.mode == "F":
        return 1.0 if im.getextrema()[1] <= 1.0 else 255.0
    return None


def to_rgb_square(im: Image.Image, size: int) -> Image.Image:
    """Any Pillow mode as an 8-bit RGB ``size`` x ``size`` square: alpha on white, 16/32-bit scaled, not
    clipped. Single-channel images are resized in gray and only then made RGB (same pixels, a third of
    the memory)."""
    box = (size, size)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        return _flatten_alpha(im).resize(box, Image.BILINEAR)
    top = _gray_top(im)
    if top is not None:
        gray = _scaled_gray(im, top)
    elif im.mode in ("1", "L"):
        gray = im.convert("L")
    else:
        return im.convert("RGB").resize(box, Image.BILINEAR)
    return gray.resize(box, Image.BILINEAR).convert("RGB")


def _check_pixels(im: Image.Image, max_pixels: int) -> None:
    width, height = im.size
    if width * height > max_pixels:
        raise BadImage(
            f"{width}x{height} pixels is above the limit of {max_pixels:,} "
            f"(decompression-bomb guard); raise it with --max-pixels if the file is genuine"
        )


def _refused_by_pillow(max_pixels: int) -> BadImage:
    """Pillow refuses images above twice ``MAX_IMAGE_PIXELS`` when opening them, before our own check."""
    hard = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels <= hard:  # above our own limit too: the usual reason
        return BadImage(f"more than {hard:,} pixels, above the limit of {max_pixels:,} (decompression-bomb "
                        f"guard); raise it with --max-pixels if the file is genuine")
    return BadImage(
        f"more than {hard:,} pixels: within --max-pixels {max_pixels:,} but above Pillow's own limit "
        f"(twice PIL.Image.MAX_IMAGE_PIXELS), which library code leaves as the application set it; "
        f"the application raises it with clothprobe.featurize.images.allow_pixels({max_pixels})"
    )


def decode(path: str | Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image at ``path`` as a ``(size, size, 3)`` uint8 array, or ``BadImage`` with the reason."""
    with open_regular(path) as fh:
        return decode_file(fh, size, max_pixels)


def decode_file(fh: BinaryIO, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image in the open, seekable binary file ``fh`` (a file, or ``io.BytesIO`` of an upload) as
    ``decode`` makes it: the same checks, reasons and pixels."""
    try:
        if fh.seek(0, os.SEEK_END) == 0:
            raise BadImage("empty file (0 bytes)")
        fh.seek(0)
        with Image.open(fh) as im:
            _check_pixels(im, max_pixels)  # header size, before any pixel is decoded
            im.seek(0)  # first frame of an animation
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # DCT-domain downscale: faster, still >= size
            width, height = im.size
            with DECODE_BUDGET.hold(width * height * PEAK_BYTES_PER_PIXEL):
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                return np.asarray(to_rgb_square(im, size), dtype=np.uint8)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read (unknown or corrupt format)") from None
    except Image.DecompressionBombError:
        raise _refused_by_pillow(max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadImage(f"cannot decode: {err}") from None
