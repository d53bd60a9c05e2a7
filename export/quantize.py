"""``--precision int8``: the backbone stage quantized with onnxruntime's post-training static quantization.

QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops, which any ONNX runtime reads; onnxruntime
fuses them into int8 kernels), weights int8 per output channel, activations uint8 (onnxruntime's advice for
x86 CPUs with VNNI, AVX-512 or AMX: no range reduction), ranges from MinMax calibration on photos decoded
exactly as featurize decodes them. Only the backbone's Conv, MatMul and Gemm nodes are quantized: the
preprocessing, the pooling, the float16 rounding of the taps, the head and the open-set score stay float (they
are other stages, joined after this one). An end-to-end network holds its head: its Conv nodes only.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.export.contract import INPUT

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
BATCH = 8  # calibration photos per run of the float model


class _Photos:
    """The calibration photos as ``images`` batches (onnxruntime's ``CalibrationDataReader`` protocol),
    decoded batch by batch: memory holds a batch, not hundreds of photos. ``used``: how many were decoded; none
    at all is an error, before any quantization."""

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.used = 0
        batches = self._decode(files, size)
        first = next(batches, None)
        if first is None:
            raise ClothprobeError(f"None of the {len(files)} calibration photos could be decoded; int8 needs photos "
                                  f"like the ones it will classify (--calibration DIR).")
        self._batches = itertools.chain([first], batches)

    def _decode(self, files: Sequence[Path], size: int) -> Iterator[np.ndarray]:
        from clothprobe.featurize.embed import decoded_batches

        for _, batch in decoded_batches(list(files), size, BATCH):
            good = [image for image, _ in batch if image is not None]
            self.used += len(good)
            if good:
                yield np.stack(good)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


def quantize_stage(stage: Any, files: Sequence[Path], size: int,
                   ops: Sequence[str] = QUANTIZED_OPS) -> tuple[Any, int]:
    """``stage`` (the backbone's float ONNX model) quantized on ``files``, its ``ops`` only; the model and the
    photos it was calibrated on."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from clothprobe.export.graph import set_versions

    class Reader(_Photos, CalibrationDataReader):
        pass

    photos = Reader(files, size)
    with tempfile.TemporaryDirectory(prefix="clothprobe-int8-") as tmp:
        float_path, prepared, int8 = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        onnx.save(stage, float_path)
        # ONNX shape inference and graph optimisation, as advised (symbolic shape inference is for dynamic
        # shapes inside transformers, and needs sympy)
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8), photos, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(ops), extra_options={"MatMulConstBOnly": True})
        return set_versions(onnx.load(str(int8))), photos.used
