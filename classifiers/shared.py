"""Work that several fits of one search need, done once: a thread-safe memo of deterministic results.

A head's search fits every grid entry on every candidate tap set for every balance mode asked for. Much of
that is the same work: the rows held out for early stopping, the scaler fitted on the training rows and the
rows it scales, LightGBM's binned rows (the same for ``none`` and ``weights``, which only weight the rows
differently). ``SharedWork.get(key, make)`` computes ``make()`` once per key and hands every caller the same
result; results are read-only by contract. Each is a pure function of its key (the rows, the seed), so a
fit gives the same model whether its balance mode is fitted alone or beside the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any


class _Entry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False
        self.value: Any = None


class SharedWork:
    """Results by key, each computed once (``get``); a second caller of a key being computed waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}

    def get(self, key: Hashable | None, make: Callable[[], Any]) -> Any:
        """``make()``'s result for ``key``, computed now or earlier; ``key`` None: computed now, not kept."""
        if key is None:
            return make()
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
        with entry.lock:
            if not entry.done:
                entry.value, entry.done = make(), True
        return entry.value


class Cores:
    """The cores that searches side by side share: each step holds the cores it runs on (``hold``: a fit one,
    LightGBM's binning as many threads as it is given) while it runs, so the steps of several searches never
    ask for more threads than there are cores. A step holds its cores only while it computes, never while it
    waits for another's result (``SharedWork.get``), so no two steps wait for each other."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._free = threading.Semaphore(n)
        self._taking = threading.Lock()  # one step takes its cores at a time: two never hold half each

    @contextmanager
    def hold(self, k: int = 1) -> Iterator[None]:
        k = max(1, min(k, self.n))
        with self._taking:
            for _ in range(k):
                self._free.acquire()
        try:
            yield
        finally:
            for _ in range(k):
                self._free.release()


def holding(cores: Cores | None, k: int = 1) -> AbstractContextManager:
    """``cores.hold(k)``, or nothing to hold when the steps do not share cores (``cores`` None)."""
    return nullcontext() if cores is None else cores.hold(k)
