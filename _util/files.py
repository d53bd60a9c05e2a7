"""Small file helpers shared by the weights fingerprint, the caches, the model store, the run directories and
every output: content hashes, whether a writer is still alive, and the one way to replace a file atomically."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine (to tell a killed run's leftovers from a live
    one's). psutil, because ``os.kill(pid, 0)`` terminates the process on Windows."""
    import psutil

    return psutil.pid_exists(pid)


def stale_by_pid(name: str) -> bool:
    """True for a leftover named ``...-<pid>`` or ``...-<pid>.<suffix>`` (``.run.tmp-123``,
    ``.last.keras.tmp-123.keras``) whose process is gone."""
    pid = name.rsplit("-", 1)[-1].split(".", 1)[0]
    return pid.isdigit() and not pid_alive(int(pid))


def temporary_sibling(path: Path, suffix: str = "") -> Path:
    """``.<name>.tmp-<pid><suffix>`` next to ``path``: where ``path`` is written before it is renamed into
    place (the same folder, so the rename is atomic; the pid, so the next writer can tell a killed writer's
    leftover; ``suffix`` for a library that reads the format from the name)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def temporaries_glob(path: Path) -> str:
    """A glob (in ``path``'s folder) for the temporary siblings of ``path`` that any writer made."""
    return glob.escape(f".{path.name}.tmp-") + "*"


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to, with any library that wants a file name (h5py,
    pyarrow, numpy; Keras, with ``suffix=".keras"``); once the block ends without an error the file is
    flushed to disk and renamed over ``path``. On any error, or a kill, ``path`` keeps its previous content
    and the temporary goes."""
    path = Path(path)
    tmp = temporary_sibling(path, suffix)
    for left in path.parent.glob(temporaries_glob(path)):  # a killed writer's leftovers
        if stale_by_pid(left.name) and left.is_file():
            left.unlink(missing_ok=True)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_options: Any) -> Iterator[IO]:
    """``open(path, mode)`` that replaces ``path`` only once everything is written (see ``atomic_path``).
    ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        open_options.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **open_options) as fh:
        yield fh


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text)
