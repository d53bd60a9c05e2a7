"""Which data a cache is of: the one place that says whether a cache holds a given dataset folder's photos.

A cache's identity is its dataset folder (``data_root``, an absolute path) and the fingerprint of the photos
that folder held when the cache was written (``data_fingerprint``: SHA-256 of the sorted content SHA-256 of
every photo file of the dataset, those that did not decode included; files outside class folders and special
files are not part of it). Both are in the cache's header. The fingerprint is of the photos' content alone, not
of their names, folders or splits: the same photos reorganised (into subfolders, another table, other splits)
are the same data, whose labels and splits featurize brings up to date.

A folder ``DIR`` is the cache's data when ``DIR`` is its ``data_root``, or when ``DIR``'s photos have its
fingerprint: the same photos moved, copied or reorganised elsewhere. Anything else is another dataset, even with the same
folder name: ``featurize`` does not write over that cache without ``--rebuild``, and ``fit``, ``audit`` and
``fit --unknown`` do not read it for ``DIR`` (one line naming both). A dataset whose photos changed in place
(same folder) is the same dataset: ``featurize`` brings its cache up to date.

A cache written before the fingerprint was recorded has only its folder: a folder elsewhere is another
dataset for it (``featurize --rebuild`` records the fingerprint; no embedding is recomputed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.schema import CacheHeader, canonical_json, read_header

if TYPE_CHECKING:
    from clothprobe.featurize.engines.plan import FileIndex


def fingerprint(hashes: Iterable[str]) -> str:
    """``hashes``: the content SHA-256 of each photo file of the dataset, in any order."""
    return "sha256:" + hashlib.sha256(canonical_json(sorted(hashes)).encode()).hexdigest()


def index_fingerprint(index: FileIndex) -> str:
    """The fingerprint of a ``FileIndex`` (``featurize/engines/plan.py``): every file it could hash."""
    return fingerprint(index.hashes.values())


def folder_fingerprint(folder: Path) -> str:
    """The fingerprint of the photos under ``folder`` now (each file hashed, nothing decoded)."""
    from clothprobe.featurize.dataset import scan
    from clothprobe.featurize.engines.local import LocalEngine
    from clothprobe.featurize.engines.plan import index_files

    return index_fingerprint(index_files(scan(folder), LocalEngine().hash_files))


def _resolved(folder: str | Path) -> Path:
    return Path(folder).expanduser().resolve()


def holds(header: CacheHeader, folder: str | Path, folder_print: Callable[[], str]) -> bool:
    """Whether a cache with ``header`` holds ``folder``'s photos: its own folder, or the same photos elsewhere
    (``folder_print`` gives ``folder``'s fingerprint; called only when the folders differ). A cache that records
    no folder (written by ``write_arrays``) is taken at its word."""
    if not header.data_root or _resolved(header.data_root) == _resolved(folder):
        return True
    return bool(header.data_fingerprint) and header.data_fingerprint == folder_print()


def describe(header: CacheHeader) -> str:
    return f"dataset {header.dataset!r} ({header.data_root or 'folder not recorded'})"


def check_writable(path: Path, old: CacheHeader | None, root: Path, folder_print: Callable[[], str],
                   rebuild: bool) -> None:
    """Refuse to write ``root``'s cache over ``path`` when it holds another dataset (unless ``rebuild``)."""
    if old is None or rebuild or holds(old, root, folder_print):
        return
    root = _resolved(root)
    raise ClothprobeError(f"{path} holds the cache of {describe(old)}, not of {root}; featurizing {root} into it "
                          f"would replace that dataset's cache. Give another --out, or --rebuild to replace it.")


def check_readable(path: Path, dataset: str, folder: str | Path | None) -> None:
    """Refuse a cache that is not of ``dataset`` (a name), or, given the dataset's ``folder``, not of that
    folder's photos. An unreadable header is left to the reader, which reports the damage."""
    header = read_header(path)
    if header is None:
        return
    if header.dataset != dataset:
        raise ClothprobeError(f"{path} holds the cache of {describe(header)}, not of dataset {dataset!r}; "
                              f"featurize {dataset} again (cli featurize --data DIR/{dataset}).")
    if folder is not None and not holds(header, folder, lambda: folder_fingerprint(_resolved(folder))):
        raise ClothprobeError(f"{path} holds the cache of {describe(header)}, whose photos are not those of "
                              f"{_resolved(folder)}; featurize that folder (cli featurize --data {folder}).")
