"""Seeded Keras training that leaves the caller's random state as it found it.

Keras seeds weight initialisation, dropout and shuffling from process-wide generators (Python's ``random``,
NumPy's global generator, TensorFlow's global seed and Keras's own seed generator); its only switch is
``keras.utils.set_random_seed``. ``keras_seeded(seed)`` sets them for a block of clothprobe's work and puts
every one of them back afterwards, so a notebook or a Ray worker that imports clothprobe keeps its own.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def keras_seeded(seed: int) -> Iterator[None]:
    import keras
    from keras.src.backend.common import global_state
    from tensorflow.python.eager import context

    py_state, np_state = random.getstate(), np.random.get_state()
    tf_seed = context.global_seed()
    generator = global_state.get_global_attribute("global_seed_generator")
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        import tensorflow as tf

        random.setstate(py_state)
        np.random.set_state(np_state)
        tf.random.set_seed(tf_seed)
        global_state.set_global_attribute("global_seed_generator", generator)
