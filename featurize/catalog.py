"""What has been featurized: a small JSON catalog in the features folder, so later commands need no flags.

``<features_dir>/catalog.json`` records, for each dataset, the image folder it was made from and the
cache file of each backbone (also caches written elsewhere with ``featurize --out``), and which dataset
was featurized last. It is rewritten atomically under a lock. Caches at the default location
(``<features_dir>/<dataset>/<backbone>.h5``) are found without it. A cache inside the features folder is
recorded relative to it, so a copied project reads its own caches, never the original's; every cache found
is checked to be of the dataset asked for (``cache/identity.py``) before it is used.
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
        recorded = _relative(Path(cache_path).expanduser().resolve(), Path(features_dir).expanduser().resolve())
        for other in doc["datasets"].values():  # the file now holds this dataset only
            caches = other.get("caches") if isinstance(other, dict) else None
            for key in [b for b, p in caches.items() if p == recorded] if isinstance(caches, dict) else []:
                del caches[key]
        entry = doc["datasets"].setdefault(dataset, {})
        entry["data_root"] = str(Path(data_root).expanduser().resolve())
        entry.setdefault("caches", {})[backbone] = recorded
        doc["last"] = dataset
        write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _relative(path: Path, features_dir: Path) -> str:
    """``path`` relative to ``features_dir`` when inside it (posix separators), else absolute."""
    return path.relative_to(features_dir).as_posix() if path.is_relative_to(features_dir) else str(path)


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
        paths = {b: Path(features_dir) / p for b, p in caches.items() if isinstance(p, str) and p}  # absolute stays
        found = {b: p for b, p in paths.items() if p.is_file()}
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


def backbones(features_dir: str | Path, dataset: str) -> list[str]:
    """The backbones ``dataset`` has a cache of: recorded, or at the default location (named in its header)."""
    from clothprobe.featurize.cache.schema import read_header

    folder = Path(features_dir) / dataset
    found = [h.recipe.backbone for p in sorted(folder.glob("*.h5")) if (h := read_header(p)) is not None] \
        if folder.is_dir() else []
    return sorted({*found, *_recorded(features_dir).get(dataset, {})})


def default_backbone(features_dir: str | Path, dataset: str) -> str:
    """The backbone ``fit`` uses when told none: the default one where ``dataset`` has its cache (or none at all),
    else the only one it has; several others are an error that lists them."""
    from clothprobe.featurize.model.backbones import DEFAULT_BACKBONE

    have = backbones(features_dir, dataset)
    if DEFAULT_BACKBONE in have or not have:
        return DEFAULT_BACKBONE
    if len(have) == 1:
        return have[0]
    raise ClothprobeError(f"Dataset {dataset!r} has caches of {', '.join(have)} (none of {DEFAULT_BACKBONE}); say "
                          f"which with --backbone (several joined: {'+'.join(have[:2])}).")


def find_cache(features_dir: str | Path, dataset: str | None, backbone: str, data: str | Path | None = None) -> Path:
    """The cache of ``backbone`` for ``dataset`` (the only dataset when None): recorded, or at the default
    location, and checked to be of that dataset (of the photos of its folder ``data``, when given); an error
    saying how to make it or point at it otherwise."""
    from clothprobe.featurize.cache.identity import check_readable
    from clothprobe.featurize.cache.schema import default_path

    dataset = resolve_dataset(features_dir, dataset)
    default = default_path(features_dir, dataset, backbone)
    recorded = _recorded(features_dir).get(dataset, {}).get(backbone)
    candidates = dict.fromkeys(p for p in (recorded, default if default.is_file() else None) if p is not None)
    refusal = None
    for found in candidates:  # the recorded cache, else the default one: the first of this dataset's photos
        try:
            check_readable(found, dataset, data)
            return found
        except ClothprobeError as err:
            refusal = refusal or err
    if refusal is not None:
        raise refusal
    raise ClothprobeError(
        f"No {backbone} cache for dataset {dataset!r}: not at {default} nor recorded in {_path(features_dir)}. "
        f"Make it with: cli featurize --backbone {backbone} --data DIR/{dataset} --tta flip "
        f"(a cache written with --out is found when featurize and fit get the same --features-dir)."
    )
