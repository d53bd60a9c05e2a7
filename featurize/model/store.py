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
A process loading an entry holds it (``in_use``: a shared hold on the entry's marker, opened read-only,
``_util/holds.py``), so a prune waits for it. This module alone reads the manifest's keys.

Read-only ground: a store baked into a container image or on a shared mount is used without writing to it.
A reader creates no file in the store (a hold creates nothing); what it would record there (the time of
last use, a runtime self-check, the rows per request measured, OpenVINO's compiled blobs) is recorded only
where the store is writable, and is otherwise kept for this process alone.

Hostile ground: the store deletes only what it provably made. An entry is a folder directly under
``models/`` named by a key (16 hex digits) holding the store's marker file (``MARKER``) and a manifest
whose ``key`` is the folder's name and whose file names are plain names inside the folder; anything else
there (a folder a user or another program put under ``$CLOTHPROBE_HOME/models``) is listed as foreign
and never removed. ``compiled/`` (OpenVINO's compile cache) is a folder the store made and marked
(``COMPILE_MARKER``); ``prune --all`` removes the ``.blob`` files OpenVINO wrote there. A ``compiled/`` the
store did not make (a project folder's own, with ``CLOTHPROBE_HOME`` set to the project) is never used
nor touched: OpenVINO then compiles without a cache.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clothprobe._util.files import file_sha256, read_json, stale_by_pid, write_text_atomic
from clothprobe._util.holds import exclusive_hold, shared_hold
from clothprobe._util.settings import folder_setting, usable_folder
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.recipe import Recipe

ENV_HOME = "CLOTHPROBE_HOME"
MANIFEST = "manifest.json"
MARKER = ".clothprobe-store-entry"  # written first into every entry the store builds
MARKER_TEXT = "a clothprobe model store entry; `cli cache prune` may remove this folder\n"
COMPILED = "compiled"  # OpenVINO's compile cache (CACHE_DIR): *.blob files
COMPILE_MARKER = ".clothprobe-compile-cache"  # written into compiled/ by the store that made it
COMPILE_MARKER_TEXT = "OpenVINO's compile cache of a clothprobe model store; `cli cache prune --all` clears it\n"
STORE_VERSION = 1
_KEY = re.compile(r"[0-9a-f]{16}")
_LEFTOVER = re.compile(r"\.[0-9a-f]{16}\.tmp-[0-9]+")  # a build's temporary folder (``_build``)
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
LOCK_TIMEOUT_S = 3600  # another process building the same model (int8 quantization takes minutes)


def store_home() -> Path:
    """``$CLOTHPROBE_HOME``, else ``$XDG_CACHE_HOME/clothprobe``, else ``~/.cache/clothprobe``."""
    if os.environ.get(ENV_HOME):
        return folder_setting(os.environ[ENV_HOME], ENV_HOME)
    if os.environ.get("XDG_CACHE_HOME"):
        return folder_setting(os.environ["XDG_CACHE_HOME"], "XDG_CACHE_HOME") / "clothprobe"
    return Path.home() / ".cache" / "clothprobe"


def check_key(key: object, where: str) -> str:
    """A store key as read from a manifest or given on the command line: 16 hex digits, nothing else (never
    a path)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ClothprobeError(f"{where}: a store key is 16 hex digits (from `cli cache list`), got {key!r}.")
    return key


def _check_files(files: object, where: str) -> dict[str, str]:
    """The manifest's ``files``: plain file names inside the entry (no folders, no ``..``) -> SHA-256."""
    if not isinstance(files, dict) or not files:
        raise ValueError("files should be a non-empty map of file name to SHA-256")
    for name, digest in files.items():
        if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name in (MANIFEST, MARKER):
            raise ValueError(f"file name {name!r} is not a plain file name inside the entry")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"the SHA-256 of {name} is not 64 hex digits")
    return dict(files)


def _finite_time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"last_used should be a finite number of seconds, got {value!r}")
    return float(value)


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
            if doc["key"] != path.name:
                raise ValueError(f"key {doc['key']!r} is not its folder's name {path.name!r}")
            return cls(key=check_key(doc["key"], str(path / MANIFEST)), path=path,
                       recipe=Recipe.from_dict(doc["recipe"]), files=_check_files(doc["files"], str(path)),
                       created=str(doc["created"]), last_used=_finite_time(doc["last_used"]),
                       checks={str(k): SelfCheck(**c) for k, c in dict(doc.get("checks", {})).items()},
                       rows={str(k): RowsChoice(**c) for k, c in dict(doc.get("rows", {})).items()},
                       guards={str(k): AccuracyGuard(**{**c, "interval": tuple(c["interval"])})
                               for k, c in dict(doc.get("guards", {})).items()},
                       calibration=tuple(doc.get("calibration", ())))
        except (KeyError, TypeError, ValueError, AttributeError, ClothprobeError) as err:
            raise ClothprobeError(f"{path / MANIFEST} is not a store manifest ({err}); prune it with "
                                  f"`cli cache prune --key {path.name}`.") from None


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _made_by_store(directory: Path, marker: str = MARKER) -> bool:
    """Whether ``directory`` is a real folder (not a link) holding the store's ``marker``."""
    path = directory / marker
    return directory.is_dir() and not directory.is_symlink() and path.is_file() and not path.is_symlink()


def _writable(folder: Path) -> bool:
    """Whether this process may write in ``folder`` (False on a read-only mount, or a folder not its own)."""
    return os.access(folder, os.W_OK)


def _make_marked(folder: Path, marker: str, text: str) -> bool:
    """Make ``folder`` with ``marker`` in it, whole (a temporary sibling renamed into place); False when it
    cannot be made (another process made it first: the caller looks again)."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        (tmp / marker).write_text(text)
        os.rename(tmp, folder)  # refused when folder exists
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_failed(err: Exception, folder: Path, recipe: Recipe) -> ClothprobeError:
    """A build that failed for a reason outside clothprobe (a full disk, OpenVINO's own error), in one line."""
    free = shutil.disk_usage(folder.parent).free
    said = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:300] or "no message"
    hint = (f"the disk holding {folder.parent} is full ({free / 1e6:.0f} MB free); free some space"
            if free < 256e6 or isinstance(err, OSError) and err.errno == 28 else f"{type(err).__name__}: {said}")
    return ClothprobeError(f"Could not build the stored model for {recipe.label} in {folder.parent}: {hint}, "
                           f"then run again (nothing was kept).")


class ModelStore:
    """The store under ``home`` (default: ``store_home()``)."""

    def __init__(self, home: str | Path | None = None) -> None:
        origin = f"The model store's home (${ENV_HOME}, else $XDG_CACHE_HOME/clothprobe, else ~/.cache/clothprobe)"
        self.home = usable_folder(Path(home) if home is not None else store_home(), origin)
        self.root = self.home / "models"
        self._locks: dict[str, Any] = {}  # one FileLock per key: re-entrant within this store
        self._wanted: dict[str, int] = {}  # key -> in_use blocks asking for it (held as soon as the entry exists)
        self._held: dict[str, contextlib.ExitStack] = {}  # key -> its shared hold

    def _dir(self, key: str) -> Path:
        return self.root / check_key(key, "store key")

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = self._locks.setdefault(key, FileLock(str(self.root / f"{check_key(key, 'store key')}.lock")))
        try:
            with lock.acquire(timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout:
            raise ClothprobeError(f"Waited {LOCK_TIMEOUT_S} s for another process building {self._dir(key)}; "
                                  f"is it stuck? Stop it, or remove {self.root / (key + '.lock')}.") from None

    @contextmanager
    def in_use(self, *recipes: Recipe) -> Iterator[None]:
        """Hold the entries of ``recipes`` while their files are loaded: a prune waits until the block ends. An
        entry built inside the block is held from the moment it exists. Creates no file (a read-only store is
        used as it is)."""
        keys = sorted({artifact_recipe(r).fingerprint for r in recipes})
        for key in keys:
            self._wanted[key] = self._wanted.get(key, 0) + 1
        try:
            for key in keys:
                self._hold(key)
            yield
        finally:
            for key in keys:
                self._wanted[key] -= 1
                if not self._wanted[key]:
                    del self._wanted[key]
                    if key in self._held:
                        self._held.pop(key).close()

    def _hold(self, key: str) -> None:
        """A shared hold on ``key``'s entry, if an ``in_use`` block wants it, it exists and is not held yet."""
        directory = self._dir(key)
        if key not in self._wanted or key in self._held or not _made_by_store(directory):
            return
        stack = contextlib.ExitStack()
        try:
            held = stack.enter_context(shared_hold(directory / MARKER, LOCK_TIMEOUT_S))
        except TimeoutError as err:
            stack.close()
            raise ClothprobeError(f"{err}; is a `cli cache prune` stuck? Stop it and run again.") from None
        if held:
            self._held[key] = stack
        else:
            stack.close()

    def read(self, key: str) -> StoreEntry | None:
        """The entry for ``key`` if there is a finished one (not yet verified)."""
        directory = self._dir(key)
        if directory.exists() and not _made_by_store(directory):
            raise ClothprobeError(f"{directory} was not made by the model store (no {MARKER}); clothprobe will not "
                                  f"use or remove it. Move it out of {self.root}.")
        try:
            doc = read_json(directory / MANIFEST)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise ClothprobeError(f"Cannot read {directory / MANIFEST} ({err}); prune it with "
                                  f"`cli cache prune --key {key}`.") from None
        entry = StoreEntry.from_manifest(directory, doc)
        with contextlib.suppress(OSError):  # the last use is also the marker's time (``_touch``)
            entry.last_used = max(entry.last_used, (directory / MARKER).stat().st_mtime)
        return entry

    def read_for(self, recipe: Recipe) -> StoreEntry | None:
        """The finished entry holding ``recipe``'s files, if any (not yet verified)."""
        return self.read(artifact_recipe(recipe).fingerprint)

    def get_or_build(self, recipe: Recipe, build: Callable[[Path], None], calibration: tuple[str, ...] = ()) -> StoreEntry:
        """The verified entry for ``recipe``'s files, building it with ``build(directory)`` if missing
        (``calibration``: the content hashes of the photos ``build`` calibrates on, kept in the manifest).
        Two processes asking at once: one builds, the other waits for the lock and reuses it."""
        key = artifact_recipe(recipe).fingerprint
        self._hold(key)
        entry = self.read(key)
        if entry is None:
            if not _writable(next(p for p in (self.root, *self.root.parents) if p.exists())):
                raise ClothprobeError(f"The model store {self.root} is read-only here and holds no model for "
                                      f"{recipe.label}; make it where the store is writable (cli featurize), or "
                                      f"set CLOTHPROBE_HOME to a writable folder.")
            with self._locked(key):
                entry = self.read(key) or self._build(key, artifact_recipe(recipe), build, calibration)
                self._hold(key)
        entry.verify()
        self._touch(entry)
        return entry

    def _build(self, key: str, recipe: Recipe, build: Callable[[Path], None], calibration: tuple[str, ...]) -> StoreEntry:
        tmp = self.root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            (tmp / MARKER).write_text(MARKER_TEXT)
            try:
                build(tmp)
            except (OSError, RuntimeError, MemoryError) as err:
                raise _build_failed(err, tmp, recipe) from None
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MARKER}
            entry = StoreEntry(key, self._dir(key), recipe, files, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               time.time(), {}, calibration=tuple(calibration))
            _write_json(tmp / MANIFEST, entry.to_manifest())
            os.replace(tmp, self._dir(key))
            return entry
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _touch(self, entry: StoreEntry) -> None:
        """Record the use (for pruning by age) as the time of the entry's marker: no lock, no file written or
        created; where the store is read-only (or not this user's), nothing is recorded."""
        entry.last_used = time.time()
        with contextlib.suppress(OSError):
            os.utime(entry.path / MARKER, (entry.last_used, entry.last_used))

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
        """Keep ``value`` in ``entry``, and in its manifest where the store is writable."""
        getattr(entry, section)[key] = value
        if not _writable(entry.path):
            return
        with self._locked(entry.key):
            if _made_by_store(entry.path):  # not pruned meanwhile
                fresh = self._fresh(entry)
                getattr(fresh, section)[key] = value
                _write_json(entry.path / MANIFEST, fresh.to_manifest())

    def _folders(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def entries(self) -> list[StoreEntry]:
        """Every finished entry (unreadable ones are listed by ``damaged``), newest use first."""
        found = []
        for directory in self._folders():
            if not _KEY.fullmatch(directory.name) or not _made_by_store(directory):
                continue
            try:
                entry = self.read(directory.name)
            except ClothprobeError:
                continue
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: -e.last_used)

    def damaged(self) -> list[Path]:
        """Entry folders the store made whose manifest cannot be read or is missing, and leftovers of killed
        builds (both hold the store's marker)."""
        out = []
        for directory in self._folders():
            named = _KEY.fullmatch(directory.name) or _LEFTOVER.fullmatch(directory.name)
            if not named or not _made_by_store(directory):
                continue
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

    def compile_cache(self) -> Path | None:
        """OpenVINO's compile cache: ``compiled/``, made and marked by the store on first use; None where it
        cannot be used (a ``compiled/`` the store did not make, or a store not writable here)."""
        folder = self.home / COMPILED
        if not os.path.lexists(folder) and _writable(next(p for p in (self.home, *self.home.parents) if p.exists())):
            _make_marked(folder, COMPILE_MARKER, COMPILE_MARKER_TEXT)
        return folder if _made_by_store(folder, COMPILE_MARKER) and _writable(folder) else None

    def foreign_compile_cache(self) -> Path | None:
        """``compiled/`` when it is there and the store did not make it (then it is never used nor cleared)."""
        folder = self.home / COMPILED
        return folder if os.path.lexists(folder) and not _made_by_store(folder, COMPILE_MARKER) else None

    def owns(self, path: Path) -> bool:
        """Whether ``path`` (resolved) is one of the store's own files: inside an entry it made (or a killed
        build's leftover), a lock of its root, or the compile cache it made. The rest of ``home`` is not the
        store's (``CLOTHPROBE_HOME`` may be a project folder)."""
        root, compiled = self.root.resolve(), (self.home / COMPILED).resolve()
        in_compiled = path == compiled or compiled in path.parents
        if (in_compiled and _made_by_store(self.home / COMPILED, COMPILE_MARKER)) or (
                path.parent == root and path.suffix == ".lock"):
            return True
        return any(folder.parent == root and _made_by_store(folder) for folder in (path, *path.parents))

    def foreign(self) -> list[Path]:
        """Folders under the store's root that the store did not make: listed, never removed."""
        return [p for p in self._folders() if not _made_by_store(p)]

    def prune(self, *, key: str | None = None, unused_days: float | None = None, everything: bool = False) -> list[Path]:
        """Remove one entry, those unused for ``unused_days`` (>= 0), or all (and OpenVINO's compile cache);
        damaged entries and leftovers of killed builds always go. Returns what was removed."""
        if key is not None:
            check_key(key, "--key")
        if unused_days is not None and not (math.isfinite(unused_days) and unused_days >= 0):
            raise ClothprobeError(f"--unused-days must be a finite number of days >= 0, got {unused_days!r}.")
        removed = []
        for p in self.damaged():
            removed.append(self._delete(p))
        cutoff = None if unused_days is None else time.time() - unused_days * 86400
        for entry in self.entries():
            if everything or entry.key == key or (cutoff is not None and entry.last_used < cutoff):
                removed.append(self.remove(entry.key))
        if key is not None and not any(p.name == key for p in removed):
            raise ClothprobeError(f"No stored model {key} in {self.root}; `cli cache list` shows what is there.")
        if everything:
            removed += self._clear_compiled()
        return removed

    def _clear_compiled(self) -> list[Path]:
        """OpenVINO's compiled blobs in the compile cache the store made (the only files OpenVINO writes there)."""
        folder = self.home / COMPILED
        if not _made_by_store(folder, COMPILE_MARKER):
            return []
        blobs = [p for p in folder.iterdir() if p.suffix == ".blob" and p.is_file() and not p.is_symlink()]
        for blob in blobs:
            blob.unlink(missing_ok=True)
        return blobs

    def _delete(self, directory: Path) -> Path:
        """``rmtree`` of a folder the store made, directly under its root (checked again here), once no process
        holds it (``in_use``)."""
        if directory.parent.resolve() != self.root.resolve() or not _made_by_store(directory):
            raise ClothprobeError(f"{directory} is not a model store entry; refusing to remove it.")
        try:
            with exclusive_hold(directory / MARKER, LOCK_TIMEOUT_S):
                shutil.rmtree(directory)
        except TimeoutError as err:
            raise ClothprobeError(f"{err}: a process is still loading it; run the prune again later.") from None
        return directory

    def remove(self, key: str) -> Path:
        directory = self._dir(key)
        if not directory.is_dir():
            raise ClothprobeError(f"No stored model {key} in {self.root}; `cli cache list` shows what is there.")
        with self._locked(key):
            return self._delete(directory)
