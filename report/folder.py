"""The report folder: the one module that decides which files ``cli report --out`` may write or replace.

A report writes ``index.html``, ``report.md`` and ``img/*.png`` into its folder, which may hold other things
(a site the user keeps the report in). It replaces only files it wrote itself: ``.clothprobe-report.json``
(``RECORD``) lists each file a report wrote with its SHA-256, and a file is replaced only when it is listed
there with the content it was written with. Any other existing file at one of those names (a user's own
``index.html``, or a report file edited since) is refused, with one line, before anything is written. Each
file is written to a temporary sibling and renamed into place (``_util.files``); files an earlier report
wrote that this one does not (a dataset gone) are removed, and the record is written last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clothprobe._util.files import atomic_write, file_sha256, write_text_atomic
from clothprobe._util.outputs import check_output
from clothprobe.errors import ClothprobeError

RECORD = ".clothprobe-report.json"
RECORD_VERSION = 1


def _read_record(folder: Path) -> dict[str, str]:
    """The files an earlier report wrote here (relative name -> SHA-256); {} when there is no record or it is
    not one of ours (then nothing is taken as ours)."""
    try:
        doc = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    files = doc.get("files") if isinstance(doc, dict) and doc.get("clothprobe_report") == RECORD_VERSION else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str) and _inside(k)}


def _inside(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and name != RECORD


@dataclass
class ReportFolder:
    """``folder`` planned for ``names`` (relative paths): ``plan`` checks every target before any write."""

    folder: Path
    names: list[str]
    _earlier: dict[str, str] = field(default_factory=dict)
    _written: dict[str, str] = field(default_factory=dict)

    @classmethod
    def plan(cls, folder: str | Path, names: list[str]) -> ReportFolder:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ClothprobeError(f"--out {folder} is a file; give a folder for the report.")
        plan = cls(folder, names, _read_record(folder))
        ready = sorted(names, key=lambda n: not (folder / n).parent.is_dir())  # those checkable now first
        for name in ready:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            check_output(folder / name, option="--out", ours=lambda p, n=name: plan._ours(n))
        return plan

    def _ours(self, name: str) -> bool:
        path = self.folder / name
        return name in self._earlier and path.is_file() and file_sha256(path) == self._earlier[name]

    def write(self, name: str, content: str | bytes) -> Path:
        if name not in self.names:
            raise ValueError(f"{name} was not planned")
        path = self.folder / name
        if isinstance(content, bytes):
            with atomic_write(path, "wb") as fh:
                fh.write(content)
        else:
            write_text_atomic(path, content)
        self._written[name] = file_sha256(path)
        return path

    def finish(self) -> None:
        """Remove what an earlier report wrote and this one did not (unchanged files only); write the record."""
        for name in sorted(set(self._earlier) - set(self._written)):
            if self._ours(name):
                (self.folder / name).unlink()
        record = {"clothprobe_report": RECORD_VERSION, "files": dict(sorted(self._written.items()))}
        write_text_atomic(self.folder / RECORD, json.dumps(record, indent=2) + "\n")
