"""What the ``cli`` application sets up for its own process, and only there: the library never changes
environment variables, file descriptors or warning filters behind its caller's back, an application may.

- TensorFlow start-up chatter: ``TF_CPP_MIN_LOG_LEVEL=3`` silences its C++ logging once initialised, but
  absl prints a few lines straight to file descriptor 2 while ``import tensorflow`` runs (CUDA probing,
  oneDNN notes). An import hook silences descriptor 2 for exactly that import, then turns TensorFlow's
  Python logger (tf.function retracing warnings) down to errors. ``cli --verbose`` skips all of this.
- ``ClothprobeWarning``s are printed as one line each.
- Joining a Ray cluster (``--address``): Ray 2.59+ starts ``ray start --head`` clusters with token
  authentication, and a client connects only with ``RAY_AUTH_MODE=token`` set. When the user has not chosen
  a mode and a token is at hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, where
  ``ray start`` and ``ray get-auth-token`` keep it), the cli sets token mode for its own process: a token
  client also joins a cluster without authentication (docs/guide/ray-auth.md). Ray's own wait for the
  cluster (``RAY_gcs_server_port_wait_time_s``, about 20 one-second tries, each logging a line) is set to
  ``RAY_JOIN_WAIT_S`` unless the user set it: something that answers but is not a Ray cluster fails in
  seconds (a closed port or a dead host fails before Ray is asked: ``featurize/engines/ray.probe_address``).
- ``--max-pixels`` governs alone: Pillow's own process-wide bomb guard is raised to it (clothprobe's check
  reads the header and refuses larger images with a reason), and Pillow's warning below it is not shown.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

from clothprobe.errors import ClothprobeWarning

RAY_JOIN_WAIT_S = 3  # seconds (tries) Ray waits for a cluster's GCS when the cli joins one


class _QuietTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``tensorflow`` with the normal machinery and runs its import with descriptor 2 silenced."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 - the importlib protocol
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        self._real = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return self._real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            self._real.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        module.get_logger().setLevel("ERROR")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up lines and retracing warnings away from users (before it is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def one_line_warnings(print_line: Callable[[str], None]) -> None:
    """Show ``ClothprobeWarning``s as ``warning: <message>``; leave every other warning as Python shows it."""
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if issubclass(category, ClothprobeWarning):
            print_line(str(message))
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


def ray_join_settings() -> None:
    """Before joining a Ray cluster: token mode when the user chose no mode and has a token, and Ray's wait
    for the cluster's GCS bounded (see above); a value the user set is kept."""
    from pathlib import Path

    has_token = (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                 or (Path.home() / ".ray" / "auth_token").is_file())
    if has_token and not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(RAY_JOIN_WAIT_S))


def govern_pixels(max_pixels: int) -> None:
    """Let ``--max-pixels`` be the only limit on image size in this process."""
    from PIL import Image

    from clothprobe.featurize.images import allow_pixels

    allow_pixels(max_pixels)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
