"""The bounds of every numeric setting, declared once: command-line options (each command's values are
checked against this table before any work, by ``bounded``) and the same quantities read from files (a
sidecar's ``input_size`` is an image size). Adding an option with bounds = one entry here."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from clothprobe.errors import ClothprobeError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Bound:
    """``low <= value <= high`` (``low < value`` when ``low_open``), a whole number when ``whole``, and
    always finite."""

    low: float
    high: float
    whole: bool = True
    low_open: bool = False

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a finite number"
        return f"{kind} {'>' if self.low_open else '>='} {self.low:g} and <= {self.high:g}"

    def check(self, name: str, value: object) -> Any:
        """``value`` if it is within bounds, else a ClothprobeError naming ``name``, the bounds and the value."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = (number and math.isfinite(value) and (not self.whole or float(value).is_integer())
              and (value > self.low if self.low_open else value >= self.low) and value <= self.high)
        if not ok:
            raise ClothprobeError(f"{name} must be {self.describe()}, got {value!r}.")
        return value


BOUNDS: dict[str, Bound] = {
    "batch_size": Bound(1, 4096),
    "image_size": Bound(8, 2048),  # pixels a side; a sidecar's input_size too
    "seed": Bound(0, 2**32 - 1),  # numpy's seed range
    "learning_rate": Bound(0, 10, whole=False, low_open=True),
    "fine_tune_learning_rate": Bound(0, 10, whole=False, low_open=True),
    "epochs": Bound(1, 10_000),
    "fine_tune": Bound(0, 10_000),  # layers
    "fine_tune_epochs": Bound(0, 10_000),
    "top": Bound(1, 1_000_000),
    "top_k": Bound(1, 1_000_000),
    "workers": Bound(1, 4096),
    "calibration_size": Bound(1, 1_000_000),
    "max_pixels": Bound(1, 1 << 32),
    "unused_days": Bound(0, 1_000_000, whole=False),
    "unknown_cost": Bound(0, 100, whole=False),  # percentage points of validation accuracy
    # cli serve
    "port": Bound(0, 65535),  # 0: any free port (the address printed says which)
    "max_upload_mb": Bound(1, 4096),
    "max_batch": Bound(1, 1024),
    "batch_window_ms": Bound(0, 1000, whole=False),
    "max_queue": Bound(1, 1_000_000),  # images waiting for the model
    "max_requests": Bound(1, 100_000),
    "max_files": Bound(1, 10_000),
    "threads": Bound(1, 1024),
    "proportion": Bound(0, 100, whole=False),  # each part of featurize --proportions, a percentage
    "few": Bound(1, 1_000_000),  # audit: photos of a class in a split below which it is listed
    "near_threshold": Bound(0, 1, whole=False, low_open=True),  # a cosine similarity
    "limit": Bound(1, 1_000_000_000),  # suggest: rows to list
}


def option(name: str) -> str:
    """The command-line spelling of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_options(**values: object) -> None:
    """Check every given setting that has bounds (None: not given, nothing to check)."""
    for name, value in values.items():
        if name in BOUNDS and value is not None:
            BOUNDS[name].check(option(name), value)


def bounded(command: F) -> F:
    """A cli command whose bounded options are checked before its body runs (one line on a bad value)."""

    @functools.wraps(command)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_options(**kwargs)
        return command(*args, **kwargs)

    return checked  # type: ignore[return-value]
