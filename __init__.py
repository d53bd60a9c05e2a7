"""clothprobe: classify clothing photos from frozen CNN embeddings.

The heavy libraries (TensorFlow, LightGBM) are imported lazily, inside the functions that need them,
so that `cli --help` and a fully cached `cli featurize` start in a fraction of a second.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202 - lazy, so `import clothprobe` stays light
    if name == "load_run":
        from clothprobe.estimator import load_run

        return load_run
    raise AttributeError(f"module 'clothprobe' has no attribute {name!r}")
