"""``cli serve``: an exported run (``cli export``'s ONNX file) over HTTP, with onnxruntime and without TensorFlow.

Rooms: ``server.py`` (``serve()``, the entry point: local uvicorn or Ray Serve), ``exports.py`` (what file to
serve: an exported file, or a run exported once into the model store's home), ``model.py`` (the file in one
onnxruntime session, checked against ``export/contract.py``), ``app.py`` (the Starlette application and its
endpoints), ``batcher.py`` (micro-batching concurrent requests), ``decode.py`` (uploads read within limits and
decoded by featurize's decoder), ``page.py`` (the page at ``/``), ``settings.py`` (the limits), ``ray.py``
(replicas on a Ray cluster). Needs the ``serve`` extra: ``pip install "clothprobe[serve]"``.
"""

from clothprobe._util.lazy import lazy_attributes

_WHERE = {"serve": "server", "ServeSettings": "settings", "create_app": "app", "OnnxModel": "model",
          "model_file": "exports"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
