"""Optional dependencies: imported where a feature needs them, with one clear line when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from clothprobe.errors import ClothprobeError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``module`` imported, or an error saying which extra to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ClothprobeError(f'{purpose} needs {module.split(".")[0]}: pip install "clothprobe[{extra}]"') from None
