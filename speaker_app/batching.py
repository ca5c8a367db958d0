"""Dynamic batching: requests that wait for the model while it is busy run together as one batch.

Threads call `batcher(item)` and get their own result back. Whichever waiting thread gets the
model next takes every request queued so far (up to `max_batch`) and runs them in one call; the
others find their results ready. No thread is started and no request waits for a timer: alone,
a request runs at once; under load, batches form from the queue that builds while the model is
busy, so the model runs fewer, larger forwards instead of one per request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


class _Job:
    __slots__ = ("item", "result", "error", "done")

    def __init__(self, item):
        self.item, self.result, self.error, self.done = item, None, None, False


class Batcher:
    """`run(items) -> results` (same length and order) called on queued items, one batch at a time."""

    def __init__(self, run: Callable[[list], Sequence], max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run = run
        self.max_batch = max_batch
        self.lock = threading.Lock()  # held while the model runs; anything else using the model takes it too
        self._queue: list[_Job] = []
        self._queue_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # of the last 1000 batches, for tests and benchmarks

    def __call__(self, item) -> Any:
        job = _Job(item)
        with self._queue_lock:
            self._queue.append(job)
        while not job.done:
            with self.lock:
                if job.done:  # another thread ran it while this one waited for the model
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                self._run(batch)
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self, batch: list[_Job]) -> None:
        try:
            results = self.run([job.item for job in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except BaseException as error:  # every request of the batch learns of it; the next batch runs
            for job in batch:
                job.error, job.done = error, True
        else:
            for job, result in zip(batch, results):
                job.result, job.done = result, True
        self.batch_sizes = self.batch_sizes[-999:] + [len(batch)]
