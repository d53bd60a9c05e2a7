"""A recipe's runnable model: taken from the store (made there the first time) and, for bfloat16 and int8,
checked against float32 the first time it runs on a machine.

Trust, but check, the runtime: OpenVINO has an open report of wrong bfloat16 results on some AMD Zen 5
CPUs. A fixed probe batch is embedded with the reduced-precision model and with float32; if the lowest
cosine similarity is below the threshold for that precision, a wider one is used instead, with one warning,
and the outcome is recorded in the store entry so the check (and the warning's cause) is not repeated.
A failed int8 falls back to bfloat16 where the CPU has bfloat16 units (itself checked), else float32.
"""

from __future__ import annotations

import hashlib
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize.model.recipe import Recipe, cpu_has_bf16
from clothprobe.featurize.model.rows import chosen_rows
from clothprobe.featurize.model.runtimes import IR_FILE, Runner, export_float, load_runner, quantize_int8
from clothprobe.featurize.model.store import ModelStore, SelfCheck, StoreEntry

# Lowest cosine to float32 accepted on the probe batch. Measured on it with real ImageNet weights (OpenVINO
# 2026.4, AMD EPYC Zen 5 with AVX512-BF16; int8 calibrated on 300 training photos): bfloat16 min 0.99948
# (Xception) and 0.99999 (VGG16); int8 min 0.966 (Xception) and 0.9926 (VGG16). A broken runtime gives far less.
THRESHOLDS = {"bfloat16": 0.99, "int8": 0.90}
PROBE_IMAGES = 8
PROBE_SEED = 20261125


def machine_id() -> str:
    """This CPU and runtime: a check done elsewhere, or under another OpenVINO, does not count here."""
    try:
        import openvino

        runtime = openvino.get_version()
    except ImportError:
        runtime = "none"
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
        family = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("cpu family")), "")
        flags = " ".join(sorted(next((ln.split(":", 1)[1] for ln in info.splitlines() if ln.startswith("flags")), "").split()))
    except OSError:
        model, family, flags = platform.processor(), "", ""
    digest = hashlib.sha256(f"{model}|{family}|{flags}|{runtime}".encode()).hexdigest()[:12]
    return f"{model or platform.machine()} family {family or '?'} ({digest})"


def probe_batch(size: int) -> np.ndarray:
    """``PROBE_IMAGES`` fixed smooth colour images (seeded noise, upscaled): uint8 ``(n, size, size, 3)``."""
    from PIL import Image

    rng = np.random.default_rng(PROBE_SEED)
    small = rng.integers(0, 256, size=(PROBE_IMAGES, 6, 6, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((size, size), Image.BICUBIC)) for s in small])


def _embed_probe(recipe: Recipe, runner: Runner, rows: int) -> np.ndarray:
    from clothprobe.featurize.embed import model_input, pool

    images = probe_batch(recipe.input_size)
    out = []
    for start in range(0, len(images), rows):
        chunk = images[start : start + rows]
        padded = np.zeros((rows, *chunk.shape[1:]), np.uint8)
        padded[: len(chunk)] = chunk
        out.append(pool(recipe, runner(model_input(recipe, padded)))[: len(chunk)])
    return np.concatenate(out)


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-30), 0.0)
    return float(cos.min()) if np.isfinite(cos).all() else float("nan")


def taps_cosine_min(recipe: Recipe, a: np.ndarray, b: np.ndarray) -> float:
    """The lowest cosine over every image and every tap (each tap's columns compared on their own, so a
    small tap that a runtime breaks is not hidden by a wide one that it gets right)."""
    from clothprobe.featurize.model.taps import tap_layout

    cosines, start = [], 0
    for _, width in tap_layout(recipe, a.shape[1]):
        cosines.append(cosine_min(a[:, start : start + width], b[:, start : start + width]))
        start += width
    return float(min(cosines))


class CalibrationMismatch(ClothprobeError):
    """The calibration photos given are not the ones an int8 recipe was calibrated on (their content differs)."""


class _Loader:
    """Entries and runners for one request: store, weights, calibration photos, compile settings."""

    def __init__(self, store: ModelStore, weights: Any, calibration: Sequence[Path], threads: int | None,
                 time_rows: bool) -> None:
        self.store, self.weights, self.calibration, self.threads = store, weights, list(calibration), threads
        self.time_rows = time_rows

    def entry(self, recipe: Recipe) -> StoreEntry:
        if recipe.precision != "int8":
            return self.store.get_or_build(recipe, lambda d: export_float(recipe, d, self.weights))
        float_entry = self.entry(recipe.with_precision("float32"))
        if self.store.read_for(recipe) is not None:
            return self.store.get_or_build(recipe, _unreachable)
        if not self.calibration:
            raise ClothprobeError(
                f"The int8 model for {recipe.backbone} (calibration {recipe.calibration}) is not in the model store "
                f"{self.store.root}; re-make it with `cli featurize --data DIR --backbone {recipe.backbone} "
                f"--precision int8` over the same training photos (any names: they are sampled by content, same "
                f"--seed and --calibration-size), or copy its store entry here."
            )
        from clothprobe.featurize.embed import model_input

        hashes = checked_calibration(recipe, self.calibration)
        return self.store.get_or_build(recipe, lambda d: quantize_int8(
            recipe, float_entry.file(IR_FILE), d, self.calibration, lambda px: model_input(recipe, px)), hashes)

    def runner(self, recipe: Recipe, entry: StoreEntry, rows: int | None) -> tuple[int, Runner]:
        """The model compiled for ``rows``, or for the rows per request measured on this machine."""
        def compile_for(n: int) -> Runner:
            return load_runner(recipe, entry.file, n, cache_dir=self.store.compile_cache(), threads=self.threads)

        if rows is not None:
            return rows, compile_for(rows)
        return chosen_rows(recipe, entry, self.store, machine_id(), compile_for, measure=self.time_rows)


def ensure_entry(recipe: Recipe, *, calibration_files: Sequence[Path] = (), weights: Any = None,
                 store: ModelStore | None = None) -> None:
    """Make sure the store holds the files ``recipe`` runs from, building them now if it lacks them (an int8
    network from ``calibration_files``, which must be the photos it was calibrated on). Compiles nothing."""
    store = store or ModelStore()
    with store.in_use(recipe, recipe.with_precision("float32")):
        _Loader(store, weights, calibration_files, threads=None, time_rows=False).entry(recipe)


def _unreachable(directory: Path) -> None:
    raise AssertionError(f"{directory}: an existing store entry is never built again")


def checked_calibration(recipe: Recipe, files: Sequence[Path]) -> tuple[str, ...]:
    """The content hashes of the calibration photos, in the order NNCF sees them, checked against the
    recipe's calibration digest (other photos would make another model under the same name)."""
    from clothprobe._util.files import file_sha256
    from clothprobe.featurize.model.calibration import calibration_digest

    hashes = tuple(file_sha256(f) for f in files)
    if calibration_digest(hashes) != recipe.calibration:
        raise CalibrationMismatch(f"The {len(hashes)} calibration photos given do not make calibration {recipe.calibration} "
                              f"of {recipe.backbone} (their content differs); give the photos it was made from.")
    return hashes


def fallback_precision(recipe: Recipe) -> str:
    """What runs instead of a precision that failed a check here: int8 -> bfloat16 where the CPU has bfloat16
    units, else float32."""
    return "bfloat16" if recipe.precision == "int8" and cpu_has_bf16() else "float32"


def effective_recipe(recipe: Recipe, store: ModelStore | None = None) -> Recipe:
    """``recipe``, or what runs instead when its precision already failed the self-check on this machine.
    Cheap (reads a manifest, builds nothing): call it before comparing with a cache."""
    store = store or ModelStore()
    while recipe.precision != "float32":
        entry = store.read_for(recipe)
        check = entry.checks.get(_check_key(recipe)) if entry else None
        if not check or check.passed:
            break
        recipe = recipe.with_precision(fallback_precision(recipe))
    return recipe


def _check_key(recipe: Recipe) -> str:
    return f"{recipe.precision} on {machine_id()}"


@dataclass(frozen=True)
class Checked:
    """The recipe that really runs here, its compiled model, and the rows per request it takes."""

    recipe: Recipe
    runner: Runner
    rows: int


def checked_runner(recipe: Recipe, *, rows: int | None = None, calibration_files: Sequence[Path] = (),
                   weights: Any = None, store: ModelStore | None = None, threads: int | None = None,
                   time_rows: bool = True) -> Checked:
    """The recipe that really runs here and its compiled model (see the module docstring); ``rows`` None:
    the rows per request measured for it on this machine, or measured now unless ``time_rows`` is False
    (``featurize/model/rows.py``)."""
    store = store or ModelStore()
    recipe = effective_recipe(recipe, store)
    with store.in_use(recipe, recipe.with_precision("float32")):  # a prune waits until the files are loaded
        return _checked_runner(recipe, _Loader(store, weights, calibration_files, threads, time_rows), store, rows)


def _checked_runner(recipe: Recipe, loader: _Loader, store: ModelStore, rows: int | None) -> Checked:
    entry = loader.entry(recipe)
    chosen, runner = loader.runner(recipe, entry, rows)
    if recipe.precision == "float32" or _check_key(recipe) in entry.checks:
        return Checked(recipe, runner, chosen)
    reference = recipe.with_precision("float32")
    _, ref_runner = loader.runner(reference, loader.entry(reference), chosen)
    cos = taps_cosine_min(recipe, _embed_probe(recipe, runner, chosen), _embed_probe(reference, ref_runner, chosen))
    threshold = THRESHOLDS[recipe.precision]
    passed = bool(cos >= threshold)
    store.record_check(entry, _check_key(recipe), SelfCheck(passed, cos, threshold, PROBE_IMAGES, time.time()))
    if passed:
        return Checked(recipe, runner, chosen)
    fallback = fallback_precision(recipe)
    warnings.warn(ClothprobeWarning(
        f"{recipe.label} embeddings disagree with float32 on this CPU (probe cosine min {cos:.4f} < {threshold}): "
        f"using {fallback} instead. Recorded in {entry.path}."), stacklevel=4)
    return _checked_runner(effective_recipe(recipe.with_precision(fallback), store), loader, store, rows)
