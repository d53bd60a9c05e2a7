"""Find the images of a dataset folder and their classes.

Two layouts: ``DIR/<split>/<class>/<image>`` (splits train, validation, test) and a single split
``DIR/<class>/<image>`` (read as ``train``, so ``fit`` cross-validates on it). Class names come from the
training split, sorted, so their order is stable across machines and runs.

Files the run must not use are listed in ``Dataset.stray`` with their reason in ``Dataset.stray_reasons``:
files outside a class folder, anything that is not a regular file after following symbolic links
(a FIFO, a device, a socket, a broken link, a link to a folder), files whose path is not valid UTF-8 (a
cache stores paths and class names as UTF-8; such a path is listed with its bytes escaped, ``\xff``, and a
class folder so named is not a class), and folders that cannot be listed. The scan never opens a file, and
walks folders of any depth.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe._util.names import shown, utf8
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import is_ignored, not_regular_reason

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
OUTSIDE_CLASS = "not inside a class folder"
NOT_UTF8 = "its name (or a folder's above it) is not valid UTF-8, which a cache cannot store; rename it (e.g. convmv -f latin1 -t utf8)"



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
    """Every visible regular file under a class folder (nested folders too, however deep: a folder's files,
    then each subfolder's, in sorted order); anything else (FIFO, device, socket, broken link, link to a
    folder, a folder that cannot be listed) goes to ``unusable`` with its reason."""
    out: list[Path] = []
    todo = [directory]
    while todo:
        folder = todo.pop()
        try:
            with os.scandir(folder) as it:
                entries = _visible(list(it))
        except OSError as err:  # a path too long to open, no permission
            unusable[folder] = f"a folder that cannot be listed ({err.strerror or err}); its files were not seen"
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                if entry.is_file():  # follows links; no stat for plain files
                    out.append(Path(entry.path))
                else:
                    unusable[Path(entry.path)] = not_regular_reason(entry.path) or "not a regular file"
        todo += reversed([Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)])
    return out


def _list_split(root: Path, split: str, splits: dict[str, Path], index: dict[str, int],
                stray: dict[str, tuple[str, str]]) -> list[ImageFile]:
    """The images of one split; the files it must not use go to ``stray`` as rel_path -> (split, why)."""
    with os.scandir(splits[split]) as it:
        entries = _visible(list(it))
    unknown = [e.name for e in entries if e.is_dir() and e.name not in index and utf8(e.name)]
    if unknown:
        raise ClothprobeError(
            f"Class folder(s) {', '.join(unknown)} in {splits[split]} are not in the training split "
            f"{splits['train']} (classes: {', '.join(index)}). Rename or remove them, or add them to train."
        )

    def rel(path: str | Path) -> str:
        return Path(path).relative_to(root).as_posix()

    stray.update((shown(rel(e.path)), (split, OUTSIDE_CLASS)) for e in entries if not e.is_dir())
    images: list[ImageFile] = []
    for entry in (e for e in entries if e.is_dir()):
        unusable: dict[Path, str] = {}
        found = _walk_class(Path(entry.path), unusable)
        if entry.name not in index:  # a class folder whose name is not UTF-8: not a class
            unusable.update((p, NOT_UTF8) for p in found)
            found = []
        unusable.update((p, NOT_UTF8) for p in found if not utf8(rel(p)))
        images += [ImageFile(split, rel(p), index[entry.name], p) for p in found if utf8(rel(p))]
        stray.update((shown(rel(p)), (split, shown(why))) for p, why in unusable.items())
    return images


def scan(root: str | Path) -> Dataset:
    """List the images under ``root`` with their split and class, or say what is wrong with the layout."""
    root = Path(root).expanduser()
    if not utf8(str(root.resolve())):
        raise ClothprobeError(f"The path of data folder {shown(str(root.resolve()))} is not valid UTF-8, which a cache "
                              f"cannot record; rename the folder (or one above it) to a UTF-8 name.")
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
    class_names = [e.name for e in _subdirs(splits["train"]) if utf8(e.name)]  # the others: NOT_UTF8
    if not class_names:
        raise ClothprobeError(f"{splits['train']} has no class folders; expected {splits['train']}/<class>/<image>.")
    index = {name: i for i, name in enumerate(class_names)}
    stray: dict[str, tuple[str, str]] = {}
    files = {split: _list_split(root, split, splits, index, stray) for split in SPLITS if split in splits}
    return Dataset(root=root, class_names=class_names, files=files, stray={p: s for p, (s, _) in stray.items()},
                   stray_reasons={p: why for p, (_, why) in stray.items()})


def _holds_images(folder: Path, look: int = 64) -> bool:
    """Whether one of the first ``look`` visible entries of ``folder`` is a file named as an image."""
    from PIL import Image

    suffixes = Image.registered_extensions()
    try:
        with os.scandir(folder) as it:
            entries = [e for _, e in zip(range(look), it) if not is_ignored(e.name)]
        return any(Path(e.name).suffix.lower() in suffixes and e.is_file() for e in entries)
    except OSError:
        return False


def _looks_like_classes(folder: Path) -> bool:
    """Two or more visible folders, each holding images: the class folders of a split (or of a one-split
    dataset)."""
    try:
        classes = _subdirs(folder)
    except OSError:
        return False
    return len(classes) >= 2 and all(_holds_images(Path(c.path)) for c in classes)


def looks_like_dataset(folder: str | Path) -> bool:
    """Whether ``folder`` has a dataset's layout (``scan``'s two): split folders holding class folders of
    images, or class folders of images. A guess by names, for refusing to write into a dataset that no
    catalog knows: reads folder listings, never a file."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    try:
        splits = _split_dirs(folder)
    except (OSError, ClothprobeError):
        return True  # two folders claim one split: a dataset's layout (a damaged one)
    return any(_looks_like_classes(p) for p in splits.values()) or _looks_like_classes(folder)


def dataset_holding(path: str | Path, known: Iterable[str | Path] = (), depth: int = 2) -> Path | None:
    """The dataset folder ``path`` is or lies in, if any: a ``known`` dataset root (a catalog's, a run's), or
    ``path`` or one of its ``depth`` nearest existing ancestors when it looks like one (a split folder, a class
    folder: writing there would add a class or a stray file)."""
    target = Path(path).expanduser().resolve()
    for root in known:
        root = Path(root).expanduser().resolve()
        if target == root or root in target.parents:
            return root
    existing = [p for p in (target, *target.parents) if p.is_dir()][: depth + 1]
    return next((p for p in existing if p.parent != p and looks_like_dataset(p)), None)
