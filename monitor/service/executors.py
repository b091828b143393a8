"""Where the daemon's scheduled runs go: an abstract executor and its two kinds, picked by name.

- `local`: the daemon benchmarks the model itself, on the scheduler's thread for its device.
- `celery`: the daemon enqueues a job on the model's hardware-class queue and runs nothing itself;
  fleet workers (`perfguard worker`) benchmark and store. A broker that is away does not stop the
  daemon: a run that cannot be enqueued waits (one per model: later ones coalesce into it, as a
  missed run would), `/healthz` says so, and it is enqueued as soon as the broker answers again.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from monitor.config import ExecutorConfig, ModelConfig
from monitor.service.fleet import enqueue, job_key, make_app

log = logging.getLogger(__name__)


class Executor(ABC):
    """Runs a model's scheduled benchmark somewhere."""

    @abstractmethod
    def submit(self, model: ModelConfig, due: datetime) -> None:
        """Called on a scheduler thread when a model's run falls due."""

    def poll(self) -> None:  # noqa: B027 - optional: nothing to retry by default
        """Called every couple of seconds from the daemon's main loop: retry what waits."""

    def health(self) -> dict[str, Any]:
        """What `/healthz` reports about it; `healthy` False turns the endpoint red."""
        return {"kind": "local", "healthy": True}

    def shutdown(self) -> None:  # noqa: B027 - optional: nothing to release by default
        """Called once when the daemon stops."""


class LocalExecutor(Executor):
    """Benchmarks in the daemon itself (the default, for a single host)."""

    def __init__(self, run_model: Callable[[str], None]):
        self._run_model = run_model

    def submit(self, model: ModelConfig, due: datetime) -> None:
        self._run_model(model.name)


class CeleryExecutor(Executor):
    """Enqueues each due run on its hardware-class queue; keeps runs the broker could not take."""

    def __init__(self, config: ExecutorConfig, app: Any | None = None):
        self.config = config
        self.app = app if app is not None else make_app(config)
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[ModelConfig, datetime]] = {}  # model -> the run that waits
        self.enqueued = 0
        self.last_error: str | None = None
        self.last_enqueued_at: datetime | None = None

    def submit(self, model: ModelConfig, due: datetime) -> None:
        with self._lock:
            if model.name in self._waiting:
                # The broker is away and this model already has a run waiting: coalesce, like a missed run.
                log.warning("run of %s due %s coalesced into the one waiting for the broker", model.name, due)
                return
        self._try(model, due)

    def poll(self) -> None:
        with self._lock:
            waiting = list(self._waiting.values())
        for model, due in waiting:
            if not self._try(model, due):
                return  # still away: the others wait too

    def _try(self, model: ModelConfig, due: datetime) -> bool:
        try:
            job = enqueue(self.app, model, job_key(model.name, due), self.config)
        except Exception as exc:  # noqa: BLE001 - any broker or connection error: the run waits
            with self._lock:
                self._waiting.setdefault(model.name, (model, due))
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            log.warning("broker unavailable, run of %s waits (%d waiting): %s", model.name, len(self._waiting),
                        self.last_error)
            return False
        with self._lock:
            self._waiting.pop(model.name, None)
            self.enqueued += 1
            self.last_enqueued_at = datetime.now(UTC)
            if not self._waiting:
                self.last_error = None
        log.info("enqueued %s on queue %s", job.key, job.queue)
        return True

    def health(self) -> dict[str, Any]:
        with self._lock:
            waiting = sorted(self._waiting)
        return {
            "kind": "celery",
            "healthy": not waiting,
            "broker_reachable": not waiting,
            "waiting_runs": waiting,
            "last_error": self.last_error,
            "enqueued": self.enqueued,
            "last_enqueued_at": self.last_enqueued_at.isoformat() if self.last_enqueued_at else None,
        }

    def shutdown(self) -> None:
        with self._lock:
            if self._waiting:
                log.warning("stopping with %d run(s) never enqueued: %s", len(self._waiting), sorted(self._waiting))
        self.app.close()


def make_executor(config: ExecutorConfig, run_model: Callable[[str], None]) -> Executor:
    """The configured executor, by name."""
    if config.kind == "celery":
        return CeleryExecutor(config)
    return LocalExecutor(run_model)
