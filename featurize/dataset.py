"""Find the images of a dataset folder and their classes.

Two layouts: ``DIR/<split>/<class>/<image>`` (splits train, validation, test) and a single split
``DIR/<class>/<image>`` (read as ``train``, so ``fit`` cross-validates on it). Class names come from the
training split, sorted, so their order is stable across machines and runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import is_ignored

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}


@dataclass(frozen=True)
class ImageFile:
    """One image: ``rel_path`` (posix, relative to the dataset root) identifies it in the cache."""

    split: str
    rel_path: str
    label: int
    path: Path


@dataclass
class Dataset:
    root: Path
    class_names: list[str]
    files: dict[str, list[ImageFile]]
    stray: dict[str, str] = field(default_factory=dict)  # rel_path -> split, for files outside class folders

    @property
    def name(self) -> str:
        return self.root.name

    def __len__(self) -> int:
        return sum(len(f) for f in self.files.values())


def _visible(entries: list[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not is_ignored(e.name)), key=lambda e: e.name)


def _subdirs(directory: Path) -> list[os.DirEntry]:
    with os.scandir(directory) as it:
        return [e for e in _visible(list(it)) if e.is_dir()]


def _split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in _subdirs(root):
        split = SPLIT_ALIASES.get(entry.name.lower(), entry.name.lower())
        if split in SPLITS:
            if split in found:
                raise ClothprobeError(
                    f"Both {found[split]} and {entry.path} look like the {split} split; keep one."
                )
            found[split] = Path(entry.path)
    return found


def _walk_class(directory: Path) -> list[Path]:
    """Every visible file under a class folder (nested folders too), in sorted order."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not is_ignored(f))
    return out


def scan(root: str | Path) -> Dataset:
    """List the images under ``root`` with their split and class, or say what is wrong with the layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ClothprobeError(
            f"Data folder {root} does not exist. Point --data at DIR/<split>/<class>/<image> "
            f"(splits: {', '.join(SPLITS)}) or DIR/<class>/<image>."
        )
    splits = _split_dirs(root) or {"train": root}
    if "train" not in splits:
        raise ClothprobeError(
            f"{root} has {', '.join(splits)} but no train/ folder; class names come from the training "
            f"split, so add DIR/train/<class>/ (or use DIR/<class>/<image> for a single split)."
        )
    class_names = [e.name for e in _subdirs(splits["train"])]
    if not class_names:
        raise ClothprobeError(f"{splits['train']} has no class folders; expected {splits['train']}/<class>/<image>.")
    index = {name: i for i, name in enumerate(class_names)}
    files: dict[str, list[ImageFile]] = {}
    stray: dict[str, str] = {}
    for split in SPLITS:
        if split not in splits:
            continue
        split_dir = splits[split]
        with os.scandir(split_dir) as it:
            entries = _visible(list(it))
        stray.update((Path(e.path).relative_to(root).as_posix(), split) for e in entries if not e.is_dir())
        unknown = [e.name for e in entries if e.is_dir() and e.name not in index]
        if unknown:
            raise ClothprobeError(
                f"Class folder(s) {', '.join(unknown)} in {split_dir} are not in the training split "
                f"{splits['train']} (classes: {', '.join(class_names)}). Rename or remove them, or add "
                f"them to train."
            )
        files[split] = [
            ImageFile(split, p.relative_to(root).as_posix(), index[e.name], p)
            for e in entries
            if e.is_dir()
            for p in _walk_class(Path(e.path))
        ]
    return Dataset(root=root, class_names=class_names, files=files, stray=stray)
