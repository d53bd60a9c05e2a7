"""Decode any image a user is likely to have into an RGB uint8 square the backbone can take.

JPEG, PNG, WebP, BMP, GIF (first frame), TIFF; grayscale, CMYK, palette, 16-bit; alpha is flattened on
white; EXIF orientation is applied. A file that cannot be decoded raises ``BadImage`` with a reason a
person can act on, so the caller can skip it and report it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
RESIZE = "pil-bilinear"  # recorded in the cache: a different resize would give different embeddings

IGNORED_NAMES = {"Thumbs.db", "desktop.ini"}


class BadImage(Exception):
    """This file cannot be used; the message says why."""


def is_ignored(name: str) -> bool:
    """Hidden files (``.DS_Store``, ``._x.jpg``) and OS clutter are not images anyone meant to add."""
    return name.startswith(".") or name in IGNORED_NAMES


def _flatten_alpha(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha on white, 16/32-bit integer scaled, not clipped."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    ):
        return _flatten_alpha(im)
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return im.convert("RGB")


def decode(path: str | Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image at ``path`` as a ``(size, size, 3)`` uint8 array, or ``BadImage`` with the reason."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise BadImage(
                        f"{width}x{height} pixels is above the limit of {max_pixels:,} "
                        f"(decompression-bomb guard); raise it with --max-pixels if the file is genuine"
                    )
                im.seek(0)  # first frame of an animation
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))  # DCT-domain downscale: faster, still >= size
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = to_rgb(im).resize((size, size), Image.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"too large: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadImage(f"cannot decode: {err}") from None
