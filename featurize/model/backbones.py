"""The backbone registry: one frozen record per keras.applications conv base, as data (like timm's
pretrained configs): constructor, input size, preprocessing as numbers, and the published no-top weights
file with the hash Keras checks. Adding a keras.applications model is one entry in ``BACKBONES``.

Backbones outside the registry (``onnx:PATH``, ``keras:PATH``) are described by a sidecar file next to
the model instead: see ``featurize/model/sidecar.py``. Nothing else in clothprobe branches on a backbone's name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothprobe.errors import ClothprobeError

if TYPE_CHECKING:
    import keras

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    """What happens to RGB pixels in [0, 255] before the network: ``(pixel * scale - mean) / std`` per
    channel, channels in ``channel_order`` (``mean``/``std`` listed in that order).

    ``in_model``: the network applies these numbers itself (a Rescaling/Normalization layer inside the
    published model), so the embedder feeds it raw pixels; the numbers are recorded all the same.
    """

    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    in_model: bool = False

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ClothprobeError(
                f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}."
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ClothprobeError(f"mean and std need 3 values each (std non-zero); got {self.mean}, {self.std}.")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "scale", float(self.scale))

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """``(n, h, w, 3)`` RGB pixels (any dtype) -> float32 network input, channels last."""
        x = np.asarray(pixels, dtype=np.float32)
        if self.in_model:
            return x
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = x * np.float32(self.scale) - np.asarray(self.mean, np.float32)
        if self.std != (1.0, 1.0, 1.0):
            x = x / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(scale=d["scale"], mean=tuple(d["mean"]), std=tuple(d["std"]),
                   channel_order=d["channel_order"], in_model=bool(d.get("in_model", False)))


# keras.applications' preprocess_input modes, as numbers.
CAFFE = Preprocess(scale=1.0, mean=(103.939, 116.779, 123.68), channel_order="BGR")  # BGR, mean subtracted
TF = Preprocess(scale=1 / 127.5, mean=(1.0, 1.0, 1.0))  # [-1, 1]
TORCH_IMAGENET = Preprocess(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass(frozen=True, kw_only=True)
class Backbone:
    """A keras.applications conv base with global average pooling, as clothprobe uses it.

    ``constructor`` is the ``keras.applications`` function; ``keras_file`` under ``keras_dir`` is the
    no-top ImageNet file Keras downloads and ``keras_hash`` the md5 or sha256 Keras checks it against.
    ``build_kwargs`` are extra constructor arguments (e.g. the in-model preprocessing switch).
    """

    name: str
    constructor: str
    input_size: int
    embedding_dim: int
    preprocess: Preprocess
    keras_dir: str
    keras_file: str
    keras_hash: str | None
    min_size: int = 32
    build_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def offline_file(self) -> str:
        """The name a team's offline weights directory uses (as ``offline_weights.py`` writes it)."""
        return f"{self.name}_notop.weights.h5"

    @property
    def weights_url(self) -> str:
        return f"{KERAS_WEIGHTS_URL}{self.keras_dir}/{self.keras_file}"

    def check_size(self, size: int) -> int:
        if size < self.min_size:
            raise ClothprobeError(
                f"Image size {size} is too small for backbone '{self.name}'; use at least {self.min_size}."
            )
        return size

    def build(self, weights: str | None, image_size: int | None = None) -> keras.Model:
        """The conv base with average pooling, ``weights`` a file path or None (random, for tests)."""
        import keras

        size = self.check_size(image_size or self.input_size)
        make = getattr(keras.applications, self.constructor)
        return make(weights=weights, include_top=False, input_shape=(size, size, 3), pooling="avg",
                    **dict(self.build_kwargs))


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(name="vgg16", constructor="VGG16", input_size=224, embedding_dim=512, preprocess=CAFFE,
                 keras_dir="vgg16", keras_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 keras_hash="6d6bbae143d832006294945121d1f1fc"),
        Backbone(name="xception", constructor="Xception", input_size=299, embedding_dim=2048, preprocess=TF,
                 keras_dir="xception", keras_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 keras_hash="b0042744bf5b25fce3cb969f33bebb97", min_size=71),
        Backbone(name="mobilenetv2", constructor="MobileNetV2", input_size=224, embedding_dim=1280, preprocess=TF,
                 keras_dir="mobilenet_v2",
                 keras_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                 keras_hash=None),  # Keras itself checks no hash for this file
        Backbone(name="efficientnetv2s", constructor="EfficientNetV2S", input_size=384, embedding_dim=1280,
                 preprocess=Preprocess(scale=1 / 128, mean=(1.0, 1.0, 1.0), in_model=True),
                 keras_dir="efficientnet_v2", keras_file="efficientnetv2-s_notop.h5",
                 keras_hash="af0682fb74e8c54910f2d4393339c070", build_kwargs=(("include_preprocessing", True),)),
        Backbone(name="convnext_tiny", constructor="ConvNeXtTiny", input_size=224, embedding_dim=768,
                 preprocess=Preprocess(scale=1 / 255, mean=TORCH_IMAGENET.mean, std=TORCH_IMAGENET.std,
                                       in_model=True),
                 keras_dir="convnext", keras_file="convnext_tiny_notop.h5",
                 keras_hash="d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
                 build_kwargs=(("include_preprocessing", True),)),
    )
}


DEFAULT_BACKBONE = "xception"  # what featurize, fit, e2e and ImageEmbedder use unless told
COMPARED_BACKBONES = "vgg16,xception"  # what `cli run` featurizes and fits, each alone and joined


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name``, or an error that lists the choices."""
    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise ClothprobeError(
            f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}, onnx:PATH or keras:PATH"
        ) from None
