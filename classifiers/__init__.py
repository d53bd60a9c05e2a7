"""Stage 2: classical heads (logistic regression, LightGBM, a small dense head) on cached embeddings."""

from clothprobe._util.lazy import lazy_attributes

_WHERE = {"FeatureSet": "data", "load_feature_set": "data", "FitResult": "fitting", "fit": "fitting",
          "LoadedModel": "modelio", "load_model": "modelio", "BALANCES": "registry", "CLASSIFIERS": "registry",
          "ClassifierSpec": "registry", "get_classifier": "registry"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
