"""Calls run side by side, at most ``n`` at a time: a flush's partitions saved together (see Pipeline._save).

An object store answers each request in 10-50 ms; saving 32 partitions one after another, 3-4 requests each,
spends a flush waiting. Each call here is one partition's whole sequence (its own steps stay in order); the
calls of different partitions overlap. The pool's threads only do lake I/O: the Kafka consumer is touched by
the thread that owns it, after every call ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Lanes:
    def __init__(self, n: int, name: str = "kingest-save") -> None:
        self.n = max(1, n)
        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix=name) if self.n > 1 else None

    def map(self, call: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``call(item)`` for every item, side by side; the results in the items' order. Returns, or raises the
        first error (in the items' order), only once every call has ended: nothing is still writing when the
        caller goes on."""
        items = list(items)
        if self._pool is None or len(items) <= 1:
            return [call(item) for item in items]
        futures = [self._pool.submit(call, item) for item in items]
        wait(futures)
        return [f.result() for f in futures]

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
