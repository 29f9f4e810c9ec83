"""A process pool that exists only while it has work: started on the first task, shut down
once no task has been in flight for `idle` seconds.

Why: the pool is needed for a cold load or an upload's encryption, seconds or minutes now and
then, but its processes (NumPy, SQLAlchemy, OpenSSL, their heaps after a decode) stayed
resident for the server's lifetime in every server worker that had ever loaded or uploaded:
~200 MiB per process before they stopped importing the app, more than the whole column copy
of a million rows (docs/scaling.md). Processes are started with "spawn": forking a threaded
server process is unsafe, and unlike "forkserver" spawn leaves no server process behind once
the pool is shut down. Starting one costs a Python start-up and `pool_tasks`' imports.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Pools of this process that have processes now; when the last one exits, so does
# multiprocessing's resource tracker.
_running = 0
_running_lock = threading.Lock()


def _pool_started() -> None:
    global _running
    with _running_lock:
        _running += 1


def _pool_stopped() -> None:
    """Stop multiprocessing's resource tracker once no pool of this process runs.

    Spawning a pool's first process starts a tracker process (~7 MiB of private memory,
    measured with /proc/<pid>/smaps_rollup) that otherwise lives as long as the server worker:
    the last resident cost of a pool that is meant to exist only while it has work. The next
    pool starts a new one. Its semaphores are released first (a collection), so nothing is
    left for the stopped tracker to clean up.
    """
    global _running
    with _running_lock:
        _running -= 1
        if _running:
            return
        gc.collect()
        from multiprocessing import resource_tracker

        stop = getattr(resource_tracker._resource_tracker, "_stop", None)
        if stop is not None:
            stop()


class IdlePool:
    def __init__(self, workers: int, idle: float) -> None:
        self.workers = max(1, workers)
        self.idle = idle
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when nothing is in flight
        self._pool: ProcessPoolExecutor | None = None
        self._in_flight = 0
        self._last_done = 0.0
        self._timer: threading.Timer | None = None
        # For tests and benchmarks: how many pools were started.
        self.started = 0

    @property
    def running(self) -> bool:
        return self._pool is not None

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        with self._lock:
            if self._pool is None:
                _pool_started()  # first: the executor's queues register with the tracker
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
                self.started += 1
            self._in_flight += 1
            pool = self._pool
        try:
            future = pool.submit(fn, *args)
        except BaseException:
            self._done()
            raise
        future.add_done_callback(lambda _: self._done())
        return future

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            del pool
            _pool_stopped()

    def release_if_idle(self, wait: float = 0.5) -> bool:
        """Shut the pool down now if no task is in flight within `wait` seconds (after a load:
        its processes would otherwise sit beside what follows the decode — contribution
        bounding's temporaries — until the idle timeout). The wait covers the done callbacks
        of the caller's own tasks, which run just after their results are returned; another
        caller's work (an upload's encryption) keeps the pool. True if it was shut down."""
        with self._lock:
            self._idle.wait_for(lambda: not self._in_flight, timeout=wait)
            if self._pool is None or self._in_flight:
                return False
            pool, self._pool = self._pool, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        pool.shutdown(wait=True)
        del pool
        _pool_stopped()
        return True

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._last_done = time.monotonic()
            if not self._in_flight:
                self._idle.notify_all()
            if self._in_flight == 0 and self._timer is None:
                self._arm(self.idle)

    def _arm(self, delay: float) -> None:
        # a daemon timer: it must never keep a stopping server alive
        self._timer = threading.Timer(max(delay, 0.0), self._reap)
        self._timer.daemon = True
        self._timer.start()

    def _reap(self) -> None:
        with self._lock:
            self._timer = None
            if self._pool is None or self._in_flight:
                return
            left = self._last_done + self.idle - time.monotonic()
            if left > 0:  # used again meanwhile: look again when that use is idle long enough
                self._arm(left)
                return
            pool, self._pool = self._pool, None
        pool.shutdown(wait=True)
        del pool
        _pool_stopped()
