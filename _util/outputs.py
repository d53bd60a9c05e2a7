"""The one check of a file a command is about to write (score files, report files, exports), made before any
work: never a folder, never one of the command's inputs, never a file of a clothprobe run, feature cache or
model store, and never an existing file that clothprobe did not write; its folder must exist.

A path that is not a regular file is never opened to read (a FIFO would hang the check, ``/dev/zero`` would
never end): a pipe, a FIFO, a terminal or a path under ``/dev`` (``>(...)``, ``/dev/stdout``) is a stream,
which a command that can write one writes as it comes (``stream=True``) and any other command refuses in
one line; a socket or a device of another kind is always refused."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from clothprobe._util.files import kind_of, stream_kind
from clothprobe.errors import ClothprobeError


def check_output(path: str | Path, *, option: str = "--output", inputs: Iterable[str | Path] = (),
                 ours: Callable[[Path], bool] | None = None, stream: bool = False) -> Path:
    """``path``, checked as a file this command may (re)write. ``inputs``: files the command reads (an output
    must not replace one). ``ours(path)``: whether an existing regular file at ``path`` is one this kind of
    output wrote before (a file it did not write is refused); never called for anything else. ``stream``:
    the command writes a stream (``_util.files.stream_kind``) as it comes, instead of refusing it."""
    path = Path(path).expanduser()
    where = f"{option} {path}"
    if _is_stream(path, where, stream):
        return path
    if path.is_dir():
        raise ClothprobeError(f"{where} is a folder; give a file name, e.g. {path / 'out'}.")
    if not path.absolute().parent.is_dir():
        raise ClothprobeError(f"{where}: the folder {path.absolute().parent} does not exist; create it or choose "
                              f"another path.")
    target = path.resolve()
    if any(target == Path(i).expanduser().resolve() for i in inputs):
        raise ClothprobeError(f"{where} is one of this command's inputs; refusing to overwrite it. Choose another path.")
    owner = owner_of(target)
    if owner:
        raise ClothprobeError(f"{where} is inside {owner}; clothprobe never writes outputs there. Choose another path.")
    if path.exists() and not (ours is not None and ours(path)):
        raise ClothprobeError(f"{where} exists and was not written by this command; refusing to replace it. "
                              f"Move it away or choose another path.")
    return path


def _is_stream(path: Path, where: str, allowed: bool) -> bool:
    """Whether ``path`` is a stream this command writes; an error for one it cannot write, or for a file that
    is neither a stream nor a regular file (a socket, a block device)."""
    kind = stream_kind(path)
    if kind is None:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return False  # nothing there yet (or a broken link: refused by the checks that follow)
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            return False
        raise ClothprobeError(f"{where} is {kind_of(path, mode)}; give a file name.")
    if not allowed:
        raise ClothprobeError(f"{where} is {kind}, not a regular file; this command writes a file it can replace "
                              f"whole. Give a file name.")
    if not os.path.exists(path):
        raise ClothprobeError(f"{where} does not exist; give a file name, or a pipe or device that exists.")
    return True


def owner_of(target: Path) -> str:
    """What of clothprobe's own holds ``target`` (resolved; "" for nothing): a feature cache (it is one), or
    ``folder_owner``'s run or store. Every command that writes a file it does not own refuses such a place."""
    from clothprobe.featurize.cache.schema import probe

    if target.is_file() and probe(target).kind in ("cache", "other-schema"):
        return "a clothprobe feature cache (it is one)"
    return folder_owner(target)


def folder_owner(target: Path) -> str:
    """Which clothprobe folder holds ``target`` (resolved; "" for none): a run directory, or the model store's
    own files (``ModelStore.owns``)."""
    from clothprobe.featurize.model.store import ModelStore
    from clothprobe.runs.directory import is_run

    for folder in target.parents:
        if is_run(folder):
            return f"the clothprobe run {folder}"
    store = ModelStore()
    if store.owns(target):
        return f"the clothprobe model store {store.home}"
    return ""
