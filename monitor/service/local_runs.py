"""A scheduled run on this host, the local executor's job: benchmark one model (all its batch sizes),
store each run (or spool it while the database is away), follow up (service/followup.py), then
refresh the report and hand alerts to the mail thread. What happens is told to listeners as events
(APScheduler's listener pattern): the daemon feeds /metrics and /healthz from them, so the job never
calls back into the daemon."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from monitor.config import LoadedConfig
from monitor.core.runs import RunRecord
from monitor.harness.protocol import VariantSpec
from monitor.harness.worker_pool import WorkerPool
from monitor.service.benchmark import BenchmarkProgress, benchmark_models
from monitor.service.followup import FollowUp, follow_up
from monitor.service.reporting import ReportKeeper
from rules.discovery import ConfiguredRule, configured_rules
from storage.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunEnded:
    """A run was stored (its `run_id` set) or spooled until the database answers (`run_id` None)."""

    record: RunRecord


@dataclass(frozen=True, slots=True)
class FollowedUp:
    """A model's runs were followed up: what the check found and what the rules did."""

    model: str
    done: FollowUp


RunEvent = RunEnded | FollowedUp
Listener = Callable[[RunEvent], None]


class BuiltRules:
    """The configured rules, built once per loaded config (a reload builds them anew)."""

    def __init__(self) -> None:
        self._for: LoadedConfig | None = None
        self._rules: list[ConfiguredRule] = []

    def get(self, loaded: LoadedConfig) -> list[ConfiguredRule]:
        if loaded is not self._for:
            self._rules, self._for = configured_rules(loaded.config), loaded
        return self._rules

    def built(self) -> list[ConfiguredRule]:
        """The rules built so far, building none (for /healthz, on the HTTP thread)."""
        return list(self._rules)


@dataclass
class LocalRuns:
    """What local runs share for the daemon's life: where they store, their warm workers, the rules,
    the report keeper, the daemon's stop signals, and the listeners told of each run."""

    config: Callable[[], LoadedConfig]  # the config now: a reload swaps it; a run keeps the one it began with
    db: Database
    store: Callable[[Database, RunRecord], RunRecord]
    pool: WorkerPool
    reports: ReportKeeper
    stop_requested: threading.Event  # no new series starts
    cancel: threading.Event  # the run in flight is aborted too
    rules: BuiltRules = field(default_factory=BuiltRules)
    variants: dict[str, VariantSpec] = field(default_factory=dict)  # model -> active variant, last seen
    prepared: set[str] = field(default_factory=set)  # models whose prepare step ran in this life
    listeners: list[Listener] = field(default_factory=list)
    _active: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)

    def run(self, name: str) -> None:
        """One scheduled job: benchmark `name`, store its runs, follow up, publish."""
        if self.stop_requested.is_set():
            return
        with self._idle:
            self._active += 1
        try:
            loaded = self.config()
            if name in {m.name for m in loaded.config.models}:
                self._run(loaded, name)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for the run in flight to end; False when it has not within `timeout_s`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout=timeout_s)

    def stopping(self) -> bool:
        return self.stop_requested.is_set() or self.cancel.is_set()

    def tell(self, event: RunEvent) -> None:
        for listener in self.listeners:
            listener(event)

    def _run(self, loaded: LoadedConfig, name: str) -> None:
        try:
            records = benchmark_models(loaded, self.db, [name], _Told(self), cancel=self.cancel, store=self.store,
                                       known_variants=self.variants, prepared=self.prepared,
                                       stopping=self.stop_requested, pool=self.pool)
        except Exception:
            log.exception("benchmark of %s failed to run or store", name)
            return
        try:
            if not self.stopping():
                done = follow_up(self.db, loaded, [name], self.rules.get(loaded), records=records,
                                 cancel=self.cancel, pool=self.pool)
                self.tell(FollowedUp(name, done))
        except Exception:
            log.exception("change detection for %s failed", name)
        if not self.stopping():
            self.reports.publish(self.db, loaded, name)


class _Told(BenchmarkProgress):
    """Each run, as it ends, to the listeners."""

    def __init__(self, runs: LocalRuns):
        self._runs = runs

    def end(self, record: RunRecord) -> None:
        self._runs.tell(RunEnded(record))
