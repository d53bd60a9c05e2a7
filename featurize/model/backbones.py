"""The backbone registry: one frozen record per keras.applications conv base, as data (like timm's
pretrained configs): constructor, input size, preprocessing as numbers, and the published no-top weights
file with the hash Keras checks. Adding a keras.applications model is one entry in ``BACKBONES``.

Backbones outside the registry (``onnx:PATH``, ``keras:PATH``) are described by a sidecar file next to
the model instead: see ``featurize/model/sidecar.py``. Nothing else in clothprobe branches on a backbone's name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.taps import Tap

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
        numbers = (self.scale, *self.mean, *self.std)
        if not all(math.isfinite(v) for v in numbers) or self.scale == 0:
            raise ClothprobeError(f"scale, mean and std must be finite (scale non-zero); got scale {self.scale}, "
                                  f"mean {self.mean}, std {self.std}.")

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
    taps: tuple[Tap, ...] = ()  # pooled-output layers in network order, the final one last (featurize/model/taps.py)

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


def _taps(*spec: tuple[str, str, int] | tuple[str, int]) -> tuple[Tap, ...]:
    """``(name, dim)`` for a layer called ``name``, ``(name, locator, dim)`` otherwise."""
    return tuple(Tap(s[0], s[0], s[1]) if len(s) == 2 else Tap(*s) for s in spec)


# Xception's residual additions are named by Keras's session counter (add, add_1...): located by order.
XCEPTION_TAPS = _taps(("block2_out", "#Add:0", 128), ("block3_out", "#Add:1", 256),
                      *((f"block{b}_out", f"#Add:{b - 2}", 728) for b in range(4, 13)), ("block13_out", "#Add:11", 1024),
                      ("block14_sepconv1_act", 1536), ("block14_sepconv2_act", 2048))
VGG16_TAPS = _taps(("block3_pool", 256), ("block4_conv3", 512), ("block4_pool", 512), ("block5_conv3", 512),
                   ("block5_pool", 512))
MOBILENETV2_TAPS = _taps(("block_2_add", 24), ("block_5_add", 32), ("block_9_add", 64), ("block_12_add", 96),
                         ("block_15_add", 160), ("block_16_project_BN", 320), ("out_relu", 1280))
EFFICIENTNETV2S_TAPS = _taps(("block1b_add", 24), ("block2d_add", 48), ("block3d_add", 64), ("block4f_add", 128),
                             ("block5i_add", 160), ("block6o_add", 256), ("top_activation", 1280))
# ConvNeXt pools, then normalises (its head's LayerNormalization, the model's last layer): that is its final tap.
CONVNEXT_TINY_TAPS = _taps(*((f"stage{s}_out", f"convnext_tiny_stage_{s}_block_{b}_identity", d)
                             for s, b, d in ((0, 2, 96), (1, 2, 192), (2, 8, 384))),
                           ("head_norm", "#LayerNormalization:-1", 768))


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(name="vgg16", constructor="VGG16", input_size=224, embedding_dim=512, preprocess=CAFFE,
                 keras_dir="vgg16", keras_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 keras_hash="6d6bbae143d832006294945121d1f1fc", taps=VGG16_TAPS),
        Backbone(name="xception", constructor="Xception", input_size=299, embedding_dim=2048, preprocess=TF,
                 keras_dir="xception", keras_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 keras_hash="b0042744bf5b25fce3cb969f33bebb97", min_size=71, taps=XCEPTION_TAPS),
        Backbone(name="mobilenetv2", constructor="MobileNetV2", input_size=224, embedding_dim=1280, preprocess=TF,
                 keras_dir="mobilenet_v2",
                 keras_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                 keras_hash=None, taps=MOBILENETV2_TAPS),  # Keras itself checks no hash for this file
        Backbone(name="efficientnetv2s", constructor="EfficientNetV2S", input_size=384, embedding_dim=1280,
                 preprocess=Preprocess(scale=1 / 128, mean=(1.0, 1.0, 1.0), in_model=True),
                 keras_dir="efficientnet_v2", keras_file="efficientnetv2-s_notop.h5",
                 keras_hash="af0682fb74e8c54910f2d4393339c070", build_kwargs=(("include_preprocessing", True),),
                 taps=EFFICIENTNETV2S_TAPS),
        Backbone(name="convnext_tiny", constructor="ConvNeXtTiny", input_size=224, embedding_dim=768,
                 preprocess=Preprocess(scale=1 / 255, mean=TORCH_IMAGENET.mean, std=TORCH_IMAGENET.std,
                                       in_model=True),
                 keras_dir="convnext", keras_file="convnext_tiny_notop.h5",
                 keras_hash="d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
                 build_kwargs=(("include_preprocessing", True),), taps=CONVNEXT_TINY_TAPS),
    )
}


DEFAULT_BACKBONE = "xception"  # what featurize, fit, e2e and ImageEmbedder use unless told
RUN_BACKBONES = "xception"  # what `cli run` featurizes (every tap) and fits; `--backbones vgg16,xception` adds VGG16 and the join


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name``, or an error that lists the choices."""
    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise ClothprobeError(
            f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}, onnx:PATH or keras:PATH"
        ) from None
