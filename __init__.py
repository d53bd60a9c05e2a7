"""clothprobe: classify clothing photos from frozen CNN embeddings.

Every package imports lazily (``clothprobe._util.lazy``), and the heavy libraries (TensorFlow, LightGBM,
scikit-learn) only inside the functions that need them, so that `cli --help`, a fully cached
`cli featurize` and `cli predict` start fast.
"""

from clothprobe._util.lazy import lazy_attributes

__version__ = "0.1.0"

_WHERE = {"load_run": "runs.estimator", "ImageEmbedder": "featurize.transformer"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
