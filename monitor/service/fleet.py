"""Benchmarks on a fleet of hosts through Celery: one queue per hardware class, results in the shared database.

The daemon enqueues one job per scheduled run of a model (task `perfguard.benchmark`, on the queue of
the model's hardware class, `runs_on`). `perfguard worker --queue CLASS` runs a Celery worker that
takes one job at a time (concurrency 1, prefetch 1: two benchmarks on one host would measure each
other) and acknowledges it only when done (late acknowledgement, and rejected when the worker is
lost), so a job whose worker dies is redelivered. Each run is stored under an idempotency key made of
the job's key and the series, so a redelivered job skips what was already stored and never stores a
run twice. After its runs, the worker does what the local daemon does after them (detection, the
frozen reference, attribution, rules and actions), so candidates of an action are benchmarked on the
same hardware class as the model.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from monitor.config import ExecutorConfig, LoadedConfig, ModelConfig
from monitor.service.fleet_worker import FleetJobs

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

TASK = "perfguard.benchmark"


def make_app(executor: ExecutorConfig) -> Celery:
    """A Celery app for the fleet's broker, configured for benchmarks (the same on both sides)."""
    from celery import Celery  # noqa: PLC0415 - the fleet extra is optional

    app = Celery("perfguard", broker=executor.broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # acknowledged when done: a worker that dies mid-job has it redelivered
        task_reject_on_worker_lost=True,  # ... also when its pool process is killed
        task_acks_on_failure_or_timeout=True,  # a benchmark that failed is stored as failed: done
        worker_prefetch_multiplier=1,  # never hold a second job while benchmarking
        task_ignore_result=True,  # results go to the database, not to a result backend
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": executor.visibility_timeout_s,
            # Redis: look for jobs whose worker died every few seconds (kombu's default is about every
            # 100 s), so one comes back soon after its visibility timeout.
            "unacked_restore_interval": max(1, min(10, int(executor.visibility_timeout_s // 4))),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def job_key(model: str, due: datetime) -> str:
    """The idempotency key of one scheduled run: the model and when it fell due (to the second)."""
    return f"{model}@{due.replace(microsecond=0).isoformat()}"


@dataclass(frozen=True, slots=True)
class Enqueued:
    """A job handed to the broker."""

    model: str
    key: str
    queue: str


def enqueue(app: Celery, model: ModelConfig, key: str, executor: ExecutorConfig) -> Enqueued:
    """Publish one benchmark job on the model's queue, retrying a lost broker connection with
    back-off; raises the broker's error when every attempt failed."""
    queue = model.hardware_class
    limit = executor.job_limit_s(model)
    app.send_task(
        TASK,
        args=[model.name, key],
        queue=queue,
        time_limit=limit,
        soft_time_limit=max(limit - 30, 0.9 * limit),  # the task's chance to end cleanly before the kill
        retry=True,
        retry_policy={
            "max_retries": executor.enqueue_attempts - 1,
            "interval_start": executor.enqueue_backoff_s,
            "interval_step": executor.enqueue_backoff_s,
            "interval_max": 30.0,
        },
    )
    return Enqueued(model.name, key, queue)


def run_fleet_worker(loaded: LoadedConfig, queue: str, *, name: str | None = None) -> int:
    """`perfguard worker --queue QUEUE`: serve benchmark jobs of that hardware class until stopped."""
    app = make_app(loaded.config.executor)
    register_task(app, loaded, queue)
    node = name or f"perfguard-{queue}-{os.getpid()}@{socket.gethostname()}"
    argv = ["worker", "--queues", queue, "--concurrency", "1", "--pool", "prefork", "--prefetch-multiplier", "1",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO", "--hostname", node]
    app.worker_main(argv)
    return 0


def register_task(app: Celery, loaded: LoadedConfig, queue: str) -> Any:
    """The benchmark task as this worker runs it (its own config: models, database, harness)."""
    jobs = FleetJobs(loaded, queue)

    @app.task(name=TASK)
    def benchmark(model: str, key: str) -> dict[str, Any]:
        return jobs.run(model, key)

    return benchmark
