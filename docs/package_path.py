"""mkdocs hook (mkdocs.yml ``hooks``): lets mkdocstrings find the ``clothprobe`` package from any install.

mkdocstrings reads the package's source with griffe, which finds a package as a folder of that name. The
repository root is the package (``package-dir = {"clothprobe" = "."}``), so an editable install
(``pip install -e ".[docs]"``) of a checkout whose folder is not named ``clothprobe`` (a worktree, a copy, a
fork) is invisible to it: setuptools maps the name through an import hook, which griffe cannot see. This hook
asks Python where ``clothprobe`` is; when that folder has another name, it gives griffe a temporary folder
holding a ``clothprobe`` link to it. An installed wheel, or a checkout named ``clothprobe``, is left as griffe
finds it."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

_made: list[Path] = []


def package_folder() -> Path | None:
    """The folder Python imports ``clothprobe`` from (an editable install's checkout too), or None."""
    spec = importlib.util.find_spec("clothprobe")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


@event_priority(100)  # before mkdocstrings' own on_config, which makes its Python handler with these paths
def on_config(config: Any) -> Any:
    folder = package_folder()
    if folder is None or folder.name == "clothprobe":
        return config
    if not _made:
        _made.append(Path(tempfile.mkdtemp(prefix="clothprobe-docs-")))
        (_made[0] / "clothprobe").symlink_to(folder, target_is_directory=True)
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    paths = python.setdefault("paths", [])
    if str(_made[0]) not in paths:
        paths.insert(0, str(_made[0]))
    return config


def on_shutdown() -> None:
    for made in _made:
        shutil.rmtree(made, ignore_errors=True)
    _made.clear()
