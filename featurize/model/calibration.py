"""Which photos calibrate an int8 model: a seeded sample of the dataset's own training photos (or of a
folder the user names), identified by content so the digest in the recipe says exactly which were used."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe._util.files import file_sha256
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import is_ignored

DEFAULT_SIZE = 300  # NNCF's default subset size; enough for stable activation ranges


@dataclass(frozen=True)
class Calibration:
    files: tuple[Path, ...]
    digest: str  # goes into the recipe: another sample gives another int8 model
    hashes: tuple[str, ...]  # SHA-256 of each photo, in ``files`` order (sorted by content)


def calibration_sample(candidates: Sequence[tuple[Path, str]], size: int = DEFAULT_SIZE, seed: int = 0) -> Calibration:
    """``size`` photos drawn with ``seed`` from ``(path, content sha256)`` pairs; the same photos give the
    same sample whatever their names or order."""
    if size < 1:
        raise ClothprobeError(f"--calibration-size must be at least 1, got {size}.")
    by_hash = dict(sorted({sha: Path(p) for p, sha in candidates}.items()))
    if not by_hash:
        raise ClothprobeError("int8 needs calibration photos, and there are none: give --calibration DIR or "
                              "featurize a folder with a train split.")
    hashes = list(by_hash)
    picked = sorted(np.random.default_rng(seed).choice(len(hashes), size=min(size, len(hashes)), replace=False))
    chosen = [hashes[i] for i in picked]
    return Calibration(files=tuple(by_hash[h] for h in chosen), digest=calibration_digest(chosen),
                       hashes=tuple(chosen))


def calibration_digest(hashes: Sequence[str]) -> str:
    """The recipe's name for a calibration sample: a digest of its photos' content hashes, in order."""
    return hashlib.sha256(json.dumps(list(hashes)).encode()).hexdigest()[:16]


def calibration_from_folder(folder: str | Path, size: int = DEFAULT_SIZE, seed: int = 0) -> Calibration:
    """A sample of the images anywhere under ``folder`` (hidden files and non-regular files left out)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ClothprobeError(f"--calibration {folder}: not a folder of photos.")
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not is_ignored(name) and _regular(path):
                files.append(path)
    return calibration_sample([(p, file_sha256(p)) for p in files], size, seed)


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
