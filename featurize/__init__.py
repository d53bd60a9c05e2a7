"""Stage 1: run a frozen ImageNet conv base once over an image folder and cache pooled embeddings.

Rooms: ``model/`` (how an embedding is made: recipe, backbones, weights, sidecar, runtimes, the model store,
the runtime self-check, int8 calibration), ``cache/`` (the HDF5 cache: schema, read, write, export),
``engines/`` (plan, local engine, merge, Ray); ``pipeline.py`` is ``featurize()``, the entry point;
``dataset.py``/``images.py`` find and decode photos (``table.py``: from a labels table, ``splits.py``: its
splits), ``embed.py`` runs a model over files,
``transformer.py`` is the scikit-learn ``ImageEmbedder``.
"""

from clothprobe._util.lazy import lazy_attributes

_WHERE = {"BACKBONES": "model.backbones", "Backbone": "model.backbones", "get_backbone": "model.backbones",
          "FeatureCache": "cache.read", "SplitFeatures": "cache.read", "load_features": "cache.read",
          "FeaturizeResult": "pipeline", "featurize": "pipeline", "ImageEmbedder": "transformer",
          "Recipe": "model.recipe", "resolve_recipe": "model.recipe"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
