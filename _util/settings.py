"""Folders named by a user's settings (environment variables, config.toml): checked where they are read."""

from __future__ import annotations

from pathlib import Path

from clothprobe.errors import ClothprobeError


def folder_setting(value: object, origin: str) -> Path:
    """The folder path a setting holds (``~`` expanded): a non-empty string, or an error naming ``origin`` (the
    variable or file, and the key) and what was given."""
    if not isinstance(value, str) or not value.strip():
        raise ClothprobeError(f"{origin} must be a folder path (a non-empty string), got {value!r}.")
    try:
        return Path(value).expanduser()
    except RuntimeError as err:  # ~name of no user on this machine
        raise ClothprobeError(f"{origin} is {value!r}, whose ~ cannot be expanded ({err}); give the full path.") from None


def usable_folder(path: Path, origin: str) -> Path:
    """``path`` when it is a folder or can be made one: refused when it, or the nearest of its parents that
    exists, is something else (a file, ``/dev/null``)."""
    existing = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        what = "a file" if existing.is_file() else "not a folder (a device, a FIFO or a broken link)"
        where = "" if existing == path else f" (inside {existing}, which is {what})"
        raise ClothprobeError(f"{origin} is {path}{where or ', ' + what}; point it at a folder.")
    return path
