"""The backbone registry: one small frozen record per ImageNet conv base.

Adding a keras.applications model is one entry in ``BACKBONES``. Everything that depends on the backbone
(input size, preprocessing, embedding size, where its ImageNet weights come from) lives in its record, so
no other module branches on a backbone's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clothprobe.errors import ClothprobeError

if TYPE_CHECKING:
    import keras

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """A frozen ImageNet conv base with global average pooling, as clothprobe uses it.

    ``constructor`` names a ``keras.applications`` function; ``module`` the submodule whose
    ``preprocess_input`` the base was trained with. ``preprocessing`` is that function's mode, recorded in
    every cache so that a change of preprocessing invalidates it. ``keras_file``/``keras_md5`` are the
    no-top ImageNet file Keras downloads and the hash it checks; ``offline_file`` is the name a team's
    offline weights directory uses (as ``offline_weights.py`` writes it).
    """

    name: str
    constructor: str
    module: str
    input_size: int
    embedding_dim: int
    preprocessing: str
    keras_file: str
    keras_md5: str | None
    min_size: int = 32

    @property
    def offline_file(self) -> str:
        return f"{self.name}_notop.weights.h5"

    @property
    def weights_url(self) -> str:
        return f"{KERAS_WEIGHTS_URL}{self.module}/{self.keras_file}"

    def build(self, weights: str | None, image_size: int | None = None) -> keras.Model:
        """The conv base with average pooling, ``weights`` a file path or None (random, for tests)."""
        import keras

        size = image_size or self.input_size
        if size < self.min_size:
            raise ClothprobeError(
                f"Image size {size} is too small for backbone '{self.name}'; use at least {self.min_size}."
            )
        make = getattr(keras.applications, self.constructor)
        return make(weights=weights, include_top=False, input_shape=(size, size, 3), pooling="avg")

    def preprocess_fn(self) -> Callable[[Any], Any]:
        """The function mapping float RGB pixels in [0, 255] to what the base was trained on."""
        return importlib.import_module(f"keras.applications.{self.module}").preprocess_input


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            name="vgg16",
            constructor="VGG16",
            module="vgg16",
            input_size=224,
            embedding_dim=512,
            preprocessing="caffe",
            keras_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            keras_md5="6d6bbae143d832006294945121d1f1fc",
        ),
        Backbone(
            name="xception",
            constructor="Xception",
            module="xception",
            input_size=299,
            embedding_dim=2048,
            preprocessing="tf",
            keras_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            keras_md5="b0042744bf5b25fce3cb969f33bebb97",
            min_size=71,
        ),
        Backbone(
            name="mobilenetv2",
            constructor="MobileNetV2",
            module="mobilenet_v2",
            input_size=224,
            embedding_dim=1280,
            preprocessing="tf",
            keras_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            keras_md5=None,  # Keras itself checks no hash for this file
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name``, or an error that lists the choices."""
    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise ClothprobeError(
            f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}"
        ) from None
