"""``--precision int8``: the backbone stage quantized as featurize quantizes the run's own int8 network.

NNCF's post-training quantization (its ONNX backend; featurize runs the same algorithm on the OpenVINO model):
the same calibration photos, decoded exactly as featurize decodes them, the same preset and fast bias
correction, so the file's int8 network is the run's up to where the two graphs place their quantizers. The
result is in **QDQ format** (QuantizeLinear/DequantizeLinear pairs around float ops), which any ONNX runtime
reads; onnxruntime fuses them into int8 kernels. Only this stage is quantized: the pooling of the taps, their
float16 rounding, the head and the open-set score are other stages, joined after it and kept float. An
end-to-end network holds its head: its dense layers are left float (``ignored``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clothprobe.export.contract import INPUT

HEAD_OPS = ("MatMul", "Gemm")  # an end-to-end network's head


def quantize_stage(stage: Any, files: Sequence[Path], size: int, ignored: Sequence[str] = ()) -> tuple[Any, int]:
    """``stage`` (the backbone's float ONNX model) quantized on ``files``, operators of the ``ignored`` types
    left float; the model and how many photos it was calibrated on."""
    from clothprobe._util.extras import require
    from clothprobe.export.graph import set_versions
    from clothprobe.featurize.model.runtimes import CalibrationSet, nncf_quiet

    nncf = require("nncf", "int8", "--precision int8 (NNCF post-training quantization)")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    photos = CalibrationSet(files, lambda image: {INPUT: image}, size)  # decoded exactly as featurize decodes them

    scope = nncf.IgnoredScope(types=list(ignored)) if ignored else None
    # one scale per activation tensor: onnxruntime's int8 kernels take no per-channel activations (NNCF gives
    # OpenVINO's depthwise convolutions one per channel)
    per_tensor = AdvancedQuantizationParameters(
        activations_quantization_params=QuantizationParameters(per_channel=False))
    with nncf_quiet():
        quantized = nncf.quantize(stage, nncf.Dataset(photos), subset_size=photos.usable, fast_bias_correction=True,
                                  ignored_scope=scope, advanced_parameters=per_tensor)
    return set_versions(quantized), photos.usable
