"""An exported run (``cli export``) in one onnxruntime session: its metadata read back through the contract's
one validator (``export.contract.ExportedModel.from_metadata``), its input and outputs checked against the
contract, and batches of decoded images scored. Imports onnxruntime, never TensorFlow or OpenVINO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.export.contract import INPUT, OPENSET_SCORE, OPENSET_THRESHOLD, PROBABILITIES, ExportedModel

INSTALL = 'pip install "clothprobe[serve]"'


@dataclass(frozen=True)
class Scores:
    """One image's scores: every class's probability (the file's class order) and, for a file with a reject
    option, its open-set score and threshold (below it: "none of these")."""

    probabilities: np.ndarray
    openset_score: float | None = None
    openset_threshold: float | None = None

    @property
    def unknown(self) -> bool:
        return self.openset_score is not None and self.openset_score < self.openset_threshold


def _session(source: str | bytes, threads: int, where: str):  # noqa: ANN202 - an onnxruntime.InferenceSession
    try:
        import onnxruntime as ort
    except ImportError:
        raise ClothprobeError(f"Serving needs onnxruntime, which is not installed: {INSTALL}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle model threads sleep instead of spinning: between batches the CPUs decode the next requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The memory arena keeps the largest batch's activations for the next batch (bounded by --max-batch: about
    # 400 MB resident at the default 4 for Xception int8 at 299 px): allocating them afresh for every batch
    # made one photo 90 ms instead of 77 ms (p50) and batches of 4 10.6 img/s instead of 12.1 (2-core Zen 4,
    # docs/guide/serve.md).
    options.enable_cpu_mem_arena = True
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors for a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ClothprobeError(f"{where} is not an ONNX file onnxruntime can run ({first}); give a file written by "
                              f"`cli export RUN --out FILE.onnx`.") from None


class OnnxModel:
    """The exported file ``source`` (a path, or the file's bytes named ``where``) on ``threads`` CPU threads.
    ``info``: what the file says about itself (classes, input size, accuracy, recipe, reject option)."""

    def __init__(self, source: str | Path | bytes, *, threads: int = 1, where: str | None = None) -> None:
        self.where = where or str(source if not isinstance(source, bytes) else "the exported file")
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise ClothprobeError(f"{self.where} is not a file; give a file written by `cli export`.")
        self.session = _session(source if isinstance(source, bytes) else str(source), threads, self.where)
        self.info = ExportedModel.from_metadata(self.session.get_modelmeta().custom_metadata_map, self.where)
        self._check_signature()
        self._warm_up()

    @property
    def size(self) -> int:
        return self.info.input_size

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        size = self.info.input_size
        image = inputs.get(INPUT)
        shape_ok = image is not None and len(image.shape) == 4 and not isinstance(image.shape[0], int) and all(
            isinstance(d, str) or d is None or d == want for d, want in zip(image.shape[1:], (size, size, 3)))
        if len(inputs) != 1 or not shape_ok or image.type != "tensor(uint8)":
            got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs.values())
            raise ClothprobeError(f"{self.where}: its input should be {INPUT!r}, uint8 (batch, {size}, {size}, 3) with "
                                  f"any batch size, as cli export writes it; it has {got}. Export the run again.")
        missing = [name for name in self.info.output_names if name not in outputs]
        if missing:
            raise ClothprobeError(f"{self.where}: its metadata promises the outputs {', '.join(missing)}, which the "
                                  f"graph lacks; export the run again with `cli export`.")

    def _warm_up(self) -> None:
        """One image before the first request: the session's first run allocates, and a graph that cannot run
        fails here, in one line, rather than on a user's photo."""
        try:
            self.run(np.zeros((1, self.size, self.size, 3), np.uint8))
        except Exception as err:  # noqa: BLE001 - onnxruntime's untyped errors
            raise ClothprobeError(f"{self.where} loads but does not run ({type(err).__name__}: {str(err)[:300]}); "
                                  f"export the run again with `cli export`.") from None

    def run(self, images: np.ndarray) -> list[Scores]:
        """Scores of a ``(n, size, size, 3)`` uint8 batch, one per image."""
        values = dict(zip(self.info.output_names, self.session.run(list(self.info.output_names), {INPUT: images}),
                          strict=True))
        probabilities = np.asarray(values[PROBABILITIES], dtype=np.float64)
        if not self.info.openset:
            return [Scores(row) for row in probabilities]
        threshold = float(np.asarray(values[OPENSET_THRESHOLD]).reshape(-1)[0])
        scores = np.asarray(values[OPENSET_SCORE], dtype=np.float64).reshape(-1)
        return [Scores(row, float(s), threshold) for row, s in zip(probabilities, scores, strict=True)]
