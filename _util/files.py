"""Small file helpers shared by the weights fingerprint, the caches, the model store and the run directories."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine (to tell a killed run's leftovers from a live
    one's). psutil, because ``os.kill(pid, 0)`` terminates the process on Windows."""
    import psutil

    return psutil.pid_exists(pid)


def stale_by_pid(name: str) -> bool:
    """True for a leftover named ``...-<pid>`` (``.run.tmp-123``) whose process is gone."""
    pid = name.rsplit("-", 1)[-1]
    return pid.isdigit() and not pid_alive(int(pid))
