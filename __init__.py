"""clothprobe: classify clothing photos from frozen CNN embeddings.

The heavy libraries (TensorFlow, LightGBM) are imported lazily, inside the functions that need them,
so that `cli --help` and a fully cached `cli featurize` start in a fraction of a second.
"""

import os

# Idle OpenMP threads that spin made LightGBM several times slower on 2 busy cores. The OpenMP runtime
# reads this once, when the first library using it loads, so it is set before anything else is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
