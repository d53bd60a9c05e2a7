"""How an embedding is made: the recipe (``recipe.py``), the backbone registry (``backbones.py``), weights
(``weights.py``), a user's own model (``sidecar.py``), export and runtimes (``runtimes.py``), the compiled-model
store (``store.py``), the reduced-precision self-check (``selfcheck.py``) and int8 calibration photos
(``calibration.py``)."""
