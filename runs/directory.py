"""The run directory: the one module that defines, writes and reads a finished run, and that names and places
it (``RunKind``, ``cached_run_name``, ``e2e_run_name``, ``run_path``).

A run directory (``cli fit`` and ``cli e2e`` write them) holds::

    manifest.json     Manifest: what the run is and how to use it (classes, backbones, the record of each
                      cache it was fitted on, or the embedding recipe of an end-to-end run, the model
                      entry, the calibration temperature) and the sha256 of every other file; written last
    metrics.json      Metrics: validation and test figures with 95% bootstrap intervals, the candidates
                      the choice was made among, timings
    predictions.csv   Predictions: the test split, path, true and predicted class, every probability
    model files       written and read by classifiers/modelio.py (never a pickle)
    openset.npz       the reject option's state (cli fit --unknown), written and read by classifiers/openset.py

Nothing else reads these files' keys: callers get the dataclasses below. Two records inside are owned
elsewhere and kept opaque here: each cache record (featurize) and the embedding recipe
(``featurize.recipe``), the model entry (``classifiers.modelio``) and the open-set entry and figures
(``classifiers.openset``, ``classifiers.rejection``).

Replacing a run is atomic: the new run is written to ``.<run>.tmp-<pid>/``, the old one renamed aside to
``.<run>.old-<pid>/``, the new one renamed into place, the old one retired. A kill at any moment leaves
the old run or the new one; a run left aside by a killed writer is put back by the next reader or writer
(or, when the new run is in place, retired by it), and temporary folders of dead processes are removed. Only
a folder that is a clothprobe run (``is_run``: its marker file ``.clothprobe-run`` and a manifest of this
schema, not merely a file named manifest.json) or an empty folder is ever replaced, and never ``.``, ``..``
or a folder holding the working directory.

A run's own files are those its manifest records (the ``sha256`` map, the manifest and the marker); what
else a user put in the folder (``NOTES.md``, ``plots/``) is theirs. Retiring an old run moves the user's
files into the new run and deletes only the old run's own files; when the new run writes a file of the same
name as one of the user's, the refit is refused before the swap, in one line, and the old run is kept.

Every file a run's manifest names lives inside the run (a plain file name) and is listed in its ``sha256``
map, which ``verify`` checks before anything is loaded; the records are checked for types and bounds when
read (``__post_init__``: classes, seed, calibration temperature...), and every number in them is finite and
from 0 to 2**53 (``_check``: no NaN, infinity, 1e308 or negative count reaches a reader).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe._util.csvcells import cell, text_of
from clothprobe._util.files import UnreadableFile, file_sha256, open_regular, pid_alive, read_json
from clothprobe.errors import ClothprobeError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
MARKER = ".clothprobe-run"  # written into every run: with a readable manifest, what makes a folder a run
MARKER_TEXT = "a clothprobe run (cli fit / cli e2e); clothprobe may replace this folder\n"
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_NUMBER = 2**53  # every number a run's records hold (counts, seconds, scores) is finite and from 0 to this
_SIDE = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)$")
PREDICTIONS_MAX_BYTES = 4 << 30  # a test split of millions of photos


# ---------------------------------------------------------------------------------------------------
# A run's kind, name and place


class RunKind(StrEnum):
    """What a run was fitted on: cached embeddings (``cli fit``) or the images end to end (``cli e2e``)."""

    CACHED_FEATURES = "cached-features"
    END_TO_END = "end-to-end"


def cached_run_name(clf: str, balance: str, tta: bool, loss: str) -> str:
    """A ``cli fit`` run's name: ``<clf>-<balance>[-tta][-focal]``."""
    return f"{clf}-{balance}" + ("-tta" if tta else "") + ("-focal" if loss == "focal" else "")


def e2e_run_name(balance: str, fine_tune: int, loss: str, size: int, default_size: int) -> str:
    """A ``cli e2e`` run's name: ``e2e-<balance>[-ft<N>][-focal][-<size>px]`` (the size when not the backbone's)."""
    return (f"e2e-{balance}" + (f"-ft{fine_tune}" if fine_tune else "") + ("-focal" if loss == "focal" else "")
            + (f"-{size}px" if size != default_size else ""))


def run_path(models_dir: str | Path, dataset: str, backbone: str, name: str, out: str | Path | None = None) -> Path:
    """Where a run is written: ``out`` when given, else ``<models_dir>/<dataset>/<backbone>/<name>``."""
    return Path(out) if out else Path(models_dir) / dataset / backbone / name


# ---------------------------------------------------------------------------------------------------
# The records


@dataclass
class Calibration:
    """Temperature scaling fitted on the predictions the choice was made on (never on test)."""

    temperature: float
    fitted_on: str  # "validation split" or "out-of-fold"
    n: int  # predictions it was fitted on

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"calibration.temperature must be finite and > 0, got {self.temperature!r}")
        if self.n < 1:
            raise ValueError(f"calibration.n must be at least 1, got {self.n!r}")


@dataclass(kw_only=True)
class RunRecord:
    """The fields a run's manifest and its metrics both carry (each file holds them at its top level)."""

    run: str
    dataset: str
    kind: RunKind
    classifier: str
    balance: str
    tta: bool
    loss: str
    seed: int
    params: dict
    chosen: dict
    calibration: Calibration | None = None

    def shared(self) -> dict[str, Any]:
        """These fields as keyword arguments for ``Manifest`` and ``Metrics``."""
        return {f.name: getattr(self, f.name) for f in fields(RunRecord)}


@dataclass(kw_only=True)
class Manifest(RunRecord):
    classes: list[str]
    backbones: list[str]
    versions: dict
    caches: dict[str, dict] = field(default_factory=dict)  # backbone -> featurize's record of the cache
    recipe: dict | None = None  # end to end: featurize.recipe.Recipe.to_dict()
    config: dict = field(default_factory=dict)  # end to end: the training settings
    data_root: str | None = None  # the image folder the run was made from (report thumbnails)
    model: dict = field(default_factory=dict)  # classifiers.modelio's entry
    openset: dict | None = None  # classifiers.openset's entry: the reject option (cli fit --unknown)
    sha256: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in set(RunKind):
            raise ValueError(f"kind must be one of {', '.join(RunKind)}, got {self.kind!r}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes) or not all(self.classes):
            raise ValueError(f"classes must be two or more distinct non-empty names, got {self.classes!r}")
        if not self.backbones:
            raise ValueError("backbones must name at least one backbone")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.kind == RunKind.CACHED_FEATURES and set(self.caches) != set(self.backbones):
            raise ValueError(f"caches must hold one record per backbone ({', '.join(self.backbones)}), got "
                             f"{sorted(self.caches)}")
        if self.kind == RunKind.END_TO_END and not self.recipe:
            raise ValueError("an end-to-end run needs its recipe")
        for name, digest in self.sha256.items():
            if not _plain_file_name(name) or not _SHA256.fullmatch(digest):
                raise ValueError(f"sha256 lists {name!r}: {digest!r}; each must be a plain file name inside the "
                                 f"run and a 64-hex-digit SHA-256")

    @property
    def id(self) -> str:
        return f"{'+'.join(self.backbones)}/{self.run}"


@dataclass
class SplitMetrics:
    """One split's figures; ``ci`` maps accuracy, macro_f1 and balanced_accuracy to a 95% interval."""

    n: int
    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    log_loss: float
    ece: float  # expected calibration error (15 equal-width confidence bins)
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusion_matrix: list[list[int]]
    ci: dict[str, list[float]]
    source: str = ""  # "validation split", "out-of-fold (...)", "test split"

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "ece"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must be between 0 and 1, got {getattr(self, key)!r}")
        for key, low_high in self.ci.items():
            if len(low_high) != 2 or not 0 <= low_high[0] <= low_high[1] <= 1:
                raise ValueError(f"ci.{key} must be an interval [low, high] within 0 and 1, got {low_high!r}")

    def interval(self, key: str) -> tuple[float, float] | None:
        low_high = self.ci.get(key)
        return None if low_high is None else (low_high[0], low_high[1])


@dataclass(kw_only=True)
class Metrics(RunRecord):
    backbone: str
    selection: str  # how the settings were chosen, in words
    selection_n: int  # photos the choice rested on (validation split, or every row out of fold)
    candidates: list[dict]
    fit_seconds: float
    train_counts: dict[str, int]
    validation: SplitMetrics | None
    test: SplitMetrics | None
    featurize_seconds: float | None = None
    predict_seconds: float | None = None
    calibrated_test_ece: float | None = None  # test ECE after temperature scaling
    epochs: list[dict] = field(default_factory=list)  # end to end: one record per epoch
    resumed_from_epoch: int = 0
    skipped: list[list[str]] = field(default_factory=list)  # [path, reason]
    wall_seconds: float | None = None
    taps: dict = field(default_factory=dict)  # the tap sets tried and the one kept (classifiers/taps.py)
    openset: dict | None = None  # classifiers.rejection's figures (cli fit --unknown)
    format_version: int = FORMAT_VERSION

    @property
    def id(self) -> str:
        return f"{self.backbone}/{self.run}"


@dataclass
class Predictions:
    """Test predictions: rows aligned, ``proba`` over ``classes``; ``true`` holds class names."""

    paths: list[str]
    true: list[str]
    proba: np.ndarray
    classes: list[str]

    @property
    def predicted(self) -> list[str]:
        return [self.classes[i] for i in self.proba.argmax(1)]

    @property
    def correct(self) -> np.ndarray:
        return np.array([t == p for t, p in zip(self.true, self.predicted)], dtype=bool)


# ---------------------------------------------------------------------------------------------------
# Dicts to dataclasses, checking the shape (a damaged or foreign file is an error, never a KeyError)


def _plain_file_name(name: str) -> bool:
    """A file directly inside the run: no folder part, not ``.``/``..``, not the manifest or the marker."""
    return bool(name) and Path(name).name == name and name not in (".", "..", MANIFEST, MARKER) and "\\" not in name


def _check(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _check(value, inner, where)
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Enum):
        if not isinstance(value, str) or value not in {member.value for member in hint}:
            raise ValueError(f"{where} should be one of {', '.join(hint)}, got {value!r}")
        return hint(value)
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return _from_dict(hint, value, where)
    base = origin or hint
    ok = {float: (int, float), int: (int,), bool: (bool,), str: (str,), list: (list,), dict: (dict,)}[base]
    if not isinstance(value, ok) or (base in (int, float) and isinstance(value, bool)):
        raise ValueError(f"{where} should be {getattr(base, '__name__', base)}, got {type(value).__name__}")
    if base in (int, float) and not (0 <= value <= MAX_NUMBER and math.isfinite(value)):  # ints of any size first
        raise ValueError(f"{where} should be a finite number from 0 to 2**53, got {value!r}")
    args = typing.get_args(hint)
    if base is list and args:
        return [_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if base is dict and args:
        return {_check(k, args[0], where): _check(v, args[1], f"{where}.{k}") for k, v in value.items()}
    return float(value) if base is float else value


def _from_dict(cls: type, data: Any, where: str = "") -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__} should be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = _check(data[f.name], hints[f.name], f"{where}{'.' if where else ''}{f.name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ValueError(f"{where}{'.' if where else ''}{f.name} is missing")
    return cls(**values)


def _bounded_numbers(data: Any) -> None:
    """Every number anywhere in a record read back, the records other modules own included, is finite and within
    +-2**53 (the typed fields are also >= 0, ``_check``); the error names where the number is."""
    todo: list[tuple[str, Any]] = [("", data)]
    while todo:
        where, value = todo.pop()
        if isinstance(value, dict):
            todo.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and \
                not (-MAX_NUMBER <= value <= MAX_NUMBER and math.isfinite(value)):
            raise ValueError(f"{where[:80] or 'it'} holds the number {repr(value)[:24]}; every number must be finite "
                             f"and within +-2**53")


def _load_json(path: Path, cls: type, what: str) -> Any:
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise ClothprobeError(f"No {path.name} in {path.parent}; is it a run directory written by cli fit or "
                              f"cli e2e?") from None
    except UnreadableFile as err:
        raise ClothprobeError(f"{err}; fit that run again or delete its folder.") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # RecursionError: nested past Python's limit
        raise ClothprobeError(f"Cannot read {path} ({err}); fit that run again or delete its folder.") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ClothprobeError(f"{path} is a run {what} of format version {version!r}; this clothprobe reads "
                              f"version {FORMAT_VERSION}. Fit that run again.")
    try:
        _bounded_numbers(data)
        return _from_dict(cls, data)
    except (ValueError, TypeError) as err:
        raise ClothprobeError(f"{path} is not a clothprobe run {what} ({err}); fit that run again.") from None


def _dump(record: Any) -> str:
    return json.dumps(asdict(record), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------------
# Reading


def read_manifest(directory: str | Path) -> Manifest:
    directory = Path(directory)
    recover(directory)
    return _load_json(directory / MANIFEST, Manifest, "manifest")


def read_metrics(directory: str | Path) -> Metrics:
    directory = Path(directory)
    recover(directory)
    return _load_json(directory / METRICS, Metrics, "metrics file")


def verify(directory: str | Path, manifest: Manifest) -> None:
    """Refuse a run whose files are missing or differ from the sha256 values in its manifest (an empty map
    too: a run always has files)."""
    if not manifest.sha256:
        raise ClothprobeError(f"{Path(directory) / MANIFEST} lists no file hashes; refusing to load the run. "
                              f"Fit the model again.")
    for name, expected in sorted(manifest.sha256.items()):
        path = Path(directory) / name
        if Path(name).name != name or not path.is_file():
            raise ClothprobeError(f"{path} is missing (listed in {MANIFEST}); fit the model again.")
        if file_sha256(path) != expected:
            raise ClothprobeError(f"{path} does not match the sha256 in {MANIFEST}: it was changed after fitting. "
                                  f"Refusing to load it; fit the model again.")


def read_predictions(directory: str | Path, classes: list[str]) -> Predictions | None:
    """The run's test predictions, or None when it has none; an error for a file of the wrong shape. Text cells
    are read back through ``_util.csvcells.text_of`` (``write_predictions`` neutralizes formulas)."""
    path = Path(directory) / PREDICTIONS
    if not path.exists():
        return None
    try:
        with open_regular(path, limit=PREDICTIONS_MAX_BYTES) as raw, io.TextIOWrapper(raw, "utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        proba = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64).reshape(-1, len(classes))
        return Predictions([text_of(r["path"]) for r in rows], [text_of(r["true"]) for r in rows], proba, list(classes))
    except UnreadableFile as err:
        raise ClothprobeError(f"{err}; fit that run again.") from None
    except (OSError, UnicodeDecodeError, KeyError, ValueError, TypeError, csv.Error) as err:
        raise ClothprobeError(f"Cannot read {path} ({type(err).__name__}: {err}); fit that run again.") from None


def find_runs(models_dir: str | Path) -> list[Path]:
    """Every folder under ``models_dir`` holding a manifest (not temporary ones), sorted."""
    models_dir = Path(models_dir)
    for parent in sorted({p.parent for p in models_dir.rglob(".*-*") if _SIDE.match(p.name)}):
        recover_siblings(parent)
    return sorted(p.parent for p in models_dir.rglob(MANIFEST)
                  if not any(part.startswith(".") for part in p.parent.relative_to(models_dir).parts))


# ---------------------------------------------------------------------------------------------------
# Writing


def recover_siblings(parent: Path) -> None:
    """Put back runs a killed writer left aside; delete temporary folders of dead processes."""
    if not parent.is_dir():
        return
    found = [(m, p) for p in parent.iterdir() if (m := _SIDE.match(p.name)) and p.is_dir()]
    for match, path in sorted(found, key=lambda mp: (mp[0]["what"], mp[1].name)):  # "old" before "tmp"
        if pid_alive(int(match["pid"])):
            continue
        target = parent / match["name"]
        if match["what"] == "tmp":
            shutil.rmtree(path, ignore_errors=True)  # a killed writer's unfinished run: only its files
        elif not target.exists():
            os.replace(path, target)
        else:
            _retire(path, target)


def recover(directory: Path) -> None:
    """Before reading ``directory``: a run a killed writer left aside is put back."""
    if not directory.exists():
        recover_siblings(directory.parent)


def is_run(directory: Path) -> bool:
    """Whether ``directory`` is a clothprobe run: its marker and a manifest of this schema (a web app's or a
    browser extension's manifest.json is not one)."""
    if not (directory / MARKER).is_file():
        return False
    try:
        _from_dict(Manifest, read_json(directory / MANIFEST))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False
    return True


def check_target(directory: str | Path) -> Path:
    """Refuse a run folder that is not ours to replace; call it before any work."""
    given = Path(directory)
    resolved = given.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if given.name in ("", ".", "..") or resolved == cwd or cwd.is_relative_to(resolved):
        raise ClothprobeError(f"Refusing to write a run into {given}: it is or contains the working folder. "
                              f"Name a new folder, e.g. --out runs/my-run.")
    recover(resolved)
    if resolved.exists():
        if not resolved.is_dir():
            raise ClothprobeError(f"{given} exists and is not a folder; name a new folder for the run.")
        if any(resolved.iterdir()) and not is_run(resolved):
            raise ClothprobeError(f"{given} exists and is not a clothprobe run (no {MARKER} with a clothprobe "
                                  f"{MANIFEST}); refusing to replace what it holds. Name a new folder for the run.")
    return resolved


def write_predictions(path: Path, predictions: Predictions) -> None:
    """``predictions.csv``: text cells through ``_util.csvcells.cell`` (a path or class name beginning with ``=``
    is no formula in a spreadsheet), read back exactly by ``read_predictions``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "true", "predicted", *(f"p_{c}" for c in predictions.classes)])
        for p, t, guess, row in zip(predictions.paths, predictions.true, predictions.predicted, predictions.proba):
            writer.writerow([cell(p), cell(t), cell(guess), *(f"{v:.6f}" for v in row)])


def write_run(directory: str | Path, manifest: Manifest, metrics: Metrics, predictions: Predictions | None,
              save_model: Callable[[Path], dict]) -> Path:
    """Write a complete run into a temporary folder (``save_model`` writes the model files and returns the
    manifest's model entry; the manifest goes last), then replace ``directory`` with it atomically."""
    directory = check_target(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_siblings(directory.parent)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / MARKER).write_text(MARKER_TEXT)
        (tmp / METRICS).write_text(_dump(metrics))
        if predictions is not None:
            write_predictions(tmp / PREDICTIONS, predictions)
        manifest.model = save_model(tmp)
        manifest.sha256 = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.name not in (MANIFEST, MARKER)}
        (tmp / MANIFEST).write_text(_dump(manifest))
        _swap(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _own_names(directory: Path) -> set[str]:
    """The names in ``directory`` that are the run's own: the files its manifest records, the manifest and the
    marker (only those two when the manifest cannot be read: everything else is then kept)."""
    try:
        recorded = read_json(directory / MANIFEST).get("sha256", {})
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        recorded = {}
    names = {n for n in recorded if isinstance(n, str) and _plain_file_name(n)} if isinstance(recorded, dict) else set()
    return names | {MANIFEST, MARKER}


def _theirs(directory: Path) -> list[Path]:
    """What a user put in the run folder ``directory``: every entry that is not the run's own."""
    own = _own_names(directory)
    return sorted(p for p in directory.iterdir() if p.name not in own)


def _retire(aside: Path, directory: Path) -> None:
    """The old run ``aside`` is replaced by ``directory``: the user's files move into ``directory`` (one that
    is in the way stays where it is), the old run's own files are deleted, and ``aside`` goes once empty."""
    if not aside.is_dir():
        return
    own = _own_names(aside)
    for path in _theirs(aside):
        if not os.path.lexists(directory / path.name):
            os.replace(path, directory / path.name)
    for name in own:
        path = aside / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    with contextlib.suppress(OSError):  # not empty: something of the user's could not move; it stays
        aside.rmdir()


def _swap(new: Path, directory: Path) -> None:
    """Old run aside, new run in, old run retired (``_retire``): at every moment one of them is complete on
    disk, and the user's files are in one of them."""
    from filelock import FileLock

    with FileLock(directory.parent / ".clothprobe-runs.lock"):
        aside = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        if directory.exists():
            if any(directory.iterdir()) and not is_run(directory):  # appeared while we worked
                raise ClothprobeError(f"{directory} is no longer a clothprobe run; leaving it as it is.")
            clash = [p for p in _theirs(directory) if os.path.lexists(new / p.name)]
            if clash:
                raise ClothprobeError(f"{clash[0]} is not a file of the run, and the new run writes a file of that "
                                      f"name; move it out of {directory}, then fit again (the previous run is kept).")
            os.replace(directory, aside)
        os.replace(new, directory)
        _retire(aside, directory)
