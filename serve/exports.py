"""What ``cli serve`` serves: an exported ``.onnx`` file as it is, or a run directory exported once into the
model store's home (``$CLOTHPROBE_HOME/exports/<digest>.onnx``) and reused while the run is unchanged.

The export runs ``cli export RUN --out FILE.onnx`` in a child process, so the server process never imports
TensorFlow or OpenVINO. The digest covers the run's manifest (which holds the sha256 of every other file of
the run), the precision asked for and clothprobe's version: a run fitted again, or another clothprobe, gets a
new export. Two servers starting on one run export it once (a lock per digest); the file appears by an
atomic rename, so a killed export leaves nothing half-written under its name. ``prune_exports`` (``cli cache
prune --all``) removes those files, and only those: a name this module gives, or a killed export's leftover.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from clothprobe import __version__
from clothprobe.errors import ClothprobeError
from clothprobe.export.contract import PRECISIONS
from clothprobe.featurize.model.store import store_home
from clothprobe.runs.directory import MANIFEST, is_run, read_manifest, verify

EXPORTS = "exports"
SUFFIX = ".onnx"
_OURS = re.compile(r"\.?(?P<digest>[0-9a-f]{16})(\.tmp-[0-9]+)?\.onnx")  # _cached_export's files, its leftovers


def export_digest(run: Path, precision: str | None) -> str:
    """The run's content (its manifest), the precision asked for and clothprobe's version, as 16 hex digits."""
    h = hashlib.sha256((run / MANIFEST).read_bytes())
    h.update(f"\0{precision or 'default'}\0{__version__}".encode())
    return h.hexdigest()[:16]


def _export(run: Path, out: Path, precision: str | None) -> None:
    command = [sys.executable, "-m", "clothprobe.cli", "export", str(run), "--out", str(out)]
    if precision:
        command += ["--precision", precision]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        said = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise ClothprobeError(f"Exporting the run {run} for serving failed ({said[-1] if said else done.returncode}); "
                              f"`cli export {run} --out FILE.onnx` shows it, and `cli serve FILE.onnx` serves a file.")


def model_file(target: str | Path, *, precision: str | None = None, home: str | Path | None = None,
               on_export: Callable[[str], None] | None = None) -> Path:
    """The ``.onnx`` file to serve for ``target`` (a file written by ``cli export``, or a run directory, exported
    with ``precision`` when one is given, else as ``cli export`` exports by default). ``home``: the model
    store's home (default ``$CLOTHPROBE_HOME``); ``on_export(line)`` hears when an export is made, and how long
    it took."""
    target = Path(target).expanduser()
    if precision is not None and precision not in PRECISIONS:
        raise ClothprobeError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if target.is_dir() and is_run(target):
        return _cached_export(target, precision, Path(home) if home else store_home(), on_export or (lambda _: None))
    if target.is_file() and target.suffix.lower() == SUFFIX:
        if precision is not None:
            raise ClothprobeError(f"--precision is for a run directory; {target} is already exported (its metadata "
                                  f"says which precision). Export the run again with `cli export` to change it.")
        return target
    raise ClothprobeError(f"{target} is neither a run directory (written by cli fit or cli e2e) nor an exported "
                          f"{SUFFIX} file (written by cli export); give one of them.")


def _cached_export(run: Path, precision: str | None, home: Path, say: Callable[[str], None]) -> Path:
    verify(run, read_manifest(run))  # a run changed after fitting is refused, not exported
    folder = home / EXPORTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{export_digest(run, precision)}{SUFFIX}"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return path
        say(f"exporting {run} once for serving (reused while the run is unchanged): {path}")
        start = time.perf_counter()
        tmp = folder / f".{path.stem}.tmp-{os.getpid()}{SUFFIX}"
        try:
            _export(run, tmp, precision)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        say(f"exported in {time.perf_counter() - start:.1f} s")
    return path


def prune_exports(home: str | Path | None = None) -> list[Path]:
    """Remove the runs exported for serving under ``home`` (default ``$CLOTHPROBE_HOME``) that no server is
    exporting now; files of any other name there are the user's and stay. Returns what was removed."""
    folder = (Path(home) if home else store_home()) / EXPORTS
    if folder.is_symlink() or not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        ours = _OURS.fullmatch(path.name)
        if not ours or path.is_symlink() or not path.is_file():
            continue
        try:
            with FileLock(str(folder / f"{ours['digest']}{SUFFIX}.lock")).acquire(timeout=0):  # held: being exported
                path.unlink(missing_ok=True)
                removed.append(path)
        except TimeoutError:
            continue
    return removed
