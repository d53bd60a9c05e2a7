"""Stage 1: run a frozen ImageNet conv base once over an image folder and cache pooled embeddings."""

from clothprobe.lazy import lazy_attributes

_WHERE = {"BACKBONES": "backbones", "Backbone": "backbones", "get_backbone": "backbones",
          "FeatureCache": "cache", "SplitFeatures": "cache", "load_features": "cache",
          "FeaturizeResult": "run", "featurize": "run", "ImageEmbedder": "transformer", "Recipe": "recipe",
          "resolve_recipe": "recipe"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
