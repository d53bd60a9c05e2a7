"""Run a frozen conv base over image files: parallel decoding with prefetch into one compiled function.

Decoding and resizing run in a thread pool (Pillow releases the GIL), a bounded number of batches ahead of
inference, so memory is bounded by the batch size, not the dataset size. Why not tf.data: on 2 cores its
runtime threads competed with inference, Xception/OpenVINO ran at 3.9 img/s behind tf.data against 7.0
behind this pool (Keras runtime: 3.9 against 4.6). Inference is a ``tf.function`` (not XLA:
``jit_compile=True`` measured 10x slower on CPU) or an OpenVINO compiled model. Every batch is padded to
the full batch size so the function is traced once and an embedding does not depend on its batch neighbours.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from contextlib import contextmanager
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.backbones import Backbone
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS, BadImage, decode

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PRECISIONS = ("auto", "float32", "bfloat16")
PREFETCH_BATCHES = 2


def decode_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
RUNTIMES = ("auto", "keras", "openvino")


def cpu_has_bf16() -> bool:
    """True on CPUs with bfloat16 units (AMX or AVX512-BF16), where bf16 inference is several times faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def resolve_precision(precision: str) -> str:
    """``auto`` becomes bfloat16 where the CPU has bf16 units, else float32 (bf16 is emulated, slow)."""
    if precision not in PRECISIONS:
        raise ClothprobeError(f"Unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if cpu_has_bf16() else "float32"
    return precision


def resolve_runtime(runtime: str) -> str:
    """``auto`` is OpenVINO on a CPU-only machine where it is installed (it was faster for every backbone
    measured), else Keras/TensorFlow, which also drives a GPU. Decided without importing TensorFlow."""
    if runtime not in RUNTIMES:
        raise ClothprobeError(f"Unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    has_openvino = importlib.util.find_spec("openvino") is not None
    if runtime == "openvino" and not has_openvino:
        raise ClothprobeError("--runtime openvino needs the openvino package: pip install openvino")
    if runtime == "auto":
        has_gpu = Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir())
        return "openvino" if has_openvino and not has_gpu else "keras"
    return runtime


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logging ignores Python's sys.stderr); Python errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass
class Batch:
    """One finished batch: positions into the input list, and each view's embeddings for the good ones."""

    indices: list[int]
    views: dict[str, np.ndarray]
    skipped: dict[int, str]


def _keras_runtime(model, batch: int, size: int) -> Callable[[np.ndarray], np.ndarray]:  # noqa: ANN001
    """A ``tf.function`` over a fixed batch shape: traced once."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((batch, size, size, 3), tf.float32)])
    def forward(x):  # noqa: ANN001, ANN202
        return tf.cast(model(x, training=False), tf.float32)

    return lambda x: forward(x).numpy()


def _openvino_runtime(model, batch: int, size: int, precision: str) -> Callable[[np.ndarray], np.ndarray]:  # noqa: ANN001
    """The Keras base converted to OpenVINO and compiled for the CPU (1.3-1.8x TensorFlow here, same numbers)."""
    import openvino as ov

    with warnings.catch_warnings():  # Keras warns about the input structure while OpenVINO traces it
        warnings.simplefilter("ignore", UserWarning)
        converted = ov.convert_model(model, input=[(batch, size, size, 3)])
    compiled = ov.Core().compile_model(
        converted,
        "CPU",
        {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32"},
    )
    return lambda x: np.asarray(compiled(x)[0], dtype=np.float32)


class Embedder:
    """A built backbone and its compiled inference function, reusable over many calls."""

    def __init__(
        self,
        backbone: Backbone,
        weights_path: Path | None,
        precision: str = "float32",
        image_size: int | None = None,
        batch_size: int = 32,
        flip: bool = False,
        seed: int = 0,
        runtime: str = "keras",
    ) -> None:
        with quiet_native_stderr():  # TensorFlow's C++ start-up chatter (CUDA probing) is not for users
            import keras

        self.backbone = backbone
        self.preprocess = backbone.preprocess.apply
        self.size = image_size or backbone.input_size
        self.batch_size = batch_size
        self.flip = flip
        keras.utils.set_random_seed(seed)  # only matters for weights=None (tests)
        previous = keras.config.dtype_policy()
        if precision == "bfloat16" and runtime == "keras":
            keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            with quiet_native_stderr():
                model = backbone.build(str(weights_path) if weights_path else None, self.size)
        except (ValueError, OSError) as err:
            raise ClothprobeError(
                f"Cannot load weights {weights_path} into backbone '{backbone.name}': {err}. "
                f"Is it a no-top {backbone.name} weights file?"
            ) from None
        finally:
            keras.config.set_dtype_policy(previous)
        model.trainable = False
        rows = batch_size * len(self.view_names)
        if runtime == "openvino":
            self._infer = _openvino_runtime(model, rows, self.size, precision)
        else:
            self._infer = _keras_runtime(model, rows, self.size)
        self.embed_array(np.zeros((1, self.size, self.size, 3), np.uint8))  # trace / first-run set-up now

    @property
    def view_names(self) -> tuple[str, ...]:
        return ("embeddings", "flip") if self.flip else ("embeddings",)

    def embed_array(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Embeddings of up to ``batch_size`` decoded uint8 images, one array per view.

        The batch is padded to full size, so the compiled function sees one shape and an image's embedding
        does not depend on how many images share its batch.
        """
        n = len(images)
        padded = np.zeros((self.batch_size, self.size, self.size, 3), np.uint8)
        padded[:n] = images
        views = [padded, padded[:, :, ::-1]] if self.flip else [padded]
        out = self._infer(self.preprocess(np.concatenate(views).astype(np.float32)))
        b = self.batch_size
        return {view: out[i * b : i * b + n] for i, view in enumerate(self.view_names)}

    def run(self, files: Sequence[Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Batch]:
        """Embed ``files`` in order, batch by batch; files that cannot be decoded are reported, not fatal."""
        for start, decoded in decoded_batches(files, self.size, self.batch_size, max_pixels):
            good = [i for i, (image, _) in enumerate(decoded) if image is not None]
            views = (self.embed_array(np.stack([decoded[i][0] for i in good])) if good
                     else {v: np.empty((0, 0), np.float32) for v in self.view_names})
            yield Batch(
                indices=[start + i for i in good],
                views=views,
                skipped={start + i: reason for i, (image, reason) in enumerate(decoded) if image is None},
            )


def _load(path: Path, size: int, max_pixels: int) -> tuple[np.ndarray | None, str]:
    try:
        return decode(path, size, max_pixels), ""
    except BadImage as err:
        return None, str(err)


def decoded_batches(files: Sequence[Path], size: int, batch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                    prefetch: int = PREFETCH_BATCHES) -> Iterator[tuple[int, list[tuple[np.ndarray | None, str]]]]:
    """Decode and resize in parallel threads (Pillow releases the GIL), ``prefetch`` batches ahead of the
    consumer, in order. At most ``prefetch + 1`` batches are in memory, whatever the dataset size."""
    starts = list(range(0, len(files), batch_size))
    with ThreadPoolExecutor(max_workers=decode_workers()) as pool:
        def submit(start: int) -> list[Future]:
            return [pool.submit(_load, f, size, max_pixels) for f in files[start : start + batch_size]]

        queue = deque(submit(s) for s in starts[: prefetch + 1])
        for k, start in enumerate(starts):
            futures = queue.popleft()
            if k + prefetch + 1 < len(starts):
                queue.append(submit(starts[k + prefetch + 1]))
            yield start, [f.result() for f in futures]

