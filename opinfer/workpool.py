"""Background work on a few threads, earliest deadline first.

The services must never block their loop on a long computation (building a
dispute trace, re-executing a suspect node's backlog): a game's clock or a
batch's window runs while they wait. They hand such work to a DeadlinePool,
keyed so that asking twice queues it once, and poll for the result; the
workers always take the job whose deadline comes first (a game whose clock
ends sooner, a leaf whose window closes sooner).

Threads, not processes: the work is numpy and hashing (numpy's kernels
release the GIL), the results are large objects the loop then uses, and a
service's models are loaded once. `workers=0` runs each job inline when it
is submitted (deterministic tests, or a machine with one core to spare)."""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import Any, Callable, Hashable

_PENDING = object()


class DeadlinePool:
    def __init__(self, workers: int, name: str = "work"):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers, self.name = workers, name
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []
        self._queued: dict[Hashable, tuple[float, Callable[[], Any]]] = {}
        self._running: set[Hashable] = set()
        self._done: dict[Hashable, tuple[bool, Any]] = {}
        self._seq = itertools.count()
        self._completed = 0
        self._stopped = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ submitting and collecting

    def submit(self, key: Hashable, deadline: float, fn: Callable[[], Any], keep: bool = True) -> None:
        """Queue `fn` under `key` unless it is queued, running or done; an earlier
        deadline for a queued key moves it up. keep=False: nobody takes the result
        (fire and forget; `fn` reports its own errors), so the key is free again
        once it has run."""
        if not keep:
            fn = _Forget(fn)
        if self.workers == 0:
            if key not in self._done:
                result = _call(fn)
                if keep:
                    self._done[key] = result
                self._completed += 1
            return
        with self._cv:
            if key in self._running or key in self._done:
                return
            if key in self._queued:
                if deadline >= self._queued[key][0]:
                    return
                fn = self._queued[key][1]
            self._queued[key] = (deadline, fn)
            heapq.heappush(self._heap, (deadline, next(self._seq), key))  # a stale entry is skipped when popped
            self._start()
            self._cv.notify()

    def take(self, key: Hashable) -> Any:
        """The result of `key` (forgotten once taken), `PENDING` while queued or
        running, KeyError when never submitted; a job that raised re-raises here
        (once: submit it again to retry)."""
        with self._cv:
            if key in self._done:
                ok, value = self._done.pop(key)
                if ok:
                    return value
                raise value
            if key in self._queued or key in self._running:
                return _PENDING
        raise KeyError(key)

    def busy(self, key: Hashable) -> bool:
        with self._cv:
            return key in self._queued or key in self._running or key in self._done

    def forget(self, key: Hashable) -> None:
        """Drop a queued job or a finished result (a running job finishes, unread)."""
        with self._cv:
            self._queued.pop(key, None)
            self._done.pop(key, None)

    @property
    def queued(self) -> int:
        with self._cv:
            return len(self._queued) + len(self._running)

    def wait(self, timeout: float, since: int | None = None) -> int:
        """Block until a job completes after `since` (a `completed` count), or
        until `timeout` s pass, or at once when nothing is queued or running.
        Returns the completed count."""
        with self._cv:
            start = self._completed if since is None else since
            self._cv.wait_for(lambda: self._completed != start or not (self._queued or self._running), timeout)
            return self._completed

    @property
    def completed(self) -> int:
        return self._completed

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._queued.clear()
            self._cv.notify_all()

    # ------------------------------------------------------------ workers

    def _start(self) -> None:
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stopped or self._heap)
                if self._stopped:
                    return
                _, _, key = heapq.heappop(self._heap)
                job = self._queued.pop(key, None)
                if job is None:
                    continue  # a stale heap entry (moved up or forgotten)
                self._running.add(key)
            result = _call(job[1])
            with self._cv:
                self._running.discard(key)
                if not isinstance(job[1], _Forget):
                    self._done[key] = result
                self._completed += 1
                self._cv.notify_all()


PENDING = _PENDING


class _Forget:
    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn

    def __call__(self) -> Any:
        return self.fn()


def _call(fn: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
        return False, exc
