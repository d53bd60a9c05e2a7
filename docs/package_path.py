"""mkdocs hook (mkdocs.yml ``hooks``): lets mkdocstrings find the ``clothprobe`` package Python imports.

mkdocstrings reads the package's source with griffe, which looks for a file or folder named ``clothprobe``
along its search path, starting with the folder of the running script. Run as the ``mkdocs`` console script
(``pip install -e ".[docs]" && mkdocs serve``), that folder is the venv's ``bin/``, which holds the
``clothprobe`` console script: griffe took that script for the package and found no ``runs.estimator`` in
it. And the repository root is the package (``package-dir = {"clothprobe" = "."}``), so an editable install
of a checkout whose folder has another name (a worktree, a fork) maps the name through an import hook griffe
cannot see. This hook asks Python where ``clothprobe`` is and puts first on griffe's path the folder holding
it (site-packages for a wheel, the checkout's parent), or, when the package folder has another name, a
temporary folder holding a ``clothprobe`` link to it."""

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


def holding_folder(package: Path) -> Path:
    """A folder in which ``clothprobe`` is ``package``: its parent, or a temporary folder with a link."""
    if package.name == "clothprobe":
        return package.parent
    if not _made:
        _made.append(Path(tempfile.mkdtemp(prefix="clothprobe-docs-")))
        (_made[0] / "clothprobe").symlink_to(package, target_is_directory=True)
    return _made[0]


@event_priority(100)  # before mkdocstrings' own on_config, which makes its Python handler with these paths
def on_config(config: Any) -> Any:
    package = package_folder()
    if package is None:
        return config
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    paths = python.setdefault("paths", [])
    first = str(holding_folder(package))
    if first not in paths:
        paths.insert(0, first)
    return config


def on_shutdown() -> None:
    for made in _made:
        shutil.rmtree(made, ignore_errors=True)
    _made.clear()
