"""Benchmarks that put two versions of clothprobe side by side in one run: a git revision (the baseline) and
this working tree, each imported in a child process of its own, so one command gives before and after
under the same load. Also the CPU line every result file names, and exclusive timing of named steps."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TREE = "this tree"


def cpu_line() -> str:
    """``lscpu``'s model name, family, the cores this process may use and the SIMD flags that matter here."""
    info = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    field = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in info.splitlines() if ":" in ln}
    flags = field.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                          "amx_bf16", "amx_int8") if f in flags]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{field.get('Model name', '?')} (CPU family {field.get('CPU family', '?')}, model "
            f"{field.get('Model', '?')}), {cores} cores, flags: {' '.join(wanted)}")


def child_options(p: argparse.ArgumentParser) -> None:
    """The hidden options a version's child process is started with: ``--child``, its ``--work`` folder and the
    JSON file for its ``--result``."""
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def code_folder(revision: str | None, parent: Path) -> Path:
    """A folder for PYTHONPATH in which ``import clothprobe`` imports ``revision`` (``git archive`` of it), or
    this working tree for None."""
    folder = parent / (revision or "tree").replace("/", "_")
    folder.mkdir(parents=True)
    package = folder / "clothprobe"
    if revision is None:
        package.symlink_to(ROOT)
        return folder
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(package, filter="data")
    return folder


def short_revision(revision: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", revision], capture_output=True,
                          text=True, check=True).stdout.strip()


def run_child(script: Path, args: list[str], code: Path, result: Path, env: dict[str, str] | None = None) -> dict:
    """``script args`` in a fresh interpreter importing clothprobe from ``code``; it writes its JSON to
    ``result``. Its output goes to this process's stderr as it comes (progress), its failure ends the run."""
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, str(script), *args], env=environment, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        sys.exit(f"{script.name} {' '.join(args)} failed (exit {done.returncode}) with the code in {code}")
    return json.loads(result.read_text())


class StepTimer:
    """Exclusive wall and CPU seconds (every thread of the process) of named steps: each wrapped function's
    time, less the time of wrapped steps it calls. CPU seconds stand for what a step costs on a machine
    other work also loads. ``wrap`` replaces a function wherever clothprobe's modules imported it (a
    benchmark's own instrument: it only runs in the benchmark's child process, on its main thread)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []  # wall and CPU seconds of the wrapped steps inside each open one

    def _timed(self, label: str, call: Callable[[], Any]) -> Any:
        self._stack.append([0.0, 0.0])
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return call()
        finally:
            took, took_cpu = time.perf_counter() - started, time.process_time() - cpu
            inner, inner_cpu = self._stack.pop()
            self.seconds[label] = self.seconds.get(label, 0.0) + took - inner
            self.cpu[label] = self.cpu.get(label, 0.0) + took_cpu - inner_cpu
            self.calls[label] = self.calls.get(label, 0) + 1
            if self._stack:
                self._stack[-1][0] += took
                self._stack[-1][1] += took_cpu

    def wrap(self, module: str, name: str, label: str, generator: bool = False) -> bool:
        """Time ``module.name`` (``Class.method`` for a method) under ``label``; False when this version of
        clothprobe has no such function. ``generator``: time each item it yields, not the consumer's work."""
        import importlib

        try:
            owner: Any = importlib.import_module(module)
        except ImportError:
            return False
        *path, attr = name.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        original = getattr(owner, attr, None) if owner is not None else None
        if original is None:
            return False
        timer = self

        if generator:
            def wrapper(*a: Any, **k: Any) -> Any:
                items = original(*a, **k)
                while True:
                    try:
                        yield timer._timed(label, lambda: next(items))
                    except StopIteration:
                        return
        else:
            def wrapper(*a: Any, **k: Any) -> Any:
                return timer._timed(label, lambda: original(*a, **k))

        setattr(owner, attr, wrapper)
        if not path:  # a function: also where other modules imported it by name
            for mod in list(sys.modules.values()):
                if getattr(mod, "__name__", "").startswith("clothprobe") and getattr(mod, attr, None) is original:
                    setattr(mod, attr, wrapper)
        return True
