"""Run a frozen conv base over image files: a tf.data pipeline into one compiled inference function.

Decoding and resizing run in parallel in tf.data (Pillow releases the GIL), batches are prefetched, and
inference is a ``tf.function`` (not XLA: ``jit_compile=True`` measured 10x slower on CPU). Every batch is
padded to the full batch size so the function is traced once and an image's embedding does not depend on
how many images share its batch. Memory is bounded by the batch size, not the dataset size.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.backbones import Backbone
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS, BadImage, decode

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PRECISIONS = ("auto", "float32", "bfloat16")
RUNTIME = "keras-tensorflow"


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
    ) -> None:
        with quiet_native_stderr():  # TensorFlow's C++ start-up chatter (CUDA probing) is not for users
            import keras
            import tensorflow as tf

        self.backbone = backbone
        self._preprocess = backbone.preprocess_fn()
        self.size = image_size or backbone.input_size
        self.batch_size = batch_size
        self.flip = flip
        keras.utils.set_random_seed(seed)  # only matters for weights=None (tests)
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
        try:
            with quiet_native_stderr():
                self.model = backbone.build(str(weights_path) if weights_path else None, self.size)
        except (ValueError, OSError) as err:
            raise ClothprobeError(
                f"Cannot load weights {weights_path} into backbone '{backbone.name}': {err}. "
                f"Is it a no-top {backbone.name} weights file?"
            ) from None
        finally:
            keras.config.set_dtype_policy(previous)
        self.model.trainable = False
        spec = tf.TensorSpec((batch_size, self.size, self.size, 3), tf.uint8)
        self._embed = tf.function(self._forward, input_signature=[spec])

    def _forward(self, images):  # noqa: ANN001, ANN202 - traced by tf.function
        import tensorflow as tf

        views = [images, tf.reverse(images, axis=[2])] if self.flip else [images]
        x = self._preprocess(tf.cast(tf.concat(views, axis=0), tf.float32))
        return tf.cast(self.model(x, training=False), tf.float32)

    @property
    def view_names(self) -> tuple[str, ...]:
        return ("embeddings", "flip") if self.flip else ("embeddings",)

    def embed_array(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Embeddings of up to ``batch_size`` decoded uint8 images, one array per view."""
        n = len(images)
        padded = np.zeros((self.batch_size, self.size, self.size, 3), np.uint8)
        padded[:n] = images
        out = self._embed(padded).numpy()
        b = self.batch_size
        return {view: out[i * b : i * b + n] for i, view in enumerate(self.view_names)}

    def run(self, files: Sequence[Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Batch]:
        """Embed ``files`` in order, batch by batch; files that cannot be decoded are reported, not fatal."""
        import tensorflow as tf

        size, errors = self.size, {}
        blank = np.zeros((size, size, 3), np.uint8)

        def load(i: np.int64) -> tuple[np.ndarray, bool]:
            try:
                return decode(files[int(i)], size, max_pixels), True
            except BadImage as err:
                errors[int(i)] = str(err)
                return blank, False

        def load_tf(i):  # noqa: ANN001, ANN202
            image, ok = tf.numpy_function(load, [i], [tf.uint8, tf.bool])
            return tf.ensure_shape(image, (size, size, 3)), tf.ensure_shape(ok, ())

        ds = (
            tf.data.Dataset.range(len(files))
            .map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(self.batch_size)
            .prefetch(2)
        )
        start = 0
        for images, ok in ds.as_numpy_iterator():
            positions = np.arange(start, start + len(ok))
            start += len(ok)
            good = positions[ok]
            views = self.embed_array(images[ok]) if len(good) else {v: np.empty((0, 0), np.float32) for v in self.view_names}
            yield Batch(
                indices=good.tolist(),
                views=views,
                skipped={int(i): errors.pop(int(i)) for i in positions[~ok]},
            )

