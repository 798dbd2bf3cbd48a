"""Batching of concurrent jobs, one worker thread per model.

Requests queue up; the worker takes everything waiting (up to max_batch)
and runs it through the engine's run_many in one stacked pass. No request
ever waits for a batch to fill: under light load a batch is one job (the
latency of a single run), under load the jobs that arrived while the
previous batch ran go together, which raises throughput (the weights are
read once per step for the whole batch). run_many is bit for bit the same
as one job at a time, so batching never changes an output bit."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable


class Batcher:
    def __init__(self, run_many: Callable[[list], list], max_batch: int = 8, name: str = "batcher",
                 on_batch: Callable[[int], None] | None = None):
        self.run_many = run_many
        self.max_batch = max(1, max_batch)
        self.on_batch = on_batch
        self._q: queue.Queue = queue.Queue()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job) -> Future:
        fut: Future = Future()
        if self._stop:
            fut.set_exception(RuntimeError("batcher stopped"))
            return fut
        self._q.put((job, fut))
        return fut

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop."""
        self._stop = True
        self._q.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            items = [item]
            while len(items) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)  # stop after this batch
                    break
                items.append(nxt)
            if self.on_batch:
                self.on_batch(len(items))
            try:
                results = self.run_many([job for job, _ in items])
            except Exception as exc:  # noqa: BLE001 - the whole batch failed
                results = [exc] * len(items)
            for (_, fut), result in zip(items, results):
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
