"""Find the images of a dataset folder and their classes.

Two layouts: ``DIR/<split>/<class>/<image>`` (splits train, validation, test) and a single split
``DIR/<class>/<image>`` (read as ``train``, so ``fit`` cross-validates on it). Class names come from the
training split, sorted, so their order is stable across machines and runs.

Files the run must not use are listed in ``Dataset.stray`` with their reason in ``Dataset.stray_reasons``:
files outside a class folder, and anything that is not a regular file after following symbolic links
(a FIFO, a device, a socket, a broken link, a link to a folder). The scan never opens a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import is_ignored, not_regular_reason

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
OUTSIDE_CLASS = "not inside a class folder"


@dataclass(frozen=True)
class ImageFile:
    """One image: ``rel_path`` (posix, relative to the dataset root) identifies it in the cache."""

    split: str
    rel_path: str
    label: int
    path: Path
    group: str = ""  # a table dataset's group column ("" for none)


def check_every_class_trains(class_names: list[str], train_labels: np.ndarray, where: object) -> None:
    """Refuse to train when a class has no usable training photo (all of them undecodable, say): it would be
    fitted without a word and never predicted. ``where``: the cache or folder named in the message."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(class_names))
    empty = [c for c, n in zip(class_names, counts) if n == 0]
    if empty:
        which = f"class {empty[0]!r} has" if len(empty) == 1 else f"classes {', '.join(map(repr, empty))} have"
        raise ClothprobeError(f"{where}: {which} no usable training photo (each "
                              f"was skipped, e.g. undecodable); add photos that open, or remove the class folder, "
                              f"then run again.")


@dataclass
class Dataset:
    root: Path
    class_names: list[str]
    files: dict[str, list[ImageFile]]
    # rel_path -> split, for every file the run must not use (outside class folders, not regular files) ...
    stray: dict[str, str] = field(default_factory=dict)
    # ... and rel_path -> why, for the same paths
    stray_reasons: dict[str, str] = field(default_factory=dict)
    # a dataset read from a labels table: how (featurize/table.py's TableRecord); None for folders
    table: Any = None

    @property
    def grouped(self) -> bool:
        """Whether each photo has a group (a table dataset with a group column)."""
        return bool(self.table is not None and self.table.group_column)

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


def _walk_class(directory: Path, unusable: dict[Path, str]) -> list[Path]:
    """Every visible regular file under a class folder (nested folders too), in sorted order; anything
    else (FIFO, device, socket, broken link, link to a folder) goes to ``unusable`` with its reason."""
    with os.scandir(directory) as it:
        entries = _visible(list(it))
    out: list[Path] = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            if entry.is_file():  # follows links; no stat for plain files
                out.append(Path(entry.path))
            else:
                unusable[Path(entry.path)] = not_regular_reason(entry.path) or "not a regular file"
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            out.extend(_walk_class(Path(entry.path), unusable))
    return out


def _list_split(root: Path, split: str, splits: dict[str, Path], index: dict[str, int],
                stray: dict[str, tuple[str, str]]) -> list[ImageFile]:
    """The images of one split; the files it must not use go to ``stray`` as rel_path -> (split, why)."""
    with os.scandir(splits[split]) as it:
        entries = _visible(list(it))
    unknown = [e.name for e in entries if e.is_dir() and e.name not in index]
    if unknown:
        raise ClothprobeError(
            f"Class folder(s) {', '.join(unknown)} in {splits[split]} are not in the training split "
            f"{splits['train']} (classes: {', '.join(index)}). Rename or remove them, or add them to train."
        )

    def rel(path: str | Path) -> str:
        return Path(path).relative_to(root).as_posix()

    stray.update((rel(e.path), (split, OUTSIDE_CLASS)) for e in entries if not e.is_dir())
    images: list[ImageFile] = []
    for entry in (e for e in entries if e.is_dir()):
        unusable: dict[Path, str] = {}
        images += [ImageFile(split, rel(p), index[entry.name], p) for p in _walk_class(Path(entry.path), unusable)]
        stray.update((rel(p), (split, why)) for p, why in unusable.items())
    return images


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
    stray: dict[str, tuple[str, str]] = {}
    files = {split: _list_split(root, split, splits, index, stray) for split in SPLITS if split in splits}
    return Dataset(root=root, class_names=class_names, files=files, stray={p: s for p, (s, _) in stray.items()},
                   stray_reasons={p: why for p, (_, why) in stray.items()})
