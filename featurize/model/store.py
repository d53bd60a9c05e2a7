"""The compiled-model store: the model that actually runs, made once per recipe and kept.

``$CLOTHPROBE_HOME/models/<key>/`` (default ``~/.cache/clothprobe``) holds an OpenVINO IR
(``model.xml`` + ``model.bin``) or a Keras file (``model.keras``) and ``manifest.json``: the recipe it was
made from, the SHA-256 of every file, when it was made and last used, and the runtime self-checks done on
each machine. ``key`` is the fingerprint of the recipe the files embody (``artifact_recipe``): float32 and
bfloat16 OpenVINO recipes share one float IR (the precision is a compile setting), an int8 recipe has its
own quantized IR.

Safe with several processes: an entry is built under a per-key file lock in a temporary folder and
renamed into place, so a reader sees a whole entry or none; every file's hash is checked before it is
loaded, and an entry whose files differ from their manifest is refused (``cli cache prune`` removes it).
This module alone reads the manifest's keys.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clothprobe._util.files import file_sha256, stale_by_pid
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.recipe import Recipe

ENV_HOME = "CLOTHPROBE_HOME"
MANIFEST = "manifest.json"
STORE_VERSION = 1
LOCK_TIMEOUT_S = 3600  # another process building the same model (int8 quantization takes minutes)


def store_home() -> Path:
    """``$CLOTHPROBE_HOME``, else ``$XDG_CACHE_HOME/clothprobe``, else ``~/.cache/clothprobe``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "clothprobe"


def artifact_recipe(recipe: Recipe) -> Recipe:
    """The recipe whose files are stored for ``recipe``: OpenVINO compiles one float IR at float32 or
    bfloat16, so both share the float32 entry."""
    if recipe.runtime == "openvino" and recipe.precision == "bfloat16":
        return recipe.with_precision("float32")
    return recipe


@dataclass(frozen=True)
class SelfCheck:
    """A reduced-precision model checked against float32 on one machine (``featurize/model/selfcheck.py``)."""

    passed: bool
    cosine_min: float
    threshold: float
    images: int
    checked: float  # when, seconds since the epoch


@dataclass(frozen=True)
class RowsChoice:
    """Rows per inference request chosen by timing each candidate on one machine (``featurize/model/rows.py``)."""

    rows: int
    rates: dict[str, float]  # candidate rows -> images per second measured
    measured: float  # when, seconds since the epoch


@dataclass(frozen=True)
class AccuracyGuard:
    """An int8 model's accuracy on a labelled validation sample against its float reference
    (``featurize/model/guard.py``): ``passed`` when it lies inside the reference's 95% interval."""

    passed: bool
    accuracy: float
    reference: str  # the precision compared with
    reference_accuracy: float
    interval: tuple[float, float]
    images: int  # validation photos scored
    sample: str  # digest of the photos (train + validation) the guard used
    checked: float


@dataclass
class StoreEntry:
    """One stored model: ``files`` name -> SHA-256, ``checks`` "<precision> on <machine>" -> its self-check,
    ``rows`` "<precision> on <machine>" -> rows per request, ``guards`` (int8) "<sample digest>" -> accuracy
    guard, ``calibration`` (int8) the SHA-256 of each photo that calibrated it."""

    key: str
    path: Path
    recipe: Recipe
    files: dict[str, str]
    created: str
    last_used: float
    checks: dict[str, SelfCheck]
    rows: dict[str, RowsChoice] = field(default_factory=dict)
    guards: dict[str, AccuracyGuard] = field(default_factory=dict)
    calibration: tuple[str, ...] = ()

    @property
    def size_bytes(self) -> int:
        return sum((self.path / name).stat().st_size for name in self.files if (self.path / name).is_file())

    def file(self, name: str) -> Path:
        return self.path / name

    def verify(self) -> None:
        """Refuse the entry if any file is missing or differs from the hash it was stored with."""
        for name, expected in sorted(self.files.items()):
            path = self.path / name
            if not path.is_file() or file_sha256(path) != expected:
                why = "is missing" if not path.is_file() else "does not match the SHA-256 it was stored with"
                raise ClothprobeError(
                    f"Stored model {path} {why}; refusing to load it. Remove the entry with "
                    f"`cli cache prune --key {self.key}` and run again to rebuild it."
                )

    def to_manifest(self) -> dict[str, Any]:
        return {"store_version": STORE_VERSION, "key": self.key, "recipe": self.recipe.to_dict(),
                "files": self.files, "created": self.created, "last_used": self.last_used,
                "checks": {k: asdict(c) for k, c in self.checks.items()},
                "rows": {k: asdict(c) for k, c in self.rows.items()},
                "guards": {k: asdict(c) for k, c in self.guards.items()}, "calibration": list(self.calibration)}

    @classmethod
    def from_manifest(cls, path: Path, doc: dict[str, Any]) -> StoreEntry:
        if doc.get("store_version") != STORE_VERSION:
            raise ClothprobeError(f"{path / MANIFEST}: store version {doc.get('store_version')!r}, this "
                                  f"clothprobe reads {STORE_VERSION}; prune it with `cli cache prune --all`.")
        try:
            return cls(key=str(doc["key"]), path=path, recipe=Recipe.from_dict(doc["recipe"]),
                       files=dict(doc["files"]), created=str(doc["created"]), last_used=float(doc["last_used"]),
                       checks={k: SelfCheck(**c) for k, c in doc.get("checks", {}).items()},
                       rows={k: RowsChoice(**c) for k, c in doc.get("rows", {}).items()},
                       guards={k: AccuracyGuard(**{**c, "interval": tuple(c["interval"])})
                               for k, c in doc.get("guards", {}).items()},
                       calibration=tuple(doc.get("calibration", ())))
        except (KeyError, TypeError, ValueError, ClothprobeError) as err:
            raise ClothprobeError(f"{path / MANIFEST} is not a store manifest ({err}); prune it with "
                                  f"`cli cache prune --key {path.name}`.") from None


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class ModelStore:
    """The store under ``home`` (default: ``store_home()``)."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.home = Path(home) if home is not None else store_home()
        self.root = self.home / "models"

    def _dir(self, key: str) -> Path:
        return self.root / key

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.root / f"{key}.lock"), timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout:
            raise ClothprobeError(f"Waited {LOCK_TIMEOUT_S} s for another process building {self._dir(key)}; "
                                  f"is it stuck? Stop it, or remove {self.root / (key + '.lock')}.") from None

    def read(self, key: str) -> StoreEntry | None:
        """The entry for ``key`` if there is a finished one (not yet verified)."""
        directory = self._dir(key)
        try:
            doc = json.loads((directory / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise ClothprobeError(f"Cannot read {directory / MANIFEST} ({err}); prune it with "
                                  f"`cli cache prune --key {key}`.") from None
        return StoreEntry.from_manifest(directory, doc)

    def read_for(self, recipe: Recipe) -> StoreEntry | None:
        """The finished entry holding ``recipe``'s files, if any (not yet verified)."""
        return self.read(artifact_recipe(recipe).fingerprint)

    def get_or_build(self, recipe: Recipe, build: Callable[[Path], None], calibration: tuple[str, ...] = ()) -> StoreEntry:
        """The verified entry for ``recipe``'s files, building it with ``build(directory)`` if missing
        (``calibration``: the content hashes of the photos ``build`` calibrates on, kept in the manifest).
        Two processes asking at once: one builds, the other waits for the lock and reuses it."""
        key = artifact_recipe(recipe).fingerprint
        entry = self.read(key)
        if entry is None:
            with self._locked(key):
                entry = self.read(key) or self._build(key, artifact_recipe(recipe), build, calibration)
        entry.verify()
        self._touch(entry)
        return entry

    def _build(self, key: str, recipe: Recipe, build: Callable[[Path], None], calibration: tuple[str, ...]) -> StoreEntry:
        tmp = self.root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            entry = StoreEntry(key, self._dir(key), recipe, files, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               time.time(), {}, calibration=tuple(calibration))
            _write_json(tmp / MANIFEST, entry.to_manifest())
            os.replace(tmp, self._dir(key))
            return entry
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _touch(self, entry: StoreEntry) -> None:
        """Record the use (for pruning by age); best effort, never fatal for a read-only store."""
        entry.last_used = time.time()
        try:
            with self._locked(entry.key):
                _write_json(entry.path / MANIFEST, {**self._fresh(entry).to_manifest(), "last_used": entry.last_used})
        except OSError:
            pass

    def _fresh(self, entry: StoreEntry) -> StoreEntry:
        return self.read(entry.key) or entry

    def record_check(self, entry: StoreEntry, machine: str, check: SelfCheck) -> None:
        """Keep a runtime self-check's outcome in the entry, so it runs once per machine."""
        self._record(entry, "checks", machine, check)

    def record_rows(self, entry: StoreEntry, machine: str, choice: RowsChoice) -> None:
        """Keep the rows per request measured on ``machine``, so the timing runs once per machine."""
        self._record(entry, "rows", machine, choice)

    def record_guard(self, entry: StoreEntry, sample: str, guard: AccuracyGuard) -> None:
        """Keep an int8 accuracy guard's outcome, so it runs once per validation sample."""
        self._record(entry, "guards", sample, guard)

    def _record(self, entry: StoreEntry, section: str, key: str, value: Any) -> None:
        with self._locked(entry.key):
            fresh = self._fresh(entry)
            getattr(fresh, section)[key] = value
            _write_json(entry.path / MANIFEST, fresh.to_manifest())
        getattr(entry, section)[key] = value

    def entries(self) -> list[StoreEntry]:
        """Every finished entry (unreadable ones are listed by ``damaged``), newest use first."""
        found = []
        for directory in sorted(self.root.glob("*/")) if self.root.is_dir() else []:
            if directory.name.startswith("."):
                continue
            try:
                entry = self.read(directory.name)
            except ClothprobeError:
                continue
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: -e.last_used)

    def damaged(self) -> list[Path]:
        """Entry folders whose manifest cannot be read, and leftovers of killed builds."""
        if not self.root.is_dir():
            return []
        out = []
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if directory.name.startswith("."):
                if stale_by_pid(directory.name):
                    out.append(directory)
                continue
            try:
                if self.read(directory.name) is None:
                    out.append(directory)
            except ClothprobeError:
                out.append(directory)
        return out

    def prune(self, *, key: str | None = None, unused_days: float | None = None, everything: bool = False) -> list[Path]:
        """Remove one entry, those unused for ``unused_days``, or all; damaged entries and leftovers of
        killed builds always go. Returns what was removed."""
        removed = [p for p in self.damaged()]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
        cutoff = None if unused_days is None else time.time() - unused_days * 86400
        for entry in self.entries():
            if everything or entry.key == key or (cutoff is not None and entry.last_used < cutoff):
                removed.append(self.remove(entry.key))
        if key is not None and not any(p.name == key for p in removed):
            raise ClothprobeError(f"No stored model {key} in {self.root}; `cli cache list` shows what is there.")
        return removed

    def remove(self, key: str) -> Path:
        directory = self._dir(key)
        if not directory.is_dir():
            raise ClothprobeError(f"No stored model {key} in {self.root}; `cli cache list` shows what is there.")
        with self._locked(key):
            shutil.rmtree(directory)
        return directory

