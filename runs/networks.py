"""A run's networks on a machine whose model store lacks them (a new machine, a container, after a prune).

A float network is made again from its weights by the store itself. An int8 network was quantized on
calibration photos; its cache recorded which (path and content hash, ``CacheHeader.calibration_photos``) and
the run keeps that record, so where those photos still are, the network is made again from them, the same
network bit for bit in its recipe (the digest of the photos' content is part of the recipe and is checked).
Where they are not, one line names both ways out: copy the store entry from the machine that made it, or use
the run's portable export (``cli export RUN --out FILE.onnx``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize.model.recipe import Recipe

if TYPE_CHECKING:
    from clothprobe.featurize.model.store import ModelStore


def ensure_networks(run_dir: Path, needs: Sequence[tuple[Recipe, tuple[tuple[str, str], ...]]],
                    weights: object = None) -> None:
    """For each ``(recipe, calibration photos)`` a run embeds with: when it is int8 (and has not fallen back to
    another precision on this machine) and the store lacks its network, make it again from the photos, with
    one ``ClothprobeWarning`` saying so and how long it took; an error naming both ways out when it cannot."""
    from clothprobe.featurize.model.selfcheck import CalibrationMismatch, effective_recipe, ensure_entry
    from clothprobe.featurize.model.store import ModelStore

    store = ModelStore()
    for recipe, photos in needs:
        recipe = effective_recipe(recipe, store)
        if recipe.precision != "int8" or store.read_for(recipe) is not None:
            continue
        missing = next((p for p, _ in photos if not Path(p).is_file()), None)
        if not photos or missing is not None:
            why = (f"its calibration photo {missing} is not there" if missing else
                   "its cache recorded no calibration photos (made before clothprobe recorded them)")
            raise ClothprobeError(_no_way(run_dir, recipe, store, why))
        started = time.perf_counter()
        try:
            ensure_entry(recipe, calibration_files=[Path(p) for p, _ in photos], weights=weights, store=store)
        except CalibrationMismatch:
            raise ClothprobeError(_no_way(run_dir, recipe, store, "its calibration photos have changed since "
                                                                  "(their content differs)")) from None
        warnings.warn(ClothprobeWarning(
            f"the int8 {recipe.backbone} network of {run_dir} was not in the model store {store.root}: made it again "
            f"from its {len(photos)} calibration photos in {time.perf_counter() - started:.0f} s (once per store)"),
            stacklevel=2)


def _no_way(run_dir: Path, recipe: Recipe, store: ModelStore, why: str) -> str:
    from clothprobe.featurize.model.store import artifact_recipe

    return (f"{run_dir} runs on the int8 {recipe.backbone} network {artifact_recipe(recipe).fingerprint}, which is not "
            f"in the model store {store.root}, and {why}. Either copy that entry (the folder "
            f"{artifact_recipe(recipe).fingerprint} under models/ of the store of the machine that made the run; "
            f"`cli cache list` there) into {store.root}, or export the run there with `cli export {run_dir} --out "
            f"model.onnx` and use that file (`cli serve model.onnx`, or onnxruntime).")
