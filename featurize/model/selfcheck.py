"""A recipe's runnable model: taken from the store (made there the first time) and, for bfloat16 and int8,
checked against float32 the first time it runs on a machine.

Trust, but check, the runtime: OpenVINO has an open report of wrong bfloat16 results on some AMD Zen 5
CPUs. A fixed probe batch is embedded with the reduced-precision model and with float32; if the lowest
cosine similarity is below the threshold for that precision, float32 is used instead, with one warning,
and the outcome is recorded in the store entry so the check (and the warning's cause) is not repeated.
"""

from __future__ import annotations

import hashlib
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize.model.recipe import Recipe
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


class _Loader:
    """Entries and runners for one request: store, weights, calibration photos, compile settings."""

    def __init__(self, store: ModelStore, weights: Any, calibration: Sequence[Path], threads: int | None) -> None:
        self.store, self.weights, self.calibration, self.threads = store, weights, list(calibration), threads

    def entry(self, recipe: Recipe) -> StoreEntry:
        if recipe.precision != "int8":
            return self.store.get_or_build(recipe, lambda d: export_float(recipe, d, self.weights))
        float_entry = self.entry(recipe.with_precision("float32"))
        if not self.calibration and self.store.read_for(recipe) is None:
            raise ClothprobeError(
                f"The int8 model for {recipe.backbone} (calibration {recipe.calibration}) is not in the model store "
                f"{self.store.root}, and no calibration photos were given to make it. Featurize with "
                f"--precision int8 on this machine (or copy that store entry here)."
            )
        from clothprobe.featurize.embed import model_input

        return self.store.get_or_build(recipe, lambda d: quantize_int8(
            recipe, float_entry.file(IR_FILE), d, self.calibration, lambda px: model_input(recipe, px)))

    def runner(self, recipe: Recipe, entry: StoreEntry, rows: int) -> Runner:
        return load_runner(recipe, entry.file, rows, cache_dir=self.store.home / "compiled", threads=self.threads)


def effective_recipe(recipe: Recipe, store: ModelStore | None = None) -> Recipe:
    """``recipe``, or its float32 form when its precision already failed the self-check on this machine.
    Cheap (reads a manifest, builds nothing): call it before comparing with a cache."""
    if recipe.precision == "float32":
        return recipe
    store = store or ModelStore()
    entry = store.read_for(recipe)
    check = entry.checks.get(_check_key(recipe)) if entry else None
    return recipe.with_precision("float32") if check and not check.passed else recipe


def _check_key(recipe: Recipe) -> str:
    return f"{recipe.precision} on {machine_id()}"


def checked_runner(recipe: Recipe, *, rows: int, calibration_files: Sequence[Path] = (), weights: Any = None,
                   store: ModelStore | None = None, threads: int | None = None) -> tuple[Recipe, Runner]:
    """The recipe that really runs here and its compiled model (see the module docstring)."""
    store = store or ModelStore()
    recipe = effective_recipe(recipe, store)
    with store.in_use(recipe, recipe.with_precision("float32")):  # a prune waits until the files are loaded
        return _checked_runner(recipe, _Loader(store, weights, calibration_files, threads), store, rows)


def _checked_runner(recipe: Recipe, loader: _Loader, store: ModelStore, rows: int) -> tuple[Recipe, Runner]:
    entry = loader.entry(recipe)
    runner = loader.runner(recipe, entry, rows)
    if recipe.precision == "float32" or _check_key(recipe) in entry.checks:
        return recipe, runner
    reference = recipe.with_precision("float32")
    ref_runner = loader.runner(reference, loader.entry(reference), rows)
    cos = taps_cosine_min(recipe, _embed_probe(recipe, runner, rows), _embed_probe(reference, ref_runner, rows))
    threshold = THRESHOLDS[recipe.precision]
    passed = bool(cos >= threshold)
    store.record_check(entry, _check_key(recipe), SelfCheck(passed, cos, threshold, PROBE_IMAGES, time.time()))
    if passed:
        return recipe, runner
    warnings.warn(ClothprobeWarning(
        f"{recipe.label} embeddings disagree with float32 on this CPU (probe cosine min {cos:.4f} < {threshold}): "
        f"using float32 instead. Recorded in {entry.path}."), stacklevel=4)
    return reference, ref_runner
