"""The config's schedules as APScheduler jobs: one per model, stable ids, one benchmark per device.

Jobs live in APScheduler's memory job store and are rebuilt from the config on every start and
reload: the config is the source of truth, and stored history already records when each model last
ran. On start, a model whose next run fell due while the daemon was down runs once, now (coalesced,
however many runs were missed), if that was within the grace period. Each device has its own
single-thread executor, so benchmarks on one device queue instead of measuring each other, while a
GPU benchmark need not wait for a CPU one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from monitor.config import ModelConfig, Schedule

log = logging.getLogger(__name__)

JOB_PREFIX = "benchmark:"


def trigger_for(schedule: Schedule) -> BaseTrigger:
    if schedule.interval_s is not None:
        return IntervalTrigger(seconds=schedule.interval_s, timezone=UTC)
    assert schedule.cron is not None
    return CronTrigger.from_crontab(schedule.cron, timezone=UTC)


def next_due(schedule: Schedule, last_run: datetime) -> datetime:
    """When the run after `last_run` was due."""
    if schedule.interval_s is not None:
        return last_run + timedelta(seconds=schedule.interval_s)
    assert schedule.cron is not None
    due: datetime | None = CronTrigger.from_crontab(schedule.cron, timezone=UTC).get_next_fire_time(None, last_run)
    assert due is not None
    return due


def catch_up(schedule: Schedule, last_run: datetime | None, now: datetime, grace_s: float) -> bool:
    """Should the model run now? Yes if it never ran, or a run fell due within the grace period."""
    if last_run is None:
        return True
    due = next_due(schedule, last_run)
    return due <= now and (now - due).total_seconds() <= grace_s


class BenchmarkScheduler:
    """Keeps one APScheduler job per configured model in step with the config."""

    def __init__(self, run_model: Callable[[str], None], misfire_grace_s: float):
        self._run_model = run_model
        self._specs: dict[str, tuple[str, str]] = {}  # job id -> (schedule, device) it was built from
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": int(misfire_grace_s)},
        )
        self._executors: set[str] = set()

    def sync(self, models: list[ModelConfig], last_runs: Mapping[str, datetime], grace_s: float) -> None:
        """Add, change and remove jobs so that they match `models`; unchanged jobs keep their timing."""
        now = datetime.now(UTC)
        wanted = {JOB_PREFIX + m.name: m for m in models}
        for job_id in list(self._specs):
            if job_id.startswith(JOB_PREFIX) and job_id not in wanted:
                self._scheduler.remove_job(job_id)
                del self._specs[job_id]
                log.info("schedule removed: %s", job_id)
        for job_id, model in wanted.items():
            spec = (model.schedule.model_dump_json(), model.device)
            if self._specs.get(job_id) == spec:
                continue
            if model.device not in self._executors:
                self._scheduler.add_executor(ThreadPoolExecutor(max_workers=1), alias=model.device)
                self._executors.add(model.device)
            kwargs = {}
            if job_id not in self._specs and catch_up(model.schedule, last_runs.get(model.name), now, grace_s):
                kwargs["next_run_time"] = now
            self._scheduler.add_job(
                self._run_model,
                trigger_for(model.schedule),
                args=[model.name],
                id=job_id,
                name=model.name,
                executor=model.device,
                replace_existing=True,
                **kwargs,
            )
            self._specs[job_id] = spec
            log.info("scheduled %s on %s: %s%s", model.name, model.device,
                     model.schedule.model_dump(exclude_none=True), " (due now)" if kwargs else "")

    def sync_cron_task(self, job_id: str, cron: str | None, task: Callable[[], None]) -> None:
        """Keep one service task (the digest email) on `cron`, or remove it when `cron` is None. It
        runs on its own thread, so it neither waits for benchmarks nor makes them wait."""
        spec = (cron or "", "tasks")
        if self._specs.get(job_id) == spec:
            return
        if cron is None:
            if job_id in self._specs:
                self._scheduler.remove_job(job_id)
                del self._specs[job_id]
            return
        if "tasks" not in self._executors:
            self._scheduler.add_executor(ThreadPoolExecutor(max_workers=1), alias="tasks")
            self._executors.add("tasks")
        self._scheduler.add_job(task, CronTrigger.from_crontab(cron, timezone=UTC), id=job_id, name=job_id,
                                executor="tasks", replace_existing=True)
        self._specs[job_id] = spec
        log.info("scheduled %s: %s (UTC)", job_id, cron)

    def next_runs(self) -> dict[str, datetime | None]:
        """When each model's benchmark runs next (service tasks are left out)."""
        return {job.name: job.next_run_time for job in self._scheduler.get_jobs() if job.id.startswith(JOB_PREFIX)}

    def start(self) -> None:
        self._scheduler.start()

    def pause(self) -> None:
        """Stop starting jobs; running ones go on."""
        self._scheduler.pause()

    def shutdown(self) -> None:
        """Stop, waiting for running jobs (cancel them first to make that quick)."""
        self._scheduler.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)
