"""``featurize()``: bring a dataset's embedding cache up to date, computing only what is new or changed.

The driver plans (``plan.py``), an engine embeds the plan's shards (``worker.py``: the local engine by
default, in this process), and the driver merges what comes back into the one cache (``merge.py``).
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clothprobe._util.progress import progress_bar
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache import identity
from clothprobe.featurize.cache.read import ExistingCache
from clothprobe.featurize.cache.schema import CacheHeader, check_target, default_path
from clothprobe.featurize.cache.write import writer_lock
from clothprobe.featurize.embed import ORIGINAL, view_names
from clothprobe.featurize.engines.base import Engine
from clothprobe.featurize.engines.local import LocalEngine
from clothprobe.featurize.engines.merge import Merger, PartialStore, strict_error
from clothprobe.featurize.engines.plan import (
    SHARD_SIZE,
    EmbedTask,
    FileIndex,
    Plan,
    Shard,
    ShardBatch,
    decode_settings,
    index_files,
    make_plan,
)
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS
from clothprobe.featurize.model.backbones import DEFAULT_BACKBONE
from clothprobe.featurize.model.calibration import DEFAULT_SIZE
from clothprobe.featurize.model.guard import (
    GuardSample,
    LabelledPhoto,
    guard_sample,
    guarded,
    measure_guard,
    recorded_guard,
)
from clothprobe.featurize.model.recipe import Recipe, resolve_recipe
from clothprobe.featurize.model.rows import UNTIMED_ROWS, worth_timing
from clothprobe.featurize.model.store import ModelStore
from clothprobe.featurize.model.taps import DEFAULT_TAPS
from clothprobe.featurize.table import LabelsTable, TableRecord, open_dataset


@dataclass
class FeaturizeResult:
    """What a run did, for the CLI to print and for benchmarks to read."""

    cache_path: Path
    backbone: str
    precision: str
    runtime: str
    images: dict[str, int]
    computed: int = 0
    reused: int = 0
    resumed: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    invalidated: list[str] = field(default_factory=list)
    up_to_date: bool = False
    seconds: float = 0.0
    model_seconds: float = 0.0
    recipe: Recipe | None = None
    damaged: str = ""  # what was wrong with the previous cache, which this run replaced
    remembered: int = 0  # skipped files known from earlier runs not to decode (not tried again)
    table: TableRecord | None = None  # a dataset read from a labels table: how it was read and split

    @property
    def cache_megabytes(self) -> float:
        return self.cache_path.stat().st_size / 1e6 if self.cache_path.is_file() else 0.0

    @property
    def images_per_second(self) -> float:
        return self.computed / self.model_seconds if self.model_seconds > 0 else 0.0


def library_versions() -> dict[str, str]:
    import h5py
    import numpy
    import PIL

    from clothprobe import __version__

    versions = {"clothprobe": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
                "h5py": h5py.__version__, "pillow": PIL.__version__}
    for name in ("openvino", "tensorflow", "keras"):  # recorded when they ran; never imported just to ask
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    return versions


@dataclass(frozen=True)
class _Options:
    out: Path
    views: tuple[str, ...]
    batch_size: int | None
    max_pixels: int
    strict: bool
    progress: bool
    shard_size: int
    seed: int
    guard: bool  # the default int8: checked against its reference on validation before first use


def _check_place(out: Path, data_root: Path) -> None:
    """Refuse a cache path inside a run, the model store or the dataset being featurized: the next fit, prune
    or scan there would take the cache for its own file (and delete it, or list it as a stray image)."""
    from clothprobe._util.outputs import folder_owner

    target = out.expanduser().resolve()
    owner = folder_owner(target)
    if not owner and Path(data_root).resolve() in target.parents:
        owner = f"the dataset being featurized, {data_root}"
    if owner:
        raise ClothprobeError(f"--out {out} is inside {owner}; a feature cache must live outside it. Choose another "
                              f"path, e.g. features/<dataset>/<backbone>.h5.")


def featurize(
    data: str | Path,
    backbone: str = DEFAULT_BACKBONE,
    out: str | Path | None = None,
    features_dir: str | Path = "features",
    weights: str | Path | None = "imagenet",
    batch_size: int | None = None,
    precision: str = "auto",
    runtime: str = "auto",
    tta: bool = False,
    strict: bool = False,
    image_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    progress: bool = False,
    *,
    rebuild: bool = False,
    engine: Engine | None = None,
    calibration: str | Path | None = None,
    calibration_size: int = DEFAULT_SIZE,
    shard_size: int = SHARD_SIZE,
    taps: str = DEFAULT_TAPS,
    recipe: Recipe | None = None,
    labels: LabelsTable | None = None,
) -> FeaturizeResult:
    """Embed every image under ``data`` with ``backbone`` and cache the embeddings in HDF5.

    Only images whose content hash the cache lacks are computed; the cache is replaced atomically.
    Everything that can be checked is checked before any work: the recipe (weights found and hashed),
    the dataset layout, and that ``out`` is a clothprobe cache or nothing. ``rebuild`` allows replacing
    a cache of another schema version or of another dataset (``featurize/cache/identity.py``). ``engine``:
    where shards are embedded (default: this process).
    ``calibration``: int8 only, a folder of photos to calibrate on instead of the training split.
    ``taps``: the layers whose pooled outputs are cached (``final``, ``all`` or names; featurize/model/taps.py).
    ``recipe``: embed with this recipe as a cache recorded it (``reproduce``d) instead of resolving ``backbone``,
    ``weights``, ``image_size``, ``runtime``, ``precision`` and ``taps`` (``fit --unknown``: another folder
    embedded like the dataset, not recorded in the catalog; an int8 recipe runs the model its store entry was
    calibrated for).
    ``labels``: the photos, classes and splits come from this labels table (``featurize/table.py``), ``data``
    being the folder its photo names are relative to.
    """
    from clothprobe.featurize import catalog
    from clothprobe.featurize.model.selfcheck import effective_recipe

    started = time.perf_counter()
    if batch_size is not None and batch_size < 1:
        raise ClothprobeError(f"--batch-size must be at least 1, got {batch_size}.")
    if max_pixels < 1:
        raise ClothprobeError(f"--max-pixels must be at least 1, got {max_pixels}.")
    given = recipe is not None
    recipe = recipe or resolve_recipe(backbone, weights=weights, image_size=image_size, runtime=runtime,
                                      precision=precision, seed=seed, taps=taps)
    dataset = open_dataset(data, labels)
    out = Path(out) if out else default_path(features_dir, dataset.name, recipe.backbone)
    _check_place(out, dataset.root)
    check_target(out, rebuild)
    opts = _Options(out=out, views=view_names(tta), batch_size=batch_size,
                    max_pixels=max_pixels, strict=strict, progress=progress, shard_size=shard_size, seed=seed,
                    guard=precision == "auto" and not given)
    engine = engine or LocalEngine()
    with writer_lock(out):
        check_target(out, rebuild)  # again, now that no other clothprobe writes it
        index = index_files(dataset, engine.hash_files, progress)
        if strict and index.unusable:
            raise strict_error(index.unusable, dataset.root)
        with ExistingCache(out) as existing:
            identity.check_writable(out, existing.header, dataset.root, lambda: identity.index_fingerprint(index),
                                    rebuild)
            if opts.guard:
                recipe = _default_precision(recipe, index, calibration)
            recipe, photos = ((recipe, ()) if given else
                              _calibrated(recipe, index, calibration, calibration_size, seed, existing))
            result = _update(index, effective_recipe(recipe), photos, existing, engine, opts)
    if not given:  # a folder embedded like another's cache is found by its path, not by name
        catalog.record(features_dir, dataset=dataset.name, backbone=result.backbone, cache_path=out,
                       data_root=dataset.root)
    result.seconds = time.perf_counter() - started
    result.table = dataset.table
    return result


def _default_precision(recipe: Recipe, index: FileIndex, calibration: str | Path | None) -> Recipe:
    """``--precision auto``: int8 on OpenVINO where there are photos to calibrate it on (guarded on
    validation before first use, see ``featurize/model/guard.py``), else ``recipe`` as resolved."""
    if recipe.runtime == "openvino" and (calibration is not None or index.dataset.files.get("train")):
        return recipe.with_precision("int8")
    return recipe


def _guard_sample(index: FileIndex, seed: int) -> GuardSample | None:
    splits = {split: [LabelledPhoto(f.path, index.hashes[f.rel_path], f.label)
                      for f in index.dataset.files.get(split, []) if f.rel_path in index.hashes]
              for split in ("train", "validation")}
    return guard_sample(splits["train"], splits["validation"], seed)


def _calibrated(recipe: Recipe, index: FileIndex, calibration: str | Path | None, size: int, seed: int,
                existing: ExistingCache) -> tuple[Recipe, tuple[tuple[str, str], ...]]:
    """int8 only: the calibration photos as ``(absolute path, sha256)`` in the order NNCF sees them (a seeded
    sample of the training split, or of ``calibration``); their digest goes into the recipe, so another sample
    makes another cache, and the cache records them, so the network can be made again where the store lacks
    it. An int8 cache keeps the calibration it was made with while its model is in the store, so adding
    training photos (which may change the sample) computes only the new photos."""
    if recipe.precision != "int8":
        if calibration is not None:
            raise ClothprobeError(f"--calibration is for --precision int8; this run is {recipe.precision}.")
        return recipe, ()
    from clothprobe.featurize.model.calibration import calibration_from_folder, calibration_sample

    kept = _kept_calibration(recipe, existing)
    if calibration is None and kept is not None:
        return kept, existing.header.calibration_photos
    if calibration is not None:
        chosen = calibration_from_folder(calibration, size, seed)
    else:
        train = index.dataset.files.get("train", [])
        chosen = calibration_sample([(f.path, index.hashes[f.rel_path]) for f in train if f.rel_path in index.hashes],
                                    size, seed)
    photos = tuple((str(Path(p).resolve()), sha) for p, sha in zip(chosen.files, chosen.hashes))
    return recipe.with_precision("int8", chosen.digest), photos


def _kept_calibration(recipe: Recipe, existing: ExistingCache) -> Recipe | None:
    """The existing cache's int8 recipe, when it differs from ``recipe`` only in its calibration sample and
    its quantized model is still in the store."""
    previous = existing.header.recipe if existing.usable else None
    if previous is None or previous.precision != "int8" or previous.with_precision("int8") != recipe.with_precision("int8"):
        return None
    return previous if ModelStore().read_for(previous) is not None else None


def _update(index: FileIndex, recipe: Recipe, photos: tuple[tuple[str, str], ...], existing: ExistingCache,
            engine: Engine, o: _Options) -> FeaturizeResult:
    """Plan against the verified cache, embed what is missing, merge, and say what happened."""
    if existing.damage and o.strict:
        raise ClothprobeError(f"Feature cache {o.out} is damaged ({existing.damage}); --strict will not rebuild it. "
                              f"Run without --strict to rebuild it, or delete it.")
    plan, merger, model_seconds, before = _embed(index, recipe, tuple(p for p, _ in photos), existing, engine, o)
    recipe, dataset = plan.recipe, index.dataset
    header = CacheHeader(recipe=recipe, class_names=tuple(dataset.class_names), dataset=dataset.name,
                         views=o.views, data_root=str(dataset.root.resolve()), decode=plan.decode,
                         versions=library_versions(), data_fingerprint=identity.index_fingerprint(index),
                         calibration_photos=photos if recipe.calibration and recipe.precision == "int8" else (),
                         table=dataset.table.to_dict() if dataset.table else {})
    outcome = merger.write(existing, o.out, header, model_seconds)
    old = existing.header
    rows = sum(len(r.paths) for r in outcome.splits.values())
    return FeaturizeResult(
        cache_path=o.out, backbone=recipe.backbone, precision=recipe.precision, runtime=recipe.runtime,
        images={s: len(f) for s, f in dataset.files.items()}, computed=outcome.computed + before,
        reused=rows - outcome.computed - before, resumed=plan.resumed - before, removed=outcome.removed,
        skipped=sorted(outcome.skipped.items()),
        invalidated=recipe.differences(old.recipe) if old is not None and old.recipe != recipe else [],
        up_to_date=not outcome.written, model_seconds=model_seconds, recipe=recipe, damaged=existing.damage,
        remembered=sum(1 for sha in index.hashes.values() if sha in plan.failures),
    )


def _plan(index: FileIndex, recipe: Recipe, existing: ExistingCache, o: _Options) -> tuple[Plan, Merger]:
    partial = PartialStore(o.out, recipe.fingerprint, o.views)
    plan = make_plan(index, recipe, o.views, decode_settings(o.max_pixels), existing, partial, o.shard_size)
    return plan, Merger(plan, partial, o.strict)


def _embed(index: FileIndex, recipe: Recipe, calibration_files: tuple[str, ...], existing: ExistingCache,
           engine: Engine, o: _Options) -> tuple[Plan, Merger, float, int]:
    """Embed the plan's shards with ``engine``, each finished batch kept as it arrives; also how many photos
    were embedded before the final plan's (the guard's sample, embedded first). No model is loaded when nothing
    is to be computed (a rerun, even over files that do not decode)."""
    plan, merger = _plan(index, recipe, existing, o)
    if not plan.todo:
        return plan, merger, 0.0, 0
    sample = _guard_sample(index, o.seed) if o.guard and recipe.precision == "int8" else None
    recorded = None if sample is None else recorded_guard(recipe, sample, ModelStore())
    if recorded is not None:  # measured before on these photos: nothing to measure now
        recipe, sample = guarded(recipe, recorded), None
        plan, merger = _plan(index, recipe, existing, o)
        if not plan.todo:
            return plan, merger, 0.0, 0
    ran = _open(engine, recipe, calibration_files, plan, o)
    if ran != recipe:  # the runtime's self-check fell back to another precision here: plan for what runs
        plan, merger, sample = (*_plan(index, ran, existing, o), None)
    started, before = time.perf_counter(), 0
    with progress_bar(ran.label, len(plan.todo), o.progress, unit="img") as advance:
        if sample is not None:  # the guard's photos first, with the int8 model the job runs anyway
            vectors, before = _sample_first(engine, plan, merger, sample, advance)
            # the reference at the job's rows per request: its float32 self-check reuses the compiled model
            # the int8 self-check made
            guard = measure_guard(ran, sample, vectors, len(index.dataset.class_names),
                                  batch_size=engine.request_rows or UNTIMED_ROWS, seed=o.seed)
            instead = guarded(ran, guard)
            if instead != ran:  # int8 failed: what it embedded is another recipe's, not kept
                ran, before = _open(engine, instead, calibration_files, plan, o), 0
            plan, merger = _plan(index, ran, existing, o)  # the rest: the sample's batches are in the partial store
        for item in engine.embed(plan.shards):
            advance(merger.add(item))
    return plan, merger, time.perf_counter() - started, before


def _open(engine: Engine, recipe: Recipe, calibration_files: tuple[str, ...], plan: Plan, o: _Options) -> Recipe:
    return engine.open(EmbedTask(recipe, o.views, o.batch_size, o.max_pixels, calibration_files,
                                 time_rows=worth_timing(len(plan.todo))))


def _sample_first(engine: Engine, plan: Plan, merger: Merger, sample: GuardSample,
                  advance: Callable[[int], None]) -> tuple[dict[str, np.ndarray], int]:
    """Embed (and keep, as part of the job) the sample's photos the plan has to compute, first; their
    original view's embeddings by content hash, with those of sample photos the cache already holds, and how
    many photos were embedded."""
    photos = [*sample.train, *sample.validation]
    wanted = {p.sha256 for p in photos}
    first = [item for item in plan.todo if item.sha256 in wanted]
    shards = [Shard(k, tuple(first[i : i + plan.shard_size])) for k, i in enumerate(range(0, len(first), plan.shard_size))]
    vectors: dict[str, np.ndarray] = {}
    for item in engine.embed(shards):
        advance(merger.add(item))
        if isinstance(item, ShardBatch) and item.sha256:
            vectors.update(zip(item.sha256, item.views[ORIGINAL]))
    for p in photos:
        if p.sha256 not in vectors and p.sha256 in plan.known:
            source, row = plan.known[p.sha256]
            vectors[p.sha256] = source.read(ORIGINAL, np.array([row]))[0]
    return vectors, merger.computed
