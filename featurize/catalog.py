"""What has been featurized: a small JSON catalog in the features folder, so later commands need no flags.

``<features_dir>/catalog.json`` records, for each dataset, the image folder it was made from and the
cache file of each backbone (also caches written elsewhere with ``featurize --out``), and which dataset
was featurized last. It is rewritten atomically under a lock. Caches at the default location
(``<features_dir>/<dataset>/<backbone>.h5``) are found without it.
"""

from __future__ import annotations

import json
from pathlib import Path

from clothprobe._util.files import read_json, write_text_atomic
from clothprobe.errors import ClothprobeError

CATALOG = "catalog.json"
VERSION = 1


def _path(features_dir: str | Path) -> Path:
    return Path(features_dir) / CATALOG


def _read(features_dir: str | Path) -> dict:
    """The catalog, or an empty one; a damaged catalog is ignored (it only saves typing)."""
    try:
        doc = read_json(_path(features_dir))
    except (OSError, ValueError):
        return {"version": VERSION, "datasets": {}, "last": None}
    ok = isinstance(doc, dict) and doc.get("version") == VERSION and isinstance(doc.get("datasets"), dict)
    return doc if ok else {"version": VERSION, "datasets": {}, "last": None}


def record(features_dir: str | Path, *, dataset: str, backbone: str, cache_path: str | Path,
           data_root: str | Path) -> None:
    """Note that ``cache_path`` holds ``backbone``'s embeddings of ``dataset`` (images under ``data_root``)."""
    from filelock import FileLock

    path = _path(features_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(CATALOG + ".lock")):
        doc = _read(features_dir)
        entry = doc["datasets"].setdefault(dataset, {})
        entry["data_root"] = str(Path(data_root).expanduser().resolve())
        entry.setdefault("caches", {})[backbone] = str(Path(cache_path).expanduser().resolve())
        doc["last"] = dataset
        write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def last_data(features_dir: str | Path) -> Path | None:
    """The image folder of the dataset featurized last, if it still exists."""
    doc = _read(features_dir)
    entry = doc["datasets"].get(doc.get("last"), {})
    root = entry.get("data_root") if isinstance(entry, dict) else None
    return Path(root) if isinstance(root, str) and Path(root).is_dir() else None


def _recorded(features_dir: str | Path) -> dict[str, dict[str, Path]]:
    """dataset -> backbone -> cache path, for recorded caches that still exist."""
    out: dict[str, dict[str, Path]] = {}
    for name, entry in _read(features_dir)["datasets"].items():
        caches = entry.get("caches", {}) if isinstance(entry, dict) else {}
        found = {b: Path(p) for b, p in caches.items() if isinstance(p, str) and Path(p).is_file()}
        if found:
            out[name] = found
    return out


def datasets(features_dir: str | Path) -> list[str]:
    """Every dataset with at least one cache: recorded in the catalog or at the default location."""
    root = Path(features_dir)
    default = {p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.h5"))} if root.is_dir() else set()
    return sorted(default | set(_recorded(features_dir)))


def resolve_dataset(features_dir: str | Path, dataset: str | None) -> str:
    """``dataset`` itself, or the only dataset featurized; several or none is an error that lists them."""
    if dataset:
        return dataset
    known = datasets(features_dir)
    if len(known) == 1:
        return known[0]
    if not known:
        raise ClothprobeError(f"No feature caches under {features_dir}. Make one with: "
                              f"cli featurize --data DIR --backbone xception")
    raise ClothprobeError(f"Several datasets are featurized under {features_dir}: {', '.join(known)}. "
                          f"Say which with --dataset NAME (or --data DIR).")


def find_cache(features_dir: str | Path, dataset: str | None, backbone: str) -> Path:
    """The cache of ``backbone`` for ``dataset`` (the only dataset when None): recorded, or at the default
    location; an error saying how to make it or point at it otherwise."""
    dataset = resolve_dataset(features_dir, dataset)
    recorded = _recorded(features_dir).get(dataset, {}).get(backbone)
    if recorded is not None:
        return recorded
    from clothprobe.featurize.cache.schema import default_path

    default = default_path(features_dir, dataset, backbone)
    if default.is_file():
        return default
    raise ClothprobeError(
        f"No {backbone} cache for dataset {dataset!r}: not at {default} nor recorded in {_path(features_dir)}. "
        f"Make it with: cli featurize --backbone {backbone} --data DIR/{dataset} --tta flip "
        f"(a cache written with --out is found when featurize and fit get the same --features-dir)."
    )
