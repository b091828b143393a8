"""The daemon's mail thread: alerts and digests are sent here, off the benchmark path.

A mail server that accepts and never answers costs `timeout_s` per attempt and recipient; on the thread
that runs benchmarks that starved the schedule and held a stop far past `stop_timeout_s`. Here a task
only waits for the tasks before it, a stop never waits for it (what it was sending stays claimed and
is taken over by the next pass, see storage/notifications.py), and while idle it retries what failed
once its wait is over, so a server that comes back gets the alerts without waiting for a model's next
run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Task = Callable[[], object]  # what it returns is not used


class Mailer:
    """One background thread running submitted tasks in order; a task already waiting under the same
    key is not queued twice (ten runs of one model while the server is slow make one alert pass)."""

    def __init__(self, idle: Callable[[], None] | None = None, idle_every_s: float = 60.0) -> None:
        self._idle = idle
        self._idle_every_s = idle_every_s
        self._queue: queue.Queue[tuple[str, Task] | None] = queue.Queue()
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.busy_since: float | None = None  # monotonic start of the task in flight, for /healthz

    def submit(self, key: str, task: Task) -> bool:
        """Queue `task` unless one under `key` waits already; False when skipped or stopped."""
        if self._stopped.is_set():
            return False
        with self._lock:
            if key in self._waiting:
                return False
            self._waiting.add(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="perfguard-mail", daemon=True)
                self._thread.start()
        self._queue.put((key, task))
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting)

    def stop(self, wait_s: float = 0.0) -> None:
        """Stop taking tasks; wait at most `wait_s` for the one in flight (the process may exit under it)."""
        self._stopped.set()
        self._queue.put(None)
        if self._thread is not None and wait_s > 0:
            self._thread.join(wait_s)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                item = self._queue.get(timeout=self._idle_every_s)
            except queue.Empty:
                if self._idle is not None:
                    self._run("retry", self._idle)
                continue
            if item is None:
                break
            key, task = item
            with self._lock:
                self._waiting.discard(key)
            self._run(key, task)

    def _run(self, key: str, task: Task) -> None:
        self.busy_since = time.monotonic()
        try:
            task()
        except Exception:
            log.exception("mail task %s failed", key)
        finally:
            self.busy_since = None
