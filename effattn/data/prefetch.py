"""Generates the next batches on a background thread while the device runs the current step."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor


class Prefetcher:
    """Yields stream.batch(start), stream.batch(start + 1), ... computed `depth` steps ahead.

    Batches depend only on their step, so prefetching changes no result; generation (numpy, e.g.
    ListOps' rejection sampling) overlaps with XLA's compute, which releases the GIL.
    """

    def __init__(self, stream, start: int, depth: int = 2):
        self._stream = stream
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='effattn-data')
        self._next = start
        self._queue = collections.deque()
        for _ in range(depth):
            self._submit()

    def _submit(self) -> None:
        self._queue.append(self._pool.submit(self._stream.batch, self._next))
        self._next += 1

    def next(self) -> dict:
        batch = self._queue.popleft().result()
        self._submit()
        return batch

    def close(self) -> None:
        for f in self._queue:
            f.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
