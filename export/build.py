"""``cli export``: a finished run as one ONNX file (``export_run``), or a feature cache as Parquet; which one is
decided by what is given (``export``): a run directory gives ONNX, a cache file gives Parquet.

The ONNX file joins three stages (``export/graph.py``): the backbone with its preprocessing, views and taps
(``export/backbone.py``, quantized to int8 with ``--precision int8``: ``export/quantize.py``), the head
(``export/heads.py``) and the outputs the contract names (``export/outputs.py``, with the open-set score:
``export/openset.py``), and carries ``ExportedModel``'s metadata (``export/contract.py``). Everything that can be
refused is refused before any model is built: the output path, the run's files, a run on several backbones or
on an ``onnx:`` backbone, int8 without calibration photos.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clothprobe.errors import ClothprobeError
from clothprobe.export.contract import PRECISIONS, ExportedModel

if TYPE_CHECKING:
    from clothprobe.classifiers.openset import OpenSet
    from clothprobe.featurize.model.recipe import Recipe
    from clothprobe.runs.directory import Manifest
    from clothprobe.runs.predicting import RunEmbedding

ONNX_SUFFIX = ".onnx"
PARQUET_SUFFIXES = (".parquet", ".pq")
ONNX_MODULES = ("onnx", "onnxruntime", "tf2onnx", "skl2onnx", "onnxmltools")  # the `onnx` extra


@dataclass
class ExportResult:
    """What ``export`` wrote: ``kind`` is ``onnx`` (``model``: its metadata; ``calibration_photos``: what int8
    was calibrated on; ``size``: bytes written, a pipe too) or ``parquet`` (``rows``: images written)."""

    path: Path
    kind: str
    seconds: float
    model: ExportedModel | None = None
    calibration_photos: int = 0
    rows: int = 0
    size: int = 0

    @property
    def megabytes(self) -> float:
        return self.size / 1e6


def export(source: str | Path, out: str | Path, *, precision: str | None = None, calibration: str | Path | None = None,
           weights: Any = None) -> ExportResult:
    """A run directory as ONNX (``--out FILE.onnx``; ``precision`` default float32), or a feature cache (an
    ``.h5`` file) as Parquet (``--out FILE.parquet``); a suffix that does not match what is given is refused."""
    source, started = Path(source).expanduser(), time.perf_counter()
    if source.is_dir():
        return export_run(source, out, precision=precision or "float32", calibration=calibration, weights=weights)
    if not source.exists():
        raise ClothprobeError(f"{source} does not exist; give a run directory (exported as ONNX) or a feature cache "
                              f"(.h5, exported as Parquet).")
    given = [name for name, value in (("--precision", precision), ("--calibration", calibration),
                                      ("--weights", weights)) if value is not None]
    if given:
        raise ClothprobeError(f"{source} is a file, so it is exported as a feature cache to Parquet; "
                              f"{', '.join(given)} belong to exporting a run directory to ONNX.")
    if Path(out).suffix.lower() not in PARQUET_SUFFIXES:
        raise ClothprobeError(f"--out {out}: a feature cache is exported as Parquet, so name a .parquet file "
                              f"(a run directory is exported as ONNX).")
    from clothprobe.featurize import load_features

    features = load_features(source)
    path = features.to_parquet(out)
    return ExportResult(path, "parquet", time.perf_counter() - started,
                        rows=sum(len(s) for s in features.splits.values()))


@dataclass
class _Run:
    """A run opened for export: checked, everything read that refusals need."""

    directory: Path
    manifest: Manifest
    recipe: Recipe
    how: RunEmbedding | None  # None: an end-to-end run
    openset: OpenSet | None = None
    calibration: Sequence[Path] = ()
    described: ExportedModel | None = None  # the file's metadata, all but its precision

    @property
    def views(self) -> int:
        """Images the network runs per photo: 2 with TTA (a cached-features run; an end-to-end run has none)."""
        return 2 if self.manifest.tta and self.how is not None else 1


def export_run(run_dir: str | Path, out: str | Path, *, precision: str = "float32",
               calibration: str | Path | None = None, weights: Any = None) -> ExportResult:
    """``run_dir`` as one ONNX file at ``out`` (written atomically; an existing file is replaced only if it is a
    clothprobe export). ``precision``: ``float32`` or ``int8`` (calibrated on the run's own calibration photos,
    or on ``calibration``, a folder of photos). ``weights``: as for predict, when not found as featurize finds
    them."""
    from clothprobe._util.extras import require
    from clothprobe._util.files import atomic_write
    from clothprobe._util.outputs import check_output

    started = time.perf_counter()
    for module in ONNX_MODULES:
        require(module, "onnx", "Exporting a run as ONNX")
    if precision not in PRECISIONS:
        raise ClothprobeError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if Path(out).suffix.lower() != ONNX_SUFFIX:
        raise ClothprobeError(f"--out {out}: a run directory is exported as ONNX, so name a {ONNX_SUFFIX} file "
                              f"(a feature cache is exported as Parquet).")
    path = check_output(out, option="--out", inputs=[run_dir], ours=is_export, stream=True)  # a pipe is written as one
    run = _open(Path(run_dir), precision, calibration)
    model, photos = _build(run, precision, weights)
    described = dataclasses.replace(run.described, precision=precision)
    _set_metadata(model, described)
    data = model.SerializeToString()
    with atomic_write(path, "wb", stream=True) as fh:
        fh.write(data)
    return ExportResult(path, "onnx", time.perf_counter() - started, model=described, calibration_photos=photos,
                        size=len(data))


def _open(directory: Path, precision: str, calibration: str | Path | None) -> _Run:
    """The run, checked for what an export can hold, with the calibration photos int8 will use."""
    from clothprobe.featurize.model.recipe import Recipe, reproduce
    from clothprobe.runs.directory import RunKind, read_manifest, verify
    from clothprobe.runs.predicting import run_embeddings

    manifest = read_manifest(directory)
    verify(directory, manifest)
    if calibration is not None and precision != "int8":
        raise ClothprobeError("--calibration DIR gives the photos --precision int8 is calibrated on; a float32 export "
                              "needs none.")
    if manifest.kind is RunKind.END_TO_END:
        run = _Run(directory, manifest, reproduce(Recipe.from_dict(manifest.recipe or {})), None)
    else:
        if len(manifest.backbones) > 1:
            raise ClothprobeError(f"{directory} joins {len(manifest.backbones)} backbones "
                                  f"({' + '.join(manifest.backbones)}), each with its own input size; an export takes "
                                  f"one image input. Fit the run on one backbone to export it.")
        (how,) = run_embeddings(manifest.caches)
        if how.recipe.source == "onnx":
            raise ClothprobeError(f"{directory} embeds with the ONNX model {how.recipe.backbone}; an export is built "
                                  f"from a Keras network (a keras.applications backbone or keras:PATH). Export that "
                                  f"model's run on a Keras backbone, or join your ONNX model yourself.")
        run = _Run(directory, manifest, how.recipe, how)
    run.openset = _openset(directory, manifest)
    run.described = _described(run)
    if precision == "int8":
        run.calibration = _calibration_photos(run, calibration)
    return run


def _calibration_photos(run: _Run, folder: str | Path | None) -> list[Path]:
    """``folder``'s photos (a seeded sample, as featurize draws one), else the photos the run's cache recorded
    that are still there with the same content."""
    from clothprobe._util.files import file_sha256
    from clothprobe.featurize.model.calibration import calibration_from_folder

    if folder is not None:
        return list(calibration_from_folder(folder).files)
    recorded = run.how.calibration if run.how is not None else ()
    if not recorded:
        raise ClothprobeError(f"{run.directory} records no calibration photos (its network is {run.recipe.precision}, "
                              f"or it was made before clothprobe recorded them); give --calibration DIR, a folder of "
                              f"photos like the ones it will classify (its training photos), for --precision int8.")
    found = [Path(p) for p, sha in recorded if Path(p).is_file() and file_sha256(p) == sha]
    if not found:
        raise ClothprobeError(f"None of the {len(recorded)} calibration photos {run.directory} recorded is where it was "
                              f"with the same content (the first: {recorded[0][0]}); give --calibration DIR, a folder "
                              f"of photos like the ones it will classify, for --precision int8.")
    return found


def _build(run: _Run, precision: str, weights: Any) -> tuple[Any, int]:
    """The joined ONNX model of ``run``; how many photos int8 was calibrated on."""
    from clothprobe.classifiers.modelio import model_parts
    from clothprobe.export.backbone import backbone_stage, e2e_stage
    from clothprobe.export.graph import (
        FEATURES,
        HEAD_IN,
        HEAD_LOGITS,
        HEAD_PROBA,
        OUT_FEATURES,
        OUT_LOGITS,
        OUT_PROBA,
        join,
    )
    from clothprobe.export.heads import has_logits, head_stage
    from clothprobe.export.outputs import Layout, needs_logits, output_stage

    parts, openset = model_parts(run.directory), run.openset
    if run.how is not None:
        backbone = backbone_stage(run.how, run.views == 2, weights)
    else:
        backbone = e2e_stage(run.recipe, parts.estimator)
    photos = 0
    if precision == "int8":
        from clothprobe.export.quantize import HEAD_OPS, quantize_stage

        ignored = () if run.how is not None else HEAD_OPS  # an end-to-end network holds its head too
        backbone, photos = quantize_stage(backbone, run.calibration, run.recipe.input_size, ignored)
    width = _width(backbone.graph.output[0])
    head = head_stage(parts, width)
    layout = Layout(run.views, width, tuple(int(c) for c in parts.classes), len(run.manifest.classes),
                    logits=_width(head.graph.output[-1]) if has_logits(parts) else 0)
    outputs = output_stage(layout, openset, openset.logits_of_every_view if openset is not None else True)
    after = join(head, outputs, [(HEAD_PROBA, OUT_PROBA)] + ([(HEAD_LOGITS, OUT_LOGITS)] if needs_logits(openset) else []))
    return join(backbone, after, [(FEATURES, HEAD_IN), (FEATURES, OUT_FEATURES)]), photos


def _width(value: Any) -> int:
    """The columns of a ``(rows, columns)`` graph output."""
    return value.type.tensor_type.shape.dim[1].dim_value


def _openset(directory: Path, manifest: Manifest) -> OpenSet | None:
    """The run's reject option, or None; refused when its threshold is not a number an export can carry."""
    from clothprobe.classifiers import openset

    if manifest.openset is None:
        return None
    chosen = openset.load(directory, manifest.openset)
    if not math.isfinite(chosen.threshold):
        raise ClothprobeError(f"{directory}: its open-set threshold is {chosen.threshold} (it would reject every "
                              f"photo); fit it again with a larger --unknown-cost, or without --unknown, to export it.")
    return chosen


def _described(run: _Run) -> ExportedModel:
    """What the file will say about itself (at float32; the precision is set once the file is built)."""
    from clothprobe import __version__
    from clothprobe.runs.directory import read_metrics

    metrics, chosen = read_metrics(run.directory), run.openset
    return ExportedModel(
        classes=tuple(run.manifest.classes), input_size=run.recipe.input_size, precision="float32",
        run=run.manifest.id, recipe_fingerprint=run.recipe.fingerprint, clothprobe_version=__version__,
        tta=run.views == 2,
        validation_accuracy=metrics.validation.accuracy if metrics.validation is not None else None,
        test_accuracy=metrics.test.accuracy if metrics.test is not None else None,
        openset=None if chosen is None else {"score": chosen.score, "threshold": chosen.threshold})


def _set_metadata(model: Any, described: ExportedModel) -> None:
    from onnx import helper

    helper.set_model_props(model, described.to_metadata())
    model.doc_string = f"clothprobe run {described.run}, exported at {described.precision} (docs: Deploy)"


def _props(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_metadata(path: str | Path) -> ExportedModel:
    """The metadata of an exported file, checked (``ExportedModel.from_metadata``); only a regular file is read."""
    import onnx

    from clothprobe.featurize.images import BadImage, open_regular

    try:
        with open_regular(path) as fh:
            model = onnx.load_model_from_string(fh.read())
    except (BadImage, OSError) as err:
        raise ClothprobeError(f"{path}: cannot read it ({err}).") from None
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends: not an ONNX file
        raise ClothprobeError(f"{path} is not an ONNX file ({type(err).__name__}).") from None
    return ExportedModel.from_metadata(_props(model), str(path))


def is_export(path: Path) -> bool:
    """Whether ``path`` is a file ``cli export`` wrote (an ``.onnx`` file with clothprobe's metadata), so that
    ``--out`` may replace it."""
    if path.suffix.lower() != ONNX_SUFFIX:
        return False
    try:
        read_metadata(path)
    except ClothprobeError:
        return False
    return True
