"""The HDF5 embedding cache: ``schema.py`` (what a cache file is, its header, integrity checks, whose file
it is), ``read.py`` (``load_features``, reuse by an incremental update), ``write.py`` (locked, atomic
writes) and ``export.py`` (Arrow, pandas, Parquet)."""

from clothprobe._util.lazy import lazy_attributes

_WHERE = {"FeatureCache": "read", "SplitFeatures": "read", "load_features": "read", "CacheInfo": "schema",
          "CacheHeader": "schema", "default_path": "schema", "write_arrays": "write"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
