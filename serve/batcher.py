"""Micro-batching: images from concurrent requests run through the one model together.

Requests put their decoded images in a bounded queue (``QueueFull`` beyond ``max_queue``: the server answers
503 rather than grow). One collector task takes up to ``max_batch`` of them and runs the model in a single
worker thread, so one onnxruntime session runs one batch at a time on every thread it was given, while the
event loop goes on receiving and decoding the next requests. A batch does not wait for a fixed window: the
first image waits at most ``window_s`` for others, and only while more requests are arriving (being received
or decoded), so a lone client pays no window at all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


class QueueFull(Exception):
    """More images wait for the model than the server holds; the message says how many."""


class MicroBatcher:
    """``run(images) -> rows``: the model on a stacked ``(n, ...)`` batch, one result row per image."""

    def __init__(self, run: Callable[[np.ndarray], Sequence[Any]], *, max_batch: int, window_s: float,
                 max_queue: int) -> None:
        self.run, self.max_batch, self.window_s, self.max_queue = run, max_batch, window_s, max_queue
        self._queue: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self._changed: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self.arriving = 0  # requests on their way to submit (receiving or decoding)
        self.batches = 0
        self.images = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        self._changed = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="clothprobe-model")
        self._task = asyncio.create_task(self._collect_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving_request(self) -> Iterator[None]:
        """Count a request as on its way while its body is received and decoded."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._changed.set()

    async def submit(self, images: Sequence[np.ndarray]) -> list[Any]:
        """The model's rows for ``images``, in order; ``QueueFull`` when they do not fit in the queue."""
        if len(self._queue) + len(images) > self.max_queue:
            raise QueueFull(f"{len(self._queue)} images are waiting for the model (at most {self.max_queue}); "
                            f"try again in a moment")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        self._queue.extend(zip(images, futures, strict=True))
        self._changed.set()
        try:
            return list(await asyncio.gather(*futures))
        finally:  # a client gone: its images still queued are left out of the next batch
            for future in futures:
                future.cancel()

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            try:
                rows = await loop.run_in_executor(self._executor, self.run, np.stack([im for im, _ in batch]))
            except Exception as err:  # noqa: BLE001 - handed to each waiting request, which answers 500
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            for (_, future), row in zip(batch, rows, strict=True):
                if not future.done():
                    future.set_result(row)

    def _take(self, batch: list) -> None:
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if not item[1].done():  # cancelled: its client is gone
                batch.append(item)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[tuple[np.ndarray, asyncio.Future]]:
        """Up to ``max_batch`` queued images: whatever is queued, plus, while requests are still arriving,
        whatever comes within ``window_s`` of the first."""
        batch: list[tuple[np.ndarray, asyncio.Future]] = []
        while not batch:
            self._changed.clear()
            self._take(batch)
            if not batch:
                await self._changed.wait()
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch and self.arriving and loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            self._take(batch)
        return batch
