"""Run a producer ahead of its consumer: the items of an iterator, made in a thread of their own."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items``, produced in a thread of their own up to ``depth`` items ahead of the consumer, in order.

    The consumer's work (writing each item to disk, say) then overlaps the producer's (decoding and running a
    network, which release the GIL). An error in the producer is raised in the consumer, at the item where it
    happened; a consumer that stops early (``close``, an error of its own) stops the producer at its next item.
    """
    box: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failed(err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="clothprobe-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item = box.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()
