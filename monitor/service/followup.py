"""What follows a model's runs, the same wherever it runs: in the daemon (local executor), in a fleet
worker (Celery executor) and in `perfguard check`. Detect changes, freeze each series' reference once,
attribute new latency regressions with an A/B against it, then evaluate the rules and carry out what
they decide (monitor/service/respond.py), on the hardware that ran the model. Alerts are stored as
rule events; the daemon's report keeper (reporting.py) sends them and refreshes the report."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from monitor.config import LoadedConfig
from monitor.core.actions import ActionRecord
from monitor.core.runs import RunRecord
from monitor.detection.attribution import confirm_pending, ensure_references, references_wanted
from monitor.detection.check import CheckResult, check_models
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize.rollback import damaged_weights, roll_back
from monitor.service.respond import Response, respond
from rules.discovery import ConfiguredRule
from rules.engine import FiredDecision, RuleFailure
from storage.actions import NothingToRollBack
from storage.db import Database
from storage.queries import BASELINE, list_models

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FollowUp:
    """What followed: the check (None when no run of the model was stored) and, per model with
    history, the rules' response."""

    check: CheckResult | None = None
    responses: list[Response] = field(default_factory=list)

    @property
    def fired(self) -> list[FiredDecision]:
        return [d for r in self.responses for d in r.evaluation.fired]

    @property
    def failures(self) -> list[RuleFailure]:
        return [x for r in self.responses for x in r.evaluation.failures]

    @property
    def actions(self) -> list[ActionRecord]:
        return [a for r in self.responses for a in r.actions]


def follow_up(
    db: Database,
    loaded: LoadedConfig,
    names: Sequence[str] | None,
    rules: Sequence[ConfiguredRule] | None,
    *,
    records: Sequence[RunRecord] = (),
    confirm: bool | None = None,
    cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> FollowUp:
    """Follow up the named models (None: every configured or stored one).

    `records`: the runs just made, when there are some: damaged variant weights among them roll the
    model back, and without a stored successful run nothing else follows. `rules` None skips the
    rules (`check --no-rules`); `confirm` None follows `detection.confirm`.
    """
    cancel = cancel or threading.Event()
    done = FollowUp()
    if records:
        for name in names or []:
            fall_back_from_damaged_weights(db, loaded, name, [r for r in records if r.model == name])
        if not any(r.status == "ok" and r.run_id is not None for r in records) or cancel.is_set():
            return done
    done.check = check_models(db, loaded, list(names) if names else None)
    confirming = loaded.config.detection.confirm if confirm is None else confirm
    # Only configured models: a stored model no longer configured has no factory to freeze or run.
    configured = [m.name for m in loaded.config.models if not names or m.name in names]
    if configured and (confirming or references_wanted(loaded)) and not cancel.is_set():
        ensure_references(db, loaded, configured, cancel, pool)
    if confirming and not cancel.is_set():
        attributed = {f.id: f for f in confirm_pending(db, loaded, done.check.findings, cancel, pool)}
        done.check.findings = [attributed.get(f.id, f) for f in done.check.findings]
    if rules is not None and loaded.config.rules:
        new_ids = {f.id for f in done.check.new if f.id is not None}
        stored = {m.name for m in list_models(db)}
        # Every configured model with history, not only those with findings: an SLO breach needs none.
        for name in sorted(n for n in configured if n in stored):
            if cancel.is_set():
                break
            mine = [f for f in done.check.findings if f.model == name]
            done.responses.append(respond(db, loaded, name, mine, new_ids, rules, cancel, pool=pool))
    return done


def fall_back_from_damaged_weights(
    db: Database, loaded: LoadedConfig, name: str, records: Sequence[RunRecord]
) -> None:
    """The active variant's weights failed their check: every run of it would fail until someone
    rolls back by hand, so roll back now (the rollback is an action: its alert goes out) and the next
    run measures the previous variant."""
    damaged = next((r for r in records if r.status == "failed" and r.variant != BASELINE
                    and damaged_weights(r.error)), None)
    if damaged is None:
        return
    why = f"the weights of variant {damaged.variant} failed their check (run {damaged.run_id})"
    try:
        record = roll_back(db, loaded, name, trigger="integrity", why=why)
    except NothingToRollBack:
        return
    log.error("%s: %s; rolled back to %s (action %s)", name, why, record.to_variant, record.id)
