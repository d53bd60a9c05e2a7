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

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.export.contract import INPUT

BATCH = 8  # photos decoded at a time
HEAD_OPS = ("MatMul", "Gemm")  # an end-to-end network's head


class _Photos:
    """The calibration photos as ``images`` inputs of one photo each, decoded again on every pass (NNCF reads
    them more than once), so memory holds a batch, not hundreds of photos. ``used``: how many decode; none at
    all is an error, before any quantization."""

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.files, self.size = list(files), size
        self.used = sum(1 for _ in self)
        if self.used == 0:
            raise ClothprobeError(f"None of the {len(self.files)} calibration photos could be decoded; int8 needs "
                                  f"photos like the ones it will classify (--calibration DIR).")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        from clothprobe.featurize.embed import decoded_batches

        for _, batch in decoded_batches(self.files, self.size, BATCH):
            for image, _ in batch:
                if image is not None:
                    yield {INPUT: image[None]}


def quantize_stage(stage: Any, files: Sequence[Path], size: int, ignored: Sequence[str] = ()) -> tuple[Any, int]:
    """``stage`` (the backbone's float ONNX model) quantized on ``files``, operators of the ``ignored`` types
    left float; the model and how many photos it was calibrated on."""
    from clothprobe._util.extras import require
    from clothprobe.export.graph import set_versions
    from clothprobe.featurize.model.runtimes import nncf_quiet

    nncf = require("nncf", "int8", "--precision int8 (NNCF post-training quantization)")
    photos = _Photos(files, size)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    scope = nncf.IgnoredScope(types=list(ignored)) if ignored else None
    # one scale per activation tensor: onnxruntime's int8 kernels take no per-channel activations (NNCF gives
    # OpenVINO's depthwise convolutions one per channel)
    per_tensor = AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False))
    with nncf_quiet():
        quantized = nncf.quantize(stage, nncf.Dataset(photos), subset_size=photos.used, fast_bias_correction=True,
                                  ignored_scope=scope, advanced_parameters=per_tensor)
    return set_versions(quantized), photos.used
