"""The contract of an exported run (``cli export RUN --out FILE.onnx``): the one owner of its input and output
names and of its ``metadata_props`` keys. Pure Python (no onnx, onnxruntime or TensorFlow import), so a server
reads it cheaply; ``ExportedModel.from_metadata`` is the one validator of metadata read back from a file.

The file takes ``images``: a batch of RGB uint8 images ``(n, size, size, 3)``, already resized as
``PREPROCESSING`` says (the resize stays outside the file, as in featurize: ``clothprobe.featurize.images``).
It gives ``probabilities`` ``(n, classes)`` float32, and for a run fitted with ``--unknown`` also
``openset_score`` ``(n,)`` float32 (higher = more like the run's classes) and ``openset_threshold`` (a
float32 scalar: a photo scoring below it is "none of these").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clothprobe.errors import ClothprobeError

FORMAT = "clothprobe-onnx"
FORMAT_VERSION = 1
PREFIX = "clothprobe."
INPUT = "images"
PROBABILITIES = "probabilities"
OPENSET_SCORE = "openset_score"
OPENSET_THRESHOLD = "openset_threshold"
PRECISIONS = ("float32", "int8")
# What happens to a photo before the file sees it: featurize's decoder (clothprobe.featurize.images.decode).
PREPROCESSING = {
    "decoder": "Pillow",
    "exif": "transpose (ImageOps.exif_transpose) before resizing",
    "jpeg_draft": "JPEG decoded with Image.draft('RGB', (size, size)) first (a DCT-domain downscale, still >= size)",
    "alpha": "flattened on white",
    "mode": "RGB; 16-bit and float images scaled to 8 bits; gray resized, then made RGB",
    "resize": "Image.resize((size, size), Image.BILINEAR): the whole photo squashed to a square, no crop",
    "layout": "uint8 NHWC, RGB",
}
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class ExportedModel:
    """What an exported file says about itself. ``openset``: ``{"score": name, "threshold": float}`` for a run
    with a reject option, else None; accuracies are fractions in [0, 1] (None: the run has no such split)."""

    classes: tuple[str, ...]
    input_size: int
    precision: str
    run: str
    recipe_fingerprint: str
    clothprobe_version: str
    tta: bool = False
    validation_accuracy: float | None = None
    test_accuracy: float | None = None
    openset: dict[str, Any] | None = None
    preprocessing: dict[str, str] = field(default_factory=lambda: dict(PREPROCESSING))

    def __post_init__(self) -> None:
        _check(self)

    def to_metadata(self) -> dict[str, str]:
        """The file's ``metadata_props``: every value a string (JSON where it is not one)."""
        values = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "classes": json.dumps(list(self.classes)),
                  "input_size": str(self.input_size), "precision": self.precision, "run": self.run,
                  "recipe_fingerprint": self.recipe_fingerprint, "clothprobe_version": self.clothprobe_version,
                  "tta": json.dumps(self.tta), "validation_accuracy": json.dumps(self.validation_accuracy),
                  "test_accuracy": json.dumps(self.test_accuracy), "openset": json.dumps(self.openset),
                  "preprocessing": json.dumps(self.preprocessing, sort_keys=True)}
        return {PREFIX + k: v for k, v in values.items()}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], where: str) -> ExportedModel:
        """The metadata of the file ``where``, checked; one ClothprobeError naming the file and the key otherwise."""
        get = {k[len(PREFIX):]: v for k, v in props.items() if isinstance(k, str) and k.startswith(PREFIX)}
        if get.get("format") != FORMAT or get.get("format_version") != str(FORMAT_VERSION):
            raise ClothprobeError(f"{where} is not a clothprobe export of format {FORMAT} version {FORMAT_VERSION} "
                                  f"(its metadata says format {get.get('format')!r}, version "
                                  f"{get.get('format_version')!r}); export the run again with `cli export`.")
        try:
            return cls(classes=tuple(json.loads(get["classes"])), input_size=int(get["input_size"]),
                       precision=get["precision"], run=get["run"], recipe_fingerprint=get["recipe_fingerprint"],
                       clothprobe_version=get["clothprobe_version"], tta=json.loads(get["tta"]),
                       validation_accuracy=json.loads(get["validation_accuracy"]),
                       test_accuracy=json.loads(get["test_accuracy"]), openset=json.loads(get["openset"]),
                       preprocessing=json.loads(get["preprocessing"]))
        except (KeyError, TypeError, ValueError, ClothprobeError) as err:
            raise ClothprobeError(f"{where}: its clothprobe metadata is damaged ({type(err).__name__}: "
                                  f"{str(err)[:200]}); export the run again with `cli export`.") from None

    @property
    def output_names(self) -> tuple[str, ...]:
        return (PROBABILITIES, OPENSET_SCORE, OPENSET_THRESHOLD) if self.openset else (PROBABILITIES,)


def _fraction(name: str, value: object) -> None:
    ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1)
    if not ok:
        raise ValueError(f"{name} should be a fraction in [0, 1] or null, got {value!r}")


def _check(m: ExportedModel) -> None:
    """Every field of ``m`` in range (a ValueError naming the first one that is not)."""
    if len(m.classes) < 2 or len(set(m.classes)) != len(m.classes) or not all(isinstance(c, str) and c for c in m.classes):
        raise ValueError(f"classes should be two or more distinct non-empty names, got {m.classes!r}")
    if isinstance(m.input_size, bool) or not isinstance(m.input_size, int) or not 8 <= m.input_size <= 2048:
        raise ValueError(f"input_size should be a whole number of pixels in [8, 2048], got {m.input_size!r}")
    if m.precision not in PRECISIONS:
        raise ValueError(f"precision should be one of {', '.join(PRECISIONS)}, got {m.precision!r}")
    if not _FINGERPRINT.fullmatch(str(m.recipe_fingerprint)):
        raise ValueError(f"recipe_fingerprint should be 16 hex digits, got {m.recipe_fingerprint!r}")
    if not isinstance(m.tta, bool) or not isinstance(m.run, str) or not isinstance(m.clothprobe_version, str):
        raise ValueError("tta should be true or false, run and clothprobe_version strings")
    _fraction("validation_accuracy", m.validation_accuracy)
    _fraction("test_accuracy", m.test_accuracy)
    if not isinstance(m.preprocessing, dict) or not all(isinstance(v, str) for v in m.preprocessing.values()):
        raise ValueError("preprocessing should be an object of strings")
    if m.openset is not None:
        threshold = m.openset.get("threshold") if isinstance(m.openset, dict) else None
        finite = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)
        if not finite or not isinstance(m.openset.get("score"), str):
            raise ValueError(f"openset should be {{'score': name, 'threshold': finite number}}, got {m.openset!r}")
