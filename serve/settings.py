"""The limits of a server (``cli serve`` options), checked once against ``_util/bounds.py``.

Memory is bounded by them: at most ``max_requests`` requests are in the server at once, each holding at most
``SPOOL_BYTES`` of its upload in memory (the rest is spooled to a temporary file) and refused with 413 as soon
as it passes ``max_upload_mb``; decoding holds full-size pixels within featurize's own memory budget; at most
``max_queue`` decoded images wait for the model, and the model runs ``max_batch`` at a time.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from clothprobe._util.bounds import check_options
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS

SPOOL_BYTES = 1 << 20  # an upload's bytes kept in memory; beyond, a temporary file holds them
DEFAULT_TOP_K = 3
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServeSettings:
    """``max_upload_mb``: one request's body (413 beyond, refused while it streams); ``max_pixels``: images
    above are refused as featurize refuses them (decompression bombs); ``max_batch``: images the model runs at
    once (memory grows with it: a CNN's activations, some 90 MB an image for Xception at 299 px);
    ``batch_window_ms``: how long the first image of a batch waits for others while more requests are
    arriving; ``max_queue``: decoded images waiting for the model (503 beyond); ``max_requests``: requests in
    the server at once (503 beyond); ``max_files``: images in one request; ``threads``: onnxruntime's threads
    (default: every CPU of this process); ``upload_timeout_s``: the longest a request may take to send its body
    (408 beyond: a client that stalls cannot hold its place for ever)."""

    max_upload_mb: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 4
    batch_window_ms: float = 5.0
    max_queue: int = 256
    max_requests: int = 128
    max_files: int = 64
    threads: int | None = None
    upload_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        check_options(**asdict(self))

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20

    @property
    def model_threads(self) -> int:
        return self.threads or default_threads()
