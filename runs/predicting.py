"""``predict()``: classify new photos with a finished run, embedding them exactly as its caches were made.

A cached-features run's manifest records, for each backbone, the cache it was fitted on and so its
embedding recipe (weights fingerprint, input size, preprocessing, precision, runtime); new photos are
embedded with the same recipe. An end-to-end run records its recipe too: photos are decoded at its size,
preprocessed by it and fed to the saved network. Every file's sha256 is checked against the manifest
before any model is loaded. ``calibrate=True`` applies the temperature fitted at fit time on the
predictions the choice was made on (validation, or out of fold), never on test.
"""

from __future__ import annotations

import os
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothprobe._util.names import shown
from clothprobe._util.progress import progress_bar
from clothprobe.classifiers.proba import full_proba
from clothprobe.classifiers.stats import apply_temperature
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.embed import FLIPPED, ORIGINAL, view_names
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS, is_ignored
from clothprobe.runs.directory import RunKind, read_manifest, verify

if TYPE_CHECKING:
    from clothprobe.featurize.engines.ray import RayEngine
    from clothprobe.featurize.model.recipe import Recipe


UNKNOWN = "unknown"  # the answer for a photo below the run's open-set threshold


@dataclass
class Prediction:
    path: str
    probabilities: dict[str, float]  # every class, in the run's class order
    openset_score: float | None = None  # higher = more like the run's classes (runs fitted with --unknown)
    unknown: bool = False  # below the run's open-set threshold

    @property
    def answer(self) -> str:
        """The most probable class, or ``unknown`` below the open-set threshold."""
        return UNKNOWN if self.unknown else self.top(1)[0][0]

    def top(self, k: int) -> list[tuple[str, float]]:
        ranked = sorted(self.probabilities.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[:k]


@dataclass
class PredictResult:
    run: str
    classes: list[str]
    predictions: list[Prediction]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    model_seconds: float = 0.0  # building the backbone(s) and embedding
    seconds: float = 0.0
    calibrated: bool = False
    openset: str | None = None  # the open-set score in use (None: the run has none, or --no-unknown)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / len(self.predictions) if self.predictions else 0.0


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every non-hidden file under a folder (sorted); each file once."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.is_file() and not any(is_ignored(part) for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise ClothprobeError(f"{path} does not exist; give image files or folders of images.")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise ClothprobeError(f"No files found in {', '.join(map(str, inputs))}.")
    return unique


@dataclass
class Embedded:
    """``views[v][k]`` (backbones side by side, in the run's order) belongs to ``files[good[k]]``; ``skipped``
    maps the position of each file that could not be used to the reason."""

    views: dict[str, np.ndarray]
    good: list[int]
    skipped: dict[int, str]


@dataclass(frozen=True)
class RunEmbedding:
    """How a run embeds new images for one of its caches: that cache's recipe, as this installation reproduces
    it (the model in the store that made the cache: every tap it holds), and the columns of the taps the run
    used (None: all)."""

    recipe: Recipe
    columns: np.ndarray | None
    calibration: tuple[tuple[str, str], ...] = ()  # int8: the photos its network was calibrated on (path, sha256)

    @property
    def calibration_files(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self.calibration)

    def used(self, views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``views`` (embeddings made with ``recipe``) cut to the columns the run uses."""
        if self.columns is None:
            return views
        return {v: x[:, self.columns] if x.ndim == 2 and x.shape[1] else x for v, x in views.items()}


def run_embeddings(caches: dict[str, dict]) -> list[RunEmbedding]:
    """One ``RunEmbedding`` per cache a run was fitted on, in the run's order."""
    from clothprobe.featurize.cache.schema import CacheInfo
    from clothprobe.featurize.model.recipe import reproduce

    infos = [CacheInfo.from_dict(record) for record in caches.values()]
    return [RunEmbedding(reproduce(info.recipe), info.tap_columns(), info.calibration_photos) for info in infos]


def _embed(files: list[Path], caches: dict[str, dict], tta: bool, batch_size: int, max_pixels: int,
           weights: str | None) -> Embedded:
    """Embed ``files`` with the recipe of each cache a run was fitted on (the one place predict embeds)."""
    from clothprobe.featurize.embed import embed_files

    parts, skipped = [], {}
    for how in run_embeddings(caches):
        done = embed_files(how.recipe, files, flip=tta, batch_size=batch_size, max_pixels=max_pixels, weights=weights)
        done.views = how.used(done.views)
        parts.append(done)
        for i, why in done.skipped.items():
            skipped.setdefault(i, why)
    good = [i for i in range(len(files)) if i not in skipped]
    where = [{g: k for k, g in enumerate(p.good)} for p in parts]
    rows = [[w[i] for i in good] for w in where]  # each good file's row in each backbone's embeddings
    views = {view: np.hstack([p.views[view][r] for p, r in zip(parts, rows)]) if good else np.empty((0, 0))
             for view in view_names(tta)}
    return Embedded(views, good, skipped)


def _e2e_proba(files: list[Path], recipe_dict: dict, network, batch_size: int,  # noqa: ANN001
               max_pixels: int) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """An end-to-end run: photos decoded at its recipe's size, preprocessed by it, fed to its network."""
    from clothprobe.featurize.embed import decoded_batches
    from clothprobe.featurize.model.recipe import Recipe, reproduce

    recipe = reproduce(Recipe.from_dict(recipe_dict))
    rows, good, skipped = [], [], {}
    for start, decoded in decoded_batches(files, recipe.input_size, batch_size, max_pixels):
        ok = [k for k, (image, _) in enumerate(decoded) if image is not None]
        skipped.update({start + k: why for k, (image, why) in enumerate(decoded) if image is None})
        if ok:
            x = recipe.preprocess.apply(np.stack([decoded[k][0] for k in ok]))
            rows.append(np.asarray(network.predict(x, batch_size=batch_size, verbose=0), np.float64))
            good += [start + k for k in ok]
    proba = np.vstack(rows) if rows else np.zeros((0, 1))
    return proba / proba.sum(1, keepdims=True) if rows else proba, good, skipped


def head_proba(predictor: Predictor, views: dict[str, np.ndarray]) -> np.ndarray:
    """A cached-features run's classifier over embeddings (its backbones side by side, in its order), the
    flipped view averaged in when the run uses TTA; not calibrated."""
    n = len(predictor.classes)
    if not len(views[ORIGINAL]):
        return np.zeros((0, n))
    proba = full_proba(predictor.model, views[ORIGINAL], n)
    if predictor.manifest.tta:
        proba = (proba + full_proba(predictor.model, views[FLIPPED], n)) / 2
    return proba


@dataclass
class Scored:
    """Probabilities (and, for a run with a reject option, open-set scores) of the files that could be used,
    their positions, and why the others could not."""

    proba: np.ndarray
    good: list[int]
    skipped: dict[int, str]
    openset: np.ndarray | None = None


class Predictor:
    """A finished run opened for predictions: every file checked against its manifest, the model loaded once.
    ``unknown``: use the run's reject option, when it has one (``cli fit --unknown``).

    Reused by ``predict()`` and by the scikit-learn estimator (``clothprobe.load_run``)."""

    def __init__(self, run_dir: str | Path, *, weights: str | None = None, batch_size: int = 16,
                 max_pixels: int = DEFAULT_MAX_PIXELS, calibrate: bool = False, unknown: bool = True) -> None:
        from clothprobe.classifiers.modelio import load_e2e_model, load_model

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ClothprobeError(f"--batch-size must be a whole number of at least 1, got {batch_size!r}.")
        self.run_dir, self.weights, self.batch_size, self.max_pixels = Path(run_dir), weights, batch_size, max_pixels
        self.manifest = read_manifest(self.run_dir)
        verify(self.run_dir, self.manifest)  # before anything is loaded
        self.temperature = None
        if calibrate:
            if self.manifest.calibration is None:
                raise ClothprobeError(f"{self.run_dir} records no calibration temperature; fit it again to use "
                                      f"--calibrate.")
            self.temperature = self.manifest.calibration.temperature
        if self.manifest.kind is RunKind.END_TO_END:
            self.model, self.network = None, load_e2e_model(self.run_dir)[1]
        else:
            self.model, self.network = load_model(self.run_dir), None
        self._networks_ready = False
        self.openset = None
        if unknown and self.manifest.openset is not None:
            from clothprobe.classifiers import openset

            self.openset = openset.load(self.run_dir, self.manifest.openset)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def ensure_networks(self) -> None:
        """Before a cached-features run first embeds: make an int8 network the model store lacks again from the
        calibration photos its cache recorded (``runs/networks.py``), once."""
        from clothprobe.runs.networks import ensure_networks

        if not self._networks_ready and self.network is None:
            ensure_networks(self.run_dir, [(how.recipe, how.calibration) for how in run_embeddings(self.manifest.caches)],
                            self.weights)
        self._networks_ready = True

    def from_views(self, views: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """A cached-features run's probabilities over embeddings (calibrated if asked) and, with a reject
        option, each row's open-set score (on the head's own probabilities, as at fit time)."""
        proba = head_proba(self, views)
        scores = None
        if self.openset is not None and len(proba):
            from clothprobe.classifiers.openset import head_output

            both = self.manifest.tta and self.openset.logits_of_every_view
            scores = self.openset.values(head_output(self.model, views[ORIGINAL], proba,
                                                     flipped=views[FLIPPED] if both else None))
        if self.temperature is not None and len(proba):
            proba = apply_temperature(proba, self.temperature)
        return proba, scores

    def score(self, files: list[Path]) -> Scored:
        if self.network is not None:
            proba, good, skipped = _e2e_proba(files, self.manifest.recipe or {}, self.network, self.batch_size,
                                              self.max_pixels)
            if self.temperature is not None and len(proba):
                proba = apply_temperature(proba, self.temperature)
            return Scored(proba, good, skipped)
        done = self.embed(files)
        proba, scores = self.from_views(done.views)
        return Scored(proba, done.good, done.skipped, scores)

    def embed(self, files: list[Path], flip: bool | None = None) -> Embedded:
        """``files`` embedded as the run's caches were (a cached-features run); ``flip``: with the mirrored view
        too (None: when the run uses TTA)."""
        flip = self.manifest.tta if flip is None else flip
        self.ensure_networks()
        return _embed(files, self.manifest.caches, flip, self.batch_size, self.max_pixels, self.weights)

    def proba(self, files: list[Path]) -> tuple[np.ndarray, list[int], dict[int, str]]:
        """Probabilities over the run's classes for the files that could be used, their positions, and why
        the others could not."""
        scored = self.score(files)
        return scored.proba, scored.good, scored.skipped

    def predict(self, images: Sequence[str | Path]) -> PredictResult:
        started = time.perf_counter()
        files = list_images(images)
        s = self.score(files)
        model_seconds = time.perf_counter() - started
        values = [None] * len(s.good) if s.openset is None else s.openset.tolist()
        predictions = [Prediction(shown(str(files[i])), dict(zip(self.classes, map(float, row))), v,
                                  v is not None and bool(self.openset.is_unknown(v)))
                       for i, row, v in zip(s.good, s.proba, values)]
        return PredictResult(run=self.manifest.id, classes=self.classes, predictions=predictions,
                             skipped=[(shown(str(files[i])), why) for i, why in sorted(s.skipped.items())],
                             model_seconds=model_seconds, seconds=time.perf_counter() - started,
                             calibrated=self.temperature is not None,
                             openset=None if self.openset is None else self.openset.score)


def predict(
    images: Sequence[str | Path],
    model_dir: str | Path,
    weights: str | None = None,
    batch_size: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    calibrate: bool = False,
    unknown: bool = True,
) -> PredictResult:
    """Class probabilities for each image; files that cannot be decoded are skipped and reported. ``unknown``:
    answer ``unknown`` below the run's open-set threshold (runs fitted with ``--unknown``)."""
    started = time.perf_counter()
    result = Predictor(model_dir, weights=weights, batch_size=batch_size, max_pixels=max_pixels,
                       calibrate=calibrate, unknown=unknown).predict(images)
    result.seconds = time.perf_counter() - started
    return result


# --- score files: the one writer of predict's rows (local or Ray; CSV, JSON or Parquet) ---------------------

SCORE_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
SCORES_TAG = "clothprobe-scores"  # marks a score file as this writer's: Parquet metadata key, JSON key


def score_format(path: str | Path | None, fmt: str | None = None) -> str:
    """``csv``, ``json`` or ``parquet``: ``fmt``, else from the file name; checked before any work."""
    chosen = fmt or (SCORE_FORMATS.get(Path(path).suffix.lower()) if path is not None else None)
    if chosen not in ("csv", "json", "parquet"):
        given = fmt or Path(path or "").suffix or "a file without a suffix"
        raise ClothprobeError(f"{path}: write scores as CSV, JSON or Parquet (a name ending in .csv, .json or "
                              f".parquet, or --format), not {given}.")
    if chosen == "parquet" and path is None:
        raise ClothprobeError("--format parquet writes a file: give --output FILE.parquet.")
    return chosen


def score_columns(classes: Sequence[str], top_k: int, openset: bool = False, extra: Sequence[str] = ()) -> list[str]:
    """Every score file's columns, in order: the same for CSV, JSON and Parquet, local or Ray; ``extra`` columns
    (a ranking's, ``runs/ranking.py``) follow ``path``, then, with ``openset`` (a run with a reject option),
    ``answer`` and ``openset_score``."""
    tops = [f"top{k}{s}" for k in range(1, top_k + 1) for s in ("", "_p")]
    rejects = ["answer", "openset_score"] if openset else []
    return ["path", *extra, *rejects, *tops, *(f"p_{c}" for c in classes), "skipped"]


def is_score_file(path: Path) -> bool:
    """Whether the regular file ``path`` is a score file this writer wrote (so ``--output`` may replace it)."""
    from clothprobe._util.files import open_regular, read_head

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            with open_regular(path) as fh:
                return SCORES_TAG.encode() in (pq.read_schema(fh).metadata or {})
        head = read_head(path).decode("utf-8")
        if head.lstrip().startswith("{"):
            return f'"{SCORES_TAG}"' in head
        first = head.split("\n", 1)[0].replace('"', "").split(",")
        return first[0] == "path" and "top1" in first and first[-1] == "skipped"
    except (OSError, UnicodeDecodeError, ValueError, ImportError):
        return False


def check_score_output(output: str | Path, images: Sequence[str | Path], model_dir: str | Path) -> Path:
    """``--output`` checked before any work: never an input photo (``images``: as for ``list_images``), a file
    of a run, a cache or the store; an existing file only if this writer wrote it. A pipe, a FIFO or a device
    (``>(...)``, ``/dev/stdout``) is written as a stream."""
    from clothprobe._util.outputs import check_output

    def inputs() -> Iterator[Path]:  # listed only once the path itself passed (its folder exists...)
        yield Path(model_dir)
        yield from list_images(images)

    return check_output(output, inputs=inputs(), ours=is_score_file, stream=True)


class ScoreWriter:
    """One row per photo, written as batches come (``score_columns``): ``path``, the top-k classes and their
    probabilities, every class's probability (``p_<class>``) and ``skipped`` (why a photo could not be scored;
    empty otherwise, and then the other columns are null); with ``openset`` (a run's reject option), also
    ``answer`` (the top class, or ``unknown`` below the threshold) and ``openset_score``. CSV or Parquet through Arrow's writers, JSON as
    ``{"clothprobe-scores": 1, "run", "calibrated", "columns", "rows": [{column: value}]}``; to a file
    through a temporary one renamed into place once complete (a failed or killed run leaves the previous
    file), to a stream as rows come (a pipe, a FIFO, ``/dev/stdout``: ``_util.files.atomic_write``), or to
    stdout (``path`` None; CSV or JSON). In CSV, text cells (paths, class names, reasons) go through
    ``_util.csvcells.cell``: none is a formula in a spreadsheet. ``extra``: more columns after ``path``, name ->
    kind (``string``, ``int64`` or ``float64``), given to ``write`` as ``extra_values``."""

    def __init__(self, path: str | Path | None, classes: Sequence[str], top_k: int, fmt: str | None = None, *,
                 run: str = "", calibrated: bool = False, openset: bool = False,
                 extra: dict[str, str] | None = None) -> None:
        from clothprobe._util.extras import require

        pa = require("pyarrow", "export", f"Writing scores to {path or 'stdout'}")

        self.path = Path(path) if path is not None else None
        self.classes, self.top_k = list(classes), max(1, min(top_k, len(classes)))
        self.fmt = score_format(path, fmt)
        self.run, self.calibrated, self.openset, self.extra = run, calibrated, openset, dict(extra or {})
        kinds = {"path": "string", "skipped": "string", "answer": "string", **self.extra,
                 **{f"top{k}": "string" for k in range(1, self.top_k + 1)}}  # the rest: numbers
        self.schema = pa.schema([pa.field(c, getattr(pa, kinds.get(c, "float64"))())
                                 for c in score_columns(self.classes, self.top_k, openset, list(self.extra))],
                                metadata={SCORES_TAG: "1", "run": run, "calibrated": str(calibrated)})
        self._stack: Any = None
        self._writer: Any = None
        self._rows: list[dict] = []

    def __enter__(self) -> ScoreWriter:
        import contextlib
        import sys

        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        from clothprobe._util.files import atomic_write

        self._stack = contextlib.ExitStack()
        self._sink = (self._stack.enter_context(atomic_write(self.path, "wb", stream=True)) if self.path is not None
                      else sys.stdout.buffer)
        try:
            if self.fmt == "parquet":
                self._writer = pq.ParquetWriter(self._sink, self.schema)
            elif self.fmt == "csv":
                self._writer = pcsv.CSVWriter(self._sink, self.schema)
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: types.TracebackType | None) -> None:
        """Close the writer; the file (complete) replaces ``path`` only when the block ended without an error."""
        try:
            if kind is None and self.fmt == "json":
                self._write_json()
            if self._writer is not None:
                self._writer.close()
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        self._stack.__exit__(kind, value, trace)

    def _write_json(self) -> None:
        import json
        import sys

        doc = {SCORES_TAG: 1, "run": self.run, "calibrated": self.calibrated, "columns": self.schema.names,
               "rows": self._rows}
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        if self.path is None:
            sys.stdout.write(text)
        else:
            self._sink.write(text.encode("utf-8"))

    def write(self, paths: Sequence[str], proba: np.ndarray, skipped: Sequence[tuple[str, str]] = (),
              answers: Sequence[str] = (), openset_scores: Sequence[float] = (),
              extra_values: dict[str, Sequence] | None = None) -> None:
        """Rows for ``paths`` (``proba``: one row each, the run's class order; with ``openset``, their answers
        and open-set scores; ``extra_values``: each extra column's values) and for ``skipped`` photos."""
        import pyarrow as pa

        n, m = len(paths), len(skipped)
        order = np.argsort(-proba, axis=1, kind="stable")[:, : self.top_k]  # ties: the run's class order
        columns: dict[str, list] = {"path": [*paths, *(p for p, _ in skipped)]}
        for name in self.extra:
            columns[name] = [*(extra_values or {})[name], *[None] * m]
        if self.openset:
            columns["answer"] = [*answers, *[None] * m]
            columns["openset_score"] = [*map(float, openset_scores), *[None] * m]
        for k in range(self.top_k):
            columns[f"top{k + 1}"] = [*(self.classes[i] for i in order[:, k]), *[None] * m]
            columns[f"top{k + 1}_p"] = [*np.take_along_axis(proba, order[:, k : k + 1], 1)[:, 0].tolist(), *[None] * m]
        for j, c in enumerate(self.classes):
            columns[f"p_{c}"] = [*proba[:, j].tolist(), *[None] * m]
        columns["skipped"] = [*[""] * n, *(why for _, why in skipped)]
        if self.fmt == "json":
            names = list(columns)
            self._rows += [dict(zip(names, row)) for row in zip(*columns.values())]
            return
        if self.fmt == "csv":
            from clothprobe._util.csvcells import cell

            text = {f.name for f in self.schema if pa.types.is_string(f.type)}
            columns = {k: [v if v is None else cell(v) for v in c] if k in text else c for k, c in columns.items()}
        self._writer.write_table(pa.table(columns, schema=self.schema))


def write_scores(result: PredictResult, output: str | Path | None, top_k: int, fmt: str | None = None) -> None:
    """A local ``predict`` result as ``ScoreWriter`` rows (the same file ``score_catalogue`` writes);
    ``output`` None: stdout."""
    proba = np.array([[p.probabilities[c] for c in result.classes] for p in result.predictions], np.float64)
    with ScoreWriter(output, result.classes, top_k, fmt, run=result.run, calibrated=result.calibrated,
                     openset=result.openset is not None) as writer:
        writer.write([p.path for p in result.predictions], proba.reshape(-1, len(result.classes)), result.skipped,
                     [p.answer for p in result.predictions], [p.openset_score for p in result.predictions])


@dataclass
class ScoreResult:
    output: Path
    run: str
    classes: list[str]
    scored: int
    skipped: list[tuple[str, str]]
    seconds: float
    calibrated: bool

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def score_catalogue(images: Sequence[str | Path], model_dir: str | Path, output: str | Path, *, engine: RayEngine,
                    weights: str | None = None, batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS,
                    calibrate: bool = False, top_k: int = 3, fmt: str | None = None,
                    progress: bool = False, unknown: bool = True) -> ScoreResult:
    """Score every photo under ``images`` with a run fitted on cached embeddings, on a Ray cluster, into
    ``output`` (CSV or Parquet: ``ScoreWriter``), rows in the order they finish.

    The cluster decodes the photos and embeds them with the run's own recipes (an actor per worker holding
    each backbone); the run's classifier (``Predictor``: files checked against the manifest, model loaded
    once) turns each batch of embeddings into probabilities here, on the driver, as it arrives: a linear or
    tree head costs microseconds per photo against tens of milliseconds for the backbone, so one driver keeps
    up with many workers, and the run directory is read on this machine only. Memory stays bounded: batches
    are written as they come."""
    started = time.perf_counter()
    score_format(output, fmt)
    if read_manifest(model_dir).kind is RunKind.END_TO_END:
        raise ClothprobeError(f"{model_dir} is an end-to-end run; batch scoring on Ray takes a run fitted on cached "
                              f"embeddings (cli fit). Score it with the local engine.")
    predictor = Predictor(model_dir, weights=weights, batch_size=batch_size, max_pixels=max_pixels,
                          calibrate=calibrate, unknown=unknown)
    predictor.ensure_networks()  # here, so that workers on this machine find the network in the store
    writer = ScoreWriter(output, predictor.classes, top_k, fmt, run=predictor.manifest.id,
                         calibrated=predictor.temperature is not None, openset=predictor.openset is not None)
    files = list_images(images)
    skipped: list[tuple[str, str]] = []
    with writer, progress_bar("scoring", len(files), progress, unit="img") as advance:
        for paths, proba, bad, scores in _score_batches(files, predictor, engine):
            answers = [] if scores is None else [UNKNOWN if predictor.openset.is_unknown(v) else predictor.classes[i]
                                                 for v, i in zip(scores, proba.argmax(1))]
            writer.write(paths, proba, bad, answers, [] if scores is None else scores)
            skipped += bad
            advance(len(paths) + len(bad))
    return ScoreResult(output=writer.path, run=predictor.manifest.id, classes=predictor.classes,
                       scored=len(files) - len(skipped), skipped=skipped, seconds=time.perf_counter() - started,
                       calibrated=predictor.temperature is not None)


def _score_batches(files: list[Path], predictor: Predictor,
                   engine: RayEngine) -> Iterator[tuple[list[str], np.ndarray, list[tuple[str, str]], np.ndarray | None]]:
    """(paths, probabilities, skipped photos with why, open-set scores or None) per batch the cluster finishes;
    at the end, the photos whose batch failed."""
    from clothprobe.featurize.engines.plan import EmbedTask
    from clothprobe.featurize.engines.ray import LOST, Block, view_column

    views = view_names(predictor.manifest.tta)
    embeddings = run_embeddings(predictor.manifest.caches)
    tasks = tuple(EmbedTask(how.recipe, views, predictor.batch_size, predictor.max_pixels, how.calibration_files)
                  for how in embeddings)
    rows = predictor.batch_size * engine.block_batches
    blocks = [Block(k, tuple(str(i) for i in range(start, min(start + rows, len(files)))),
                    tuple(os.path.abspath(f) for f in files[start : start + rows]))
              for k, start in enumerate(range(0, len(files), rows))]
    done = np.zeros(len(files), bool)
    for batch in engine.stream(blocks, tasks, weights=predictor.weights):
        position = batch["key"].astype(int)
        done[position] = True
        why = np.where(batch["fault"] != "", batch["fault"], batch["error"])
        good = why == ""
        parts = [how.used({v: np.asarray(batch[view_column(k, v)][good]) for v in views})
                 for k, how in enumerate(embeddings)]
        joined = {v: np.hstack([p[v] for p in parts]) for v in views}
        proba, scores = predictor.from_views(joined)
        yield ([shown(str(files[i])) for i in position[good]], proba,
               [(shown(str(files[i])), str(reason)) for i, reason in zip(position[~good], why[~good])],
               None if scores is None else scores)
    lost = [(shown(str(files[i])), f"not scored: {LOST}") for i in np.flatnonzero(~done)]
    if lost:
        yield [], np.zeros((0, len(predictor.classes))), lost, None if predictor.openset is None else np.zeros(0)
