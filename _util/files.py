"""Small file helpers shared by the weights fingerprint, the caches, the model store, the run directories and
every output: the one way to read a file back (a regular file, checked without blocking, read with a size
bound), content hashes, whether a writer is still alive, and the one way to write an output (a regular file
replaced atomically, or a stream: a pipe, a terminal, ``/dev/...``)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

DOCUMENT_MAX_BYTES = 64 << 20  # a JSON or text document clothprobe wrote (manifest, metrics, record, catalog)
HEAD_BYTES = 1 << 16  # what an "is this file ours?" check reads of an existing output

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)
_STREAM_KINDS = (stat.S_ISFIFO, stat.S_ISCHR)  # what writing a stream to means: a pipe, a terminal, /dev/null
_STREAM_ROOTS = ("/dev", "/proc")  # a path there is a stream whatever it points at (/dev/stdout, /dev/fd/N)


class UnreadableFile(OSError):
    """A file clothprobe reads back is not a regular file, or is larger than such a file can be: the message
    (``str(err)``) says which, in words; ``kind`` is what the file is when it is not a regular one. An
    ``OSError``, so every reader's handling of an unreadable file applies."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


def kind_of(path: str | Path, mode: int) -> str:
    """What a file that is not a regular one is, in words (``mode``: its ``st_mode`` after following links):
    "a named pipe (FIFO)", "a symbolic link to /dev/zero, which is a character device"..."""
    kind = next((name for is_kind, name in _KINDS if is_kind(mode)), "of an unknown kind")
    return f"a symbolic link to {os.path.realpath(path)}, which is {kind}" if os.path.islink(path) else kind


def _not_regular(path: Path, mode: int) -> UnreadableFile:
    kind = kind_of(path, mode)
    return UnreadableFile(f"{path} is not a regular file but {kind}; clothprobe reads only regular files", kind)


@contextmanager
def open_regular(path: str | Path, *, limit: int | None = None) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading if it is a regular file (symbolic links followed) of at most
    ``limit`` bytes; ``UnreadableFile`` otherwise, ``FileNotFoundError`` when there is nothing.

    Checked before opening (a device is never opened) and again on the descriptor, opened without blocking:
    a FIFO put in place meanwhile cannot hang the caller, and ``/dev/zero`` is never read."""
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        if limit is not None and info.st_size > limit:
            raise UnreadableFile(f"{path} holds {info.st_size:,} bytes, more than the {limit:,} such a file can "
                                 f"hold; clothprobe did not write it")
        yield fh


def read_bytes(path: str | Path, limit: int = DOCUMENT_MAX_BYTES) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes (``open_regular``), even if it grows
    while read."""
    with open_regular(path, limit=limit) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"{path} grew past {limit:,} bytes while read; clothprobe did not write it")
    return data


def read_text(path: str | Path, limit: int = DOCUMENT_MAX_BYTES) -> str:
    """``read_bytes`` as UTF-8 text (``UnicodeDecodeError`` for other bytes)."""
    return read_bytes(path, limit).decode("utf-8")


def read_json(path: str | Path, limit: int = DOCUMENT_MAX_BYTES) -> Any:
    """A JSON document read with ``read_text`` (``ValueError`` when it is not JSON)."""
    return json.loads(read_text(path, limit))


def read_head(path: str | Path, size: int = HEAD_BYTES) -> bytes:
    """The first ``size`` bytes of the regular file ``path`` (what a check of an existing output reads)."""
    with open_regular(path) as fh:
        return fh.read(size)


def stream_kind(path: str | Path) -> str | None:
    """What ``path`` is when an output written there is a stream, in words: a pipe or FIFO (``>(...)`` gives
    ``/dev/fd/N``), a character device (a terminal, ``/dev/null``), or anything under ``/dev`` or ``/proc``
    (``/dev/stdout``: replacing it through a temporary file would replace the system's link); None for a
    regular file, a path that does not exist yet, or another kind of file."""
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    try:
        mode = os.stat(absolute).st_mode
    except OSError:
        mode = None
    if mode is not None and any(is_kind(mode) for is_kind in _STREAM_KINDS):
        return kind_of(absolute, mode)
    if _system_path(absolute):
        return f"a path under /{absolute.parts[1]}"
    return None


def _system_path(path: Path) -> bool:
    absolute = Path(os.path.abspath(path.expanduser()))
    return any(absolute.is_relative_to(root) for root in _STREAM_ROOTS)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a regular file (``open_regular``: never a FIFO or a device)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
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
    and the temporary goes. Whatever is at ``path`` is replaced (the caller checked what it may replace),
    except a path under ``/dev`` or ``/proc``: an error (``atomic_write(..., stream=True)`` writes streams)."""
    path = Path(path)
    if _system_path(path):
        raise OSError(f"{path} is a system path, not a file that can be replaced; give a file name")
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
def atomic_write(path: str | Path, mode: str = "w", *, stream: bool = False, **open_options: Any) -> Iterator[IO]:
    """``open(path, mode)`` that replaces ``path`` only once everything is written (see ``atomic_path``); with
    ``stream`` (an output ``check_output(..., stream=True)`` allowed), a stream (``stream_kind``: a pipe, a
    terminal, ``/dev/stdout``) is opened and written as the content comes, never replaced. ``mode`` is
    ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        open_options.setdefault("encoding", "utf-8")
    if stream and stream_kind(path):
        with open(path, mode, **open_options) as fh:
            yield fh
        return
    with atomic_path(path) as tmp, open(tmp, mode, **open_options) as fh:
        yield fh


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text)
