"""The report folder: the one module that decides which files ``cli report --out`` may write or replace.

A report writes ``index.html``, ``report.md`` and ``img/*.png`` into its folder, which may hold other things
(a site the user keeps the report in). It replaces only files it wrote itself: ``.clothprobe-report.json``
(``RECORD``) lists each file a report wrote with its SHA-256 (``files``), and a file is replaced only when
it is listed there with the content it was written with. Any other existing file at one of those names (a
user's own ``index.html``, or a report file edited since) is refused, with one line, before anything is
written. So is a folder that is or lies in a dataset (a run's image folder, or a folder with a dataset's
layout: a new ``img/`` would become a class).

A report is written in three steps, so that a kill or a full disk at any moment leaves a folder the next
report recognises as its own: the record first, listing the files as they are and, under ``pending``, the
content each is about to get; then each file, to a temporary sibling renamed into place (``_util.files``);
then the files an earlier report wrote that this one does not (a dataset gone) are removed, and the record
is written again without ``pending``. A report stopped half-way is a mix of the old and the new one, and
rerunning ``cli report`` replaces it whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from clothprobe._util.files import atomic_write, file_sha256, read_json, write_text_atomic
from clothprobe._util.outputs import check_output
from clothprobe.errors import ClothprobeError

RECORD = ".clothprobe-report.json"
RECORD_VERSION = 1


def _read_record(folder: Path) -> dict[str, set[str]]:
    """The files an earlier report wrote here, or was writing when it stopped (relative name -> the SHA-256
    values it may have); {} when there is no record or it is not one of ours (then nothing is taken as ours)."""
    try:
        doc = read_json(folder / RECORD)
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("clothprobe_report") != RECORD_VERSION:
        return {}
    found: dict[str, set[str]] = {}
    for key in ("files", "pending"):
        listed = doc.get(key, {})
        for name, digest in (listed.items() if isinstance(listed, dict) else ()):
            if isinstance(name, str) and isinstance(digest, str) and _inside(name):
                found.setdefault(name, set()).add(digest)
    return found


def _inside(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and name != RECORD


def _bytes(content: str | bytes) -> bytes:
    return content if isinstance(content, bytes) else content.encode("utf-8")


@dataclass
class ReportFolder:
    """``folder`` planned for ``contents`` (relative path -> text or bytes): ``plan`` checks every target
    before any write, ``write`` writes them all."""

    folder: Path
    contents: dict[str, bytes]
    _ours: dict[str, str] = field(default_factory=dict)  # files here now that a report wrote -> their SHA-256

    @classmethod
    def plan(cls, folder: str | Path, contents: dict[str, str | bytes],
             datasets: tuple[str | Path, ...] = ()) -> ReportFolder:
        """Check ``folder`` and every file to write, before anything is written. ``datasets``: image folders
        the report must stay out of (its runs' data roots)."""
        from clothprobe.featurize.dataset import dataset_holding

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ClothprobeError(f"--out {folder} is a file; give a folder for the report.")
        dataset = dataset_holding(folder, datasets)
        if dataset is not None:
            raise ClothprobeError(f"--out {folder} is inside the dataset folder {dataset}; a report there would add "
                                  f"files (a class img/) to the dataset. Give a folder outside it, e.g. reports.")
        plan = cls(folder, {name: _bytes(c) for name, c in contents.items()})
        earlier = _read_record(folder)
        plan._ours = {name: digest for name in earlier if (digest := plan._digest(name)) in earlier[name]}
        ready = sorted(contents, key=lambda n: not (folder / n).parent.is_dir())  # those checkable now first
        for name in ready:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            check_output(folder / name, option="--out", ours=lambda p, n=name: n in plan._ours)
        check_output(folder / RECORD, option="--out", ours=lambda p: True)  # a regular file (or none), never a FIFO
        return plan

    def _digest(self, name: str) -> str | None:
        """The SHA-256 of the regular file ``name`` in the folder, None when there is none (or it is not one)."""
        try:
            return file_sha256(self.folder / name)
        except OSError:
            return None

    def write(self) -> dict[str, Path]:
        """Every planned file, then the removal of an earlier report's files this one does not hold (unchanged
        ones only); the record before and after (see the module docstring). Returns name -> path."""
        new = {name: hashlib.sha256(content).hexdigest() for name, content in self.contents.items()}
        self._record(files=self._ours, pending=new)
        written = {}
        for name, content in self.contents.items():
            with atomic_write(self.folder / name, "wb") as fh:
                fh.write(content)
            written[name] = self.folder / name
        for name in sorted(set(self._ours) - set(new)):
            if self._digest(name) == self._ours[name]:
                (self.folder / name).unlink()
        self._record(files=new)
        return written

    def _record(self, *, files: dict[str, str], pending: dict[str, str] | None = None) -> None:
        doc = {"clothprobe_report": RECORD_VERSION, "files": dict(sorted(files.items()))}
        if pending is not None:
            doc["pending"] = dict(sorted(pending.items()))
        write_text_atomic(self.folder / RECORD, json.dumps(doc, indent=2) + "\n")
