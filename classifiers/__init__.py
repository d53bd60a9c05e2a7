"""Stage 2: classical heads (logistic regression, LightGBM, a small dense head) on cached embeddings."""

from clothprobe.classifiers.data import FeatureSet, load_feature_set
from clothprobe.classifiers.fit import FitResult, fit
from clothprobe.classifiers.modelio import LoadedModel, load_model
from clothprobe.classifiers.registry import BALANCES, CLASSIFIERS, ClassifierSpec, get_classifier

__all__ = ["BALANCES", "CLASSIFIERS", "ClassifierSpec", "FeatureSet", "FitResult", "LoadedModel", "fit",
           "get_classifier", "load_feature_set", "load_model"]
