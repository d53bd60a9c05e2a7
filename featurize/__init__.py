"""Stage 1: run a frozen ImageNet conv base once over an image folder and cache pooled embeddings."""

from clothprobe.featurize.backbones import BACKBONES, Backbone, get_backbone
from clothprobe.featurize.cache import FeatureCache, SplitFeatures, load_features
from clothprobe.featurize.run import FeaturizeResult, featurize

__all__ = ["BACKBONES", "Backbone", "FeatureCache", "FeaturizeResult", "SplitFeatures", "featurize",
           "get_backbone", "load_features"]
