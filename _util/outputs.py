"""The one check of a file a command is about to write (score files, report files, exports), made before any
work: never a folder, never one of the command's inputs, never a file of a clothprobe run, feature cache or
model store, and never an existing file that clothprobe did not write; its folder must exist."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from clothprobe.errors import ClothprobeError


def check_output(path: str | Path, *, option: str = "--output", inputs: Iterable[str | Path] = (),
                 ours: Callable[[Path], bool] | None = None) -> Path:
    """``path``, checked as a file this command may (re)write. ``inputs``: files the command reads (an output
    must not replace one). ``ours(path)``: whether an existing file at ``path`` is one this kind of output
    wrote before (a file it did not write is refused)."""
    path = Path(path).expanduser()
    where = f"{option} {path}"
    if path.is_dir():
        raise ClothprobeError(f"{where} is a folder; give a file name, e.g. {path / 'out'}.")
    if not path.absolute().parent.is_dir():
        raise ClothprobeError(f"{where}: the folder {path.absolute().parent} does not exist; create it or choose "
                              f"another path.")
    target = path.resolve()
    if any(target == Path(i).expanduser().resolve() for i in inputs):
        raise ClothprobeError(f"{where} is one of this command's inputs; refusing to overwrite it. Choose another path.")
    owner = _clothprobe_owner(target)
    if owner:
        raise ClothprobeError(f"{where} is inside {owner}; clothprobe never writes outputs there. Choose another path.")
    if path.exists() and not (ours is not None and ours(path)):
        raise ClothprobeError(f"{where} exists and was not written by this command; refusing to replace it. "
                              f"Move it away or choose another path.")
    return path


def _clothprobe_owner(target: Path) -> str:
    """What of clothprobe's own holds ``target`` ("" for nothing): a run directory, a feature cache, the store."""
    from clothprobe.featurize.cache.schema import probe
    from clothprobe.featurize.model.store import ModelStore
    from clothprobe.runs.directory import is_run

    if target.is_file() and probe(target).kind in ("cache", "other-schema"):
        return "a clothprobe feature cache (it is one)"
    for folder in target.parents:
        if is_run(folder):
            return f"the clothprobe run {folder}"
    store = ModelStore()
    if store.owns(target):
        return f"the clothprobe model store {store.home}"
    return ""
