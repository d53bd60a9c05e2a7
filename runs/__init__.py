"""A finished run: its directory (``directory.py``: manifest, metrics, predictions, atomic replace),
predictions with it (``predicting.py``: ``predict``, ``Predictor``, batch scoring) and a run as a
scikit-learn classifier over image paths (``estimator.py``: ``load_run``); photos to label next
(``ranking.py``: ``suggest``)."""

from clothprobe._util.lazy import lazy_attributes

_WHERE = {"predict": "predicting", "Predictor": "predicting", "PredictResult": "predicting",
          "score_catalogue": "predicting", "load_run": "estimator", "RunClassifier": "estimator", "suggest": "ranking"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
