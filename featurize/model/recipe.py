"""The embedding recipe: the one owner of "how these embeddings were made".

A recipe is data, like timm's pretrained config: where the backbone comes from (a keras.applications
entry, an ONNX file, a ``.keras`` file) and the SHA-256 of its weights, input size, resize rule,
preprocessing as numbers, pooling, tensor layout, runtime and precision (and, for int8, which photos
calibrated it). ``resolve_recipe`` turns a user's request (``auto`` included) into concrete values once;
the recipe is written into every cache and run manifest (``to_dict``), read back into the same object
(``from_dict``), and it alone builds the embedder (``featurize/model/store.py``). No other module reads its keys.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from clothprobe._util.bounds import BOUNDS
from clothprobe._util.files import file_sha256
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import RESIZE
from clothprobe.featurize.model.backbones import Preprocess, get_backbone
from clothprobe.featurize.model.taps import TAP_DTYPE

RECIPE_VERSION = 1
SOURCES = ("keras-applications", "onnx", "keras-file")
FILE_PREFIXES = {"onnx:": "onnx", "keras:": "keras-file"}
RUNTIMES = ("auto", "keras", "openvino")
PRECISIONS = ("auto", "float32", "bfloat16", "int8")
RANDOM_INIT = "random-init-seed-"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides an image's embedding. Two recipes are equal (and share a ``fingerprint``)
    exactly when they give the same embeddings; ``model_path`` and ``model_source`` only say where the
    model or weights file was found on this machine and take no part in that."""

    backbone: str  # registry name, or onnx:<file name> / keras:<file name>
    source: str  # one of SOURCES
    model: str  # keras.applications constructor, or the model file's name
    weights_sha256: str  # weights file (keras.applications) or model file; random-init-seed-N for tests
    input_size: int
    resize: str
    preprocess: Preprocess
    pooling: str  # avg | max | none
    layout: str  # NHWC | NCHW: what the network takes
    output: str  # output / layer embedded ("" = the model's own output)
    runtime: str  # keras | openvino
    precision: str  # float32 | bfloat16 | int8
    calibration: str = ""  # int8: digest of the calibration photos; "" otherwise
    taps: tuple[str, ...] = ()  # pooled layers embedded side by side, in order; () = the final layer only
    model_path: str = field(default="", compare=False)
    model_source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ClothprobeError(f"Unknown recipe source {self.source!r}; known: {', '.join(SOURCES)}.")
        BOUNDS["image_size"].check("input_size", self.input_size)
        resolved = [p for p in PRECISIONS if p != "auto"]
        if self.precision not in resolved or self.runtime not in RUNTIMES[1:]:
            raise ClothprobeError(f"A recipe runs at a precision of {', '.join(resolved)} on "
                                  f"{', '.join(RUNTIMES[1:])}; got {self.precision!r} on {self.runtime!r}.")

    @property
    def fingerprint(self) -> str:
        """A short hash of every setting that decides the embeddings (not where files were found)."""
        blob = json.dumps({"recipe_version": RECIPE_VERSION, **self._identity()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def random_init_seed(self) -> int | None:
        """The seed of a random-weights recipe (tests), None for real weights."""
        if self.weights_sha256.startswith(RANDOM_INIT):
            return int(self.weights_sha256[len(RANDOM_INIT):])
        return None

    @property
    def label(self) -> str:
        return f"{self.backbone} ({self.runtime}, {self.precision})"

    def _identity(self) -> dict[str, Any]:
        """Every compared setting; ``taps`` only when set, so a final-layer recipe keeps the fingerprint it
        had before taps existed (its caches, store entries and runs stay valid), and then with the dtype
        the taps other than the final one are rounded to (``taps.round_taps``)."""
        identity = {f.name: _plain(getattr(self, f.name)) for f in fields(self)
                    if f.compare and not (f.name == "taps" and not self.taps)}
        return {**identity, "tap_dtype": TAP_DTYPE} if self.taps else identity

    def to_dict(self) -> dict[str, Any]:
        return {"recipe_version": RECIPE_VERSION, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """The recipe written by ``to_dict``; an error (not a KeyError) for anything else."""
        try:
            if d.get("recipe_version") != RECIPE_VERSION:
                raise ClothprobeError(f"recipe version {d.get('recipe_version')!r}, this clothprobe reads "
                                      f"{RECIPE_VERSION}")
            values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
            values["preprocess"] = Preprocess.from_dict(d["preprocess"])
            values["input_size"] = int(d["input_size"])
            values["taps"] = tuple(str(t) for t in d.get("taps", ()))
            return cls(**values)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ClothprobeError(f"not an embedding recipe this clothprobe can read ({type(err).__name__}: {err})") from None

    def differences(self, other: Recipe) -> list[str]:
        """``setting: other's value -> this one's``, for every setting that differs."""
        ours, theirs = self._identity(), other._identity()
        keys = [*ours, *(k for k in theirs if k not in ours)]
        return [f"{k}: {_show(theirs.get(k, []))} -> {_show(ours.get(k, []))}" for k in keys
                if ours.get(k, []) != theirs.get(k, [])]

    def with_precision(self, precision: str, calibration: str = "") -> Recipe:
        return replace(self, precision=precision, calibration=calibration if precision == "int8" else "")

    def with_taps(self, taps: tuple[str, ...]) -> Recipe:
        """This recipe embedding ``taps`` (as ``resolve_taps`` gives them) instead."""
        return replace(self, taps=tuple(taps))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value.to_dict() if isinstance(value, Preprocess) else value


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def cpu_has_bf16() -> bool:
    """True on CPUs with bfloat16 units (AMX or AVX512-BF16), where bf16 inference is about 2x faster, unless
    ``ONEDNN_MAX_CPU_ISA`` keeps the runtime below them (``AVX2`` lets one CPU stand in for an AVX2 one)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and "BF16" not in cap and "AMX" not in cap and cap != "ALL":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def has_nvidia_gpu() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def resolve_runtime(runtime: str, source: str = "keras-applications") -> str:
    """``auto`` is OpenVINO on a CPU-only machine where it is installed (faster for every backbone
    measured), else Keras/TensorFlow, which also drives a GPU. ONNX models run on OpenVINO only."""
    if runtime not in RUNTIMES:
        raise ClothprobeError(f"Unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    has_openvino = importlib.util.find_spec("openvino") is not None
    if source == "onnx":
        if runtime == "keras":
            raise ClothprobeError("An onnx: backbone runs on OpenVINO; use --runtime openvino (or auto).")
        runtime = "openvino"
    if runtime == "auto":
        runtime = "openvino" if has_openvino and not has_nvidia_gpu() else "keras"
    if runtime == "openvino" and not has_openvino:
        raise ClothprobeError("--runtime openvino needs the openvino package: pip install openvino")
    return runtime


def resolve_precision(precision: str, runtime: str) -> str:
    """``auto`` is bfloat16 where the CPU has bf16 units, else float32 (bf16 is emulated there, slow).
    int8 needs OpenVINO and calibration photos: ``featurize`` makes it its own ``auto`` where it has
    training photos to calibrate on (``featurize/pipeline.py``); here ``auto`` stays a float precision."""
    if precision not in PRECISIONS:
        raise ClothprobeError(f"Unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "int8" and runtime != "openvino":
        raise ClothprobeError("--precision int8 runs on OpenVINO (post-training quantization with NNCF); "
                              f"use --runtime openvino (or auto), not {runtime}.")
    if precision == "auto":
        return "bfloat16" if cpu_has_bf16() and not (runtime == "keras" and has_nvidia_gpu()) else "float32"
    return precision


def _file_source(spec: str) -> tuple[str, Path] | None:
    for prefix, source in FILE_PREFIXES.items():
        if spec.startswith(prefix):
            path = Path(spec[len(prefix):]).expanduser()
            if not path.is_file():
                raise ClothprobeError(f"{spec}: no model file at {path}.")
            return source, path.resolve()
    return None


def _model_part(backbone: str, weights: Any, image_size: int | None, seed: int) -> dict[str, Any]:
    """The recipe fields that come from the model itself: registry entry or sidecar, and weights."""
    from clothprobe.featurize.model.sidecar import load_sidecar
    from clothprobe.featurize.model.weights import resolve_weights

    file_source = _file_source(backbone)
    if file_source is not None:
        source, path = file_source
        side = load_sidecar(path)
        prefix = "onnx:" if source == "onnx" else "keras:"
        return dict(backbone=prefix + path.name, source=source, model=path.name, weights_sha256=file_sha256(path),
                    input_size=image_size or side.input_size, preprocess=side.preprocess, pooling=side.pooling,
                    layout=side.layout, output=side.output, model_path=str(path), model_source=str(side.path))
    bb = get_backbone(backbone)
    resolved = resolve_weights(bb, weights)
    return dict(backbone=bb.name, source="keras-applications", model=bb.constructor,
                weights_sha256=resolved.sha256 if resolved.path else f"{RANDOM_INIT}{seed}",
                input_size=bb.check_size(image_size or bb.input_size), preprocess=bb.preprocess, pooling="avg",
                layout="NHWC", output="", model_path=str(resolved.path or ""), model_source=resolved.source)


def resolve_recipe(backbone: str, *, weights: Any = "imagenet", image_size: int | None = None,
                   runtime: str = "auto", precision: str = "auto", seed: int = 0, calibration: str = "",
                   taps: str | None = None) -> Recipe:
    """A user's request made concrete: the backbone's entry or sidecar, its weights found and hashed,
    ``auto`` runtime and precision decided for this machine, ``taps`` (``final``, ``all`` or names) checked
    against the backbone's. Raises before any model work."""
    from clothprobe.featurize.model.taps import resolve_taps

    if image_size is not None and image_size < 8:
        raise ClothprobeError(f"--image-size must be at least 8 pixels, got {image_size}.")
    offered = () if backbone.startswith(tuple(FILE_PREFIXES)) else get_backbone(backbone).taps
    chosen = resolve_taps(taps, offered)
    part = _model_part(backbone, weights, image_size, seed)
    concrete_runtime = resolve_runtime(runtime, part["source"])
    concrete_precision = resolve_precision(precision, concrete_runtime)
    return Recipe(resize=RESIZE, runtime=concrete_runtime, precision=concrete_precision,
                  calibration=calibration if concrete_precision == "int8" else "", taps=chosen, **part)


def reproduce(recorded: Recipe) -> Recipe:
    """What this installation makes of the request ``recorded`` was made from, without finding or hashing
    weights (the recorded hash is checked when a model is built from them). Raises, naming every setting
    that differs, when the installed code would embed differently (preprocessing, resize, pooling...)."""
    if recorded.source == "keras-applications":
        bb = get_backbone(recorded.backbone)
        current = replace(recorded, model=bb.constructor, resize=RESIZE, preprocess=bb.preprocess, pooling="avg",
                          layout="NHWC", output="")
    else:  # the user's sidecar is the source of truth for their own model; the rules are ours
        current = replace(recorded, resize=RESIZE)
    diffs = current.differences(recorded)
    if diffs:
        raise ClothprobeError(
            f"These embeddings were made with a recipe this clothprobe would not reproduce ({'; '.join(diffs)}: "
            f"recorded -> installed). Featurize and fit again with this version, or install the version that "
            f"made them."
        )
    return current
