"""Holds on an existing file that create nothing: ``flock`` on a descriptor opened read-only, so a reader can
hold a file on a read-only filesystem or in a folder it may not write. Several shared holds coexist; an
exclusive hold waits for all of them (and they for it). Where the platform has no ``flock`` (Windows), a
hold holds nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

POLL_S = 0.05


@contextmanager
def _hold(path: Path, exclusive: bool, timeout: float) -> Iterator[bool]:
    if fcntl is None:
        yield False
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        yield False  # nothing to hold (gone, or not ours to open)
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} stayed held by another process for {timeout:g} s") from None
                time.sleep(POLL_S)
        yield os.fstat(fd).st_nlink > 0  # False: removed while we waited (there is nothing left to hold)
    finally:
        os.close(fd)  # releases the hold


def shared_hold(path: str | Path, timeout: float) -> AbstractContextManager[bool]:
    """Hold ``path`` shared while the block runs (waits for an exclusive hold up to ``timeout`` s, then
    ``TimeoutError``); yields whether a hold is held (False: no such file, removed meanwhile, or no flock)."""
    return _hold(Path(path), False, timeout)


def exclusive_hold(path: str | Path, timeout: float) -> AbstractContextManager[bool]:
    """Hold ``path`` alone while the block runs, once every shared hold is released (``TimeoutError`` after
    ``timeout`` s); yields whether a hold is held."""
    return _hold(Path(path), True, timeout)

