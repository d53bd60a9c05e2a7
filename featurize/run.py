"""``featurize()``: bring a dataset's embedding cache up to date, computing only what is new or changed."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from clothprobe.errors import ClothprobeError
from clothprobe.featurize import cache as cache_mod
from clothprobe.featurize.backbones import get_backbone
from clothprobe.featurize.dataset import Dataset, ImageFile, scan
from clothprobe.featurize.recipe import resolve_precision, resolve_recipe, resolve_runtime
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS, RESIZE
from clothprobe.featurize.weights import resolve_weights
from clothprobe.files import file_sha256
from clothprobe.progress import progress_bar


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
    try:  # recorded when the model ran; a cached run does not import TensorFlow just to say its version
        import sys

        if "tensorflow" in sys.modules:
            versions["tensorflow"] = sys.modules["tensorflow"].__version__
            versions["keras"] = sys.modules["keras"].__version__
    except AttributeError:
        pass
    return versions


def _hash_files(files: list[ImageFile], skipped: dict[str, str], show: bool) -> dict[str, str]:
    hashes: dict[str, str] = {}
    with progress_bar("hashing", len(files), show, unit="files") as advance:
        for f in files:
            try:
                hashes[f.rel_path] = file_sha256(f.path)
            except OSError as err:
                skipped[f.rel_path] = f"cannot read: {err.strerror or err}"
            advance(1)
    return hashes


def _strict_error(skipped: dict[str, str], root: Path) -> ClothprobeError:
    lines = "\n".join(f"  {root / p}: {why}" for p, why in sorted(skipped.items()))
    return ClothprobeError(
        f"--strict: {len(skipped)} file(s) cannot be used:\n{lines}\n"
        f"Fix or remove them, or run without --strict to skip and report them. "
        f"Finished batches are kept; the next run resumes."
    )


def featurize(
    data: str | Path,
    backbone: str = "xception",
    out: str | Path | None = None,
    features_dir: str | Path = "features",
    weights: str | Path | None = "imagenet",
    batch_size: int = 32,
    precision: str = "auto",
    runtime: str = "auto",
    tta: bool = False,
    strict: bool = False,
    image_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    progress: bool = False,
) -> FeaturizeResult:
    """Embed every image under ``data`` with ``backbone`` and cache the embeddings in HDF5.

    Only images whose content hash the cache lacks are computed; the cache is replaced atomically.
    Weights are resolved first, so a missing weights file stops the run before any work.
    """
    started = time.perf_counter()
    bb = get_backbone(backbone)
    runtime = resolve_runtime(runtime)
    precision = resolve_precision(precision, runtime)
    if batch_size < 1:
        raise ClothprobeError(f"--batch-size must be at least 1, got {batch_size}.")
    resolved = resolve_weights(bb, weights)
    dataset = scan(data)
    out = Path(out) if out else cache_mod.default_path(features_dir, dataset.name, bb.name)
    config = cache_mod.CacheConfig(
        backbone=bb.name,
        input_size=image_size or bb.input_size,
        preprocessing=json.dumps(bb.preprocess.to_dict()),
        pooling="avg",
        resize=RESIZE,
        precision=precision,
        runtime=runtime,
        weights_sha256=resolved.sha256 if resolved.path else f"random-init-seed-{seed}",
    )
    views = ("embeddings", "flip") if tta else ("embeddings",)
    result = FeaturizeResult(out, bb.name, precision, runtime, {s: len(f) for s, f in dataset.files.items()})
    skipped: dict[str, str] = {p: "not inside a class folder" for p in dataset.stray}
    split_of = {**dataset.stray, **{f.rel_path: f.split for fs in dataset.files.values() for f in fs}}
    if strict and skipped:
        raise _strict_error(skipped, dataset.root)

    with cache_mod.writer_lock(out):
        existing = cache_mod.ExistingCache(out)
        try:
            known: cache_mod.Known = {}
            if existing.readable and existing.config != config:
                result.invalidated = config.differences(existing.config)
            elif existing.readable:
                known = existing.known(views)
            partial = cache_mod.PartialStore(out, config.fingerprint(), views)
            resumed = {k: v for k, v in partial.known().items() if k not in known}
            known.update(resumed)

            all_files = [f for files in dataset.files.values() for f in files]
            hashes = _hash_files(all_files, skipped, progress)
            todo: dict[str, ImageFile] = {}
            for f in all_files:
                sha = hashes.get(f.rel_path)
                if sha is not None and sha not in known:
                    todo.setdefault(sha, f)
            result.resumed = sum(1 for f in all_files if hashes.get(f.rel_path) in resumed)
            if strict and skipped:
                raise _strict_error(skipped, dataset.root)
            if todo:
                _compute(list(todo.items()), bb, resolved.path, precision, runtime, config.input_size, batch_size,
                         tta, seed, max_pixels, partial, skipped, strict, dataset, progress, result)
                known.update(partial.known())

            splits = _split_rows(dataset, hashes, known, skipped, split_of)
            result.skipped = sorted(skipped.items())
            result.computed = len(todo) - sum(1 for sha, f in todo.items() if f.rel_path in skipped)
            result.reused = sum(len(r.paths) for r in splits.values()) - result.computed
            result.removed = len(set(existing.paths) - {p for r in splits.values() for p in r.paths})
            digest = _content_digest(config, dataset.class_names, views, splits)
            if existing.readable and existing.h5.attrs.get("content_digest") == digest:
                result.up_to_date = True
            else:
                cache_mod.write_cache(
                    out, config, dataset.class_names, dataset.name, views, bb.embedding_dim, splits, known,
                    extra_attrs={
                        "content_digest": digest,
                        "weights_source": resolved.source,
                        "versions": json.dumps(library_versions(), sort_keys=True),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "data_root": str(dataset.root.resolve()),
                        "seconds_per_image": (result.model_seconds / result.computed if result.computed
                                              else float(existing.attr("seconds_per_image", 0.0))),
                    },
                )
            partial.remove()
        finally:
            existing.close()
    result.seconds = time.perf_counter() - started
    return result


def _compute(todo, bb, weights_path, precision, runtime, size, batch_size, tta, seed, max_pixels, partial, skipped,
             strict, dataset: Dataset, progress: bool, result: FeaturizeResult) -> None:  # noqa: ANN001
    """Run the model over the images in ``todo`` (content hash, file), saving each finished batch."""
    from clothprobe.featurize.embed import open_embedder

    recipe = resolve_recipe(bb.name, weights=str(weights_path) if weights_path else None, image_size=size,
                            runtime=runtime, precision=precision, seed=seed)
    embedder = open_embedder(recipe, batch_size=batch_size, flip=tta)
    files = [f.path for _, f in todo]
    started = time.perf_counter()
    with progress_bar(f"{bb.name} ({runtime}, {precision})", len(files), progress, unit="img") as advance:
        for batch in embedder.run(files, max_pixels):
            for i, reason in batch.skipped.items():
                skipped[todo[i][1].rel_path] = reason
            if strict and batch.skipped:
                raise _strict_error({todo[i][1].rel_path: r for i, r in batch.skipped.items()}, dataset.root)
            if batch.indices:
                partial.add([todo[i][0] for i in batch.indices], batch.views)
            advance(len(batch.indices) + len(batch.skipped))
    result.model_seconds = time.perf_counter() - started


def _split_rows(dataset: Dataset, hashes: dict[str, str], known: cache_mod.Known,
                skipped: dict[str, str], split_of: dict[str, str]) -> dict[str, cache_mod.SplitRows]:
    splits = {}
    for split, files in dataset.files.items():
        usable = [f for f in files if f.rel_path not in skipped and hashes.get(f.rel_path) in known]
        splits[split] = cache_mod.SplitRows(
            paths=[f.rel_path for f in usable],
            labels=[f.label for f in usable],
            sha256=[hashes[f.rel_path] for f in usable],
            skipped=sorted((p, r) for p, r in skipped.items() if split_of[p] == split),
        )
    return splits


def _content_digest(config: cache_mod.CacheConfig, class_names: list[str], views: tuple[str, ...],
                    splits: dict[str, cache_mod.SplitRows]) -> str:
    """A hash of everything a cache holds, so an unchanged dataset is not rewritten."""
    digest = hashlib.sha256(json.dumps([config.fingerprint(), class_names, views]).encode())
    for name in sorted(splits):
        rows = splits[name]
        digest.update(json.dumps([name, rows.paths, rows.labels, rows.sha256, rows.skipped]).encode())
    return digest.hexdigest()
