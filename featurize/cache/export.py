"""A cache as an Arrow table, a pandas DataFrame or a Parquet file (the ``export`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothprobe._util.extras import require
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.schema import canonical_json
from clothprobe.featurize.embed import FLIPPED

if TYPE_CHECKING:
    from clothprobe.featurize.cache.read import FeatureCache, SplitFeatures


def to_arrow(cache: FeatureCache) -> Any:
    """A ``pyarrow.Table``, one row per image: split, path, label, class, sha256 (and group, for a labels table
    with a group column) and one fixed-size list<float32> column per view (``embedding``, and ``flip`` with
    --tta flip: the taps read, side by side); the recipe, class names and taps (``[[name, columns], ...]`` in
    column order) are in the schema metadata."""
    pa = require("pyarrow", "export", f"Exporting {cache.path}")
    parts = [_arrow_split(cache, name, s) for name, s in cache.splits.items()]
    meta = {"clothprobe.recipe": canonical_json(cache.recipe.to_dict()),
            "clothprobe.class_names": canonical_json(cache.class_names),
            "clothprobe.taps": canonical_json([list(t) for t in cache.taps])}
    if not parts:
        raise ClothprobeError(f"Cache {cache.path} holds no split to export.")
    return pa.concat_tables(parts).replace_schema_metadata(meta)


def _arrow_split(cache: FeatureCache, name: str, s: SplitFeatures) -> Any:
    import pyarrow as pa

    def vectors(x: np.ndarray) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).ravel()), x.shape[1])

    columns = {"split": pa.array([name] * len(s), pa.string()), "path": pa.array(list(s.paths), pa.string()),
               "label": pa.array(s.labels, pa.int32()),
               "class": pa.array([cache.class_names[i] for i in s.labels], pa.string()),
               "sha256": pa.array(list(s.sha256), pa.string())}
    if s.groups is not None:
        columns["group"] = pa.array(list(s.groups), pa.string())
    columns["embedding"] = vectors(s.embeddings)
    if s.flip is not None:
        columns[FLIPPED] = vectors(s.flip)
    return pa.table(columns)


def to_dataframe(cache: FeatureCache) -> Any:
    require("pandas", "export", f"Exporting {cache.path} to pandas")
    return to_arrow(cache).to_pandas()


def to_parquet(cache: FeatureCache, path: str | Path) -> Path:
    """``cache`` as a Parquet file at ``path``: checked first (``check_output``: never the cache itself, a run's
    or the store's file, nor an existing file other than an export), written atomically, or as a stream to a
    pipe (``>(...)``, ``/dev/stdout``)."""
    from clothprobe._util.files import atomic_write
    from clothprobe._util.outputs import check_output

    pq = require("pyarrow.parquet", "export", f"Exporting {cache.path}")
    path = check_output(path, option="--out", inputs=[cache.path], ours=_is_export, stream=True)
    table = to_arrow(cache)
    with atomic_write(path, "wb", stream=True) as fh:
        pq.write_table(table, fh)
    return path


def _is_export(path: Path) -> bool:
    """A regular Parquet file this export wrote (its schema metadata holds the recipe)."""
    from clothprobe._util.files import open_regular

    try:
        with open_regular(path) as fh:
            if fh.read(4) != b"PAR1":
                return False
            import pyarrow.parquet as pq

            return b"clothprobe.recipe" in (pq.read_schema(fh).metadata or {})
    except (OSError, ValueError):
        return False
