"""Lazy package attributes (PEP 562), so ``import clothprobe.<package>`` costs nothing until a name is used:
``cli predict`` must not pay for importing what ``cli fit`` needs (imbalanced-learn, LightGBM, scipy.stats)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<where[name]>`` on first use of ``name``."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__
