"""The sidecar file that describes a backbone outside the registry (``onnx:PATH``, ``keras:PATH``).

Nobody can guess how an arbitrary model wants its pixels, so the user says it once, in a TOML or JSON
file next to the model (``model.onnx`` -> ``model.toml``, ``model.json``, ``model.onnx.toml`` or
``model.onnx.json``)::

    input_size = 224          # square input, pixels
    layout = "NCHW"           # NCHW (most ONNX exports) or NHWC (Keras)
    output = "features"       # ONNX output name / Keras layer name to embed; default: the model's output
    pooling = "avg"           # avg or max over the spatial axes of a 4-D output; none: already pooled

    [preprocess]              # (pixel * scale - mean) / std, pixels RGB in [0, 255]
    scale = 0.00392156862745098
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    channel_order = "RGB"     # or BGR
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from clothprobe._util.bounds import BOUNDS
from clothprobe._util.files import read_text
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.backbones import Preprocess

LAYOUTS = ("NCHW", "NHWC")
POOLINGS = ("avg", "max", "none")
KEYS = {"input_size", "layout", "output", "pooling", "preprocess"}
PREPROCESS_KEYS = {"scale", "mean", "std", "channel_order"}


@dataclass(frozen=True)
class Sidecar:
    path: Path
    input_size: int
    layout: str
    output: str
    pooling: str
    preprocess: Preprocess


def sidecar_candidates(model: Path) -> list[Path]:
    return [model.with_suffix(".toml"), model.with_suffix(".json"),
            model.with_name(model.name + ".toml"), model.with_name(model.name + ".json")]


def _parse(path: Path) -> dict:
    try:
        text = read_text(path)
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as err:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ClothprobeError(f"Cannot read sidecar {path}: {err}. Fix it (see README, 'Any ONNX or Keras model').") from None


def _choice(path: Path, key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ClothprobeError(f"{path}: {key} must be one of {', '.join(choices)}, got {value!r}.")
    return str(value)


def load_sidecar(model: Path) -> Sidecar:
    """The sidecar of ``model``, validated, or an error naming the files looked for and the keys needed."""
    found = next((p for p in sidecar_candidates(model) if p.is_file()), None)
    if found is None:
        looked = ", ".join(str(p) for p in sidecar_candidates(model))
        raise ClothprobeError(
            f"{model} needs a sidecar file saying how to feed it: one of {looked}, with input_size, layout, "
            f"output, pooling and [preprocess] scale/mean/std/channel_order (see README, 'Any ONNX or Keras model')."
        )
    doc = _parse(found)
    if not isinstance(doc, dict):
        raise ClothprobeError(f"{found}: expected a table of settings, got {type(doc).__name__}.")
    unknown = set(doc) - KEYS
    pre = doc.get("preprocess", {})
    if not isinstance(pre, dict):
        raise ClothprobeError(f"{found}: preprocess must be a table with {', '.join(sorted(PREPROCESS_KEYS))}.")
    unknown |= {f"preprocess.{k}" for k in set(pre) - PREPROCESS_KEYS}
    if unknown:
        raise ClothprobeError(f"{found}: unknown setting(s) {', '.join(sorted(unknown))}; allowed: "
                              f"{', '.join(sorted(KEYS))} and preprocess.{{{', '.join(sorted(PREPROCESS_KEYS))}}}.")
    size = int(BOUNDS["image_size"].check(f"{found}: input_size (pixels a side)", doc.get("input_size")))
    try:
        preprocess = Preprocess(scale=pre.get("scale", 1.0), mean=tuple(pre.get("mean", (0.0, 0.0, 0.0))),
                                std=tuple(pre.get("std", (1.0, 1.0, 1.0))), channel_order=pre.get("channel_order", "RGB"))
    except (TypeError, ValueError) as err:
        raise ClothprobeError(f"{found}: preprocess: {err}") from None
    except ClothprobeError as err:
        raise ClothprobeError(f"{found}: {err}") from None
    output = doc.get("output", "")
    if not isinstance(output, str):
        raise ClothprobeError(f"{found}: output must be a name (string), got {output!r}.")
    return Sidecar(path=found, input_size=size, layout=_choice(found, "layout", doc.get("layout", "NCHW"), LAYOUTS),
                   output=output, pooling=_choice(found, "pooling", doc.get("pooling", "avg"), POOLINGS),
                   preprocess=preprocess)
