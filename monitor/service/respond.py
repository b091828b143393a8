"""After a check: evaluate the model's rules and carry out what fired.

Rules only decide (rules/engine.py); this step acts. A requantize or prune decision runs one
optimisation action (monitor/optimize/action.py), linked to the rule event that asked for it; two
decisions of the same kind in one evaluation (say the p50 and p99 findings of one change) run one
action. A decision on a latency finding gets a diagnosis, the profile diff of the current model
against its frozen reference, stored with the finding (an action takes one itself). Alerts are
stored as rule events; the reports and emails read them there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from monitor.config import LoadedConfig
from monitor.core.actions import ActionRecord
from monitor.core.metrics import LATENCY_METRICS
from monitor.core.series import FindingRecord
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize.action import OptimizeRequest, optimize
from monitor.optimize.diagnose import diagnose
from monitor.registry import PlannedBenchmark, plan_active
from rules.discovery import ConfiguredRule
from rules.engine import Evaluation, evaluate_model
from storage import rule_events
from storage.db import Database

log = logging.getLogger(__name__)



@dataclass(slots=True)
class Response:
    """What the rules decided for one model and which actions ran."""

    evaluation: Evaluation
    actions: list[ActionRecord] = field(default_factory=list)


def respond(
    db: Database,
    loaded: LoadedConfig,
    model: str,
    findings: Sequence[FindingRecord],
    new_ids: set[int],
    configured: Sequence[ConfiguredRule] | None = None,
    cancel: threading.Event | None = None,
    act: bool = True,
    pool: WorkerPool | None = None,
) -> Response:
    """Evaluate `model`'s rules on its findings; with `act`, run the optimisations that fired."""
    evaluation = evaluate_model(db, loaded, model, findings, new_ids, configured=configured)
    response = Response(evaluation)
    if not act:
        return response
    by_id = {f.id: f for f in findings if f.id is not None}
    done: dict[str, ActionRecord] = {}
    failed: set[str] = set()
    answered: dict[str | None, int] = {}  # decision key -> the action that answered it
    for fired in evaluation.fired:
        decision = fired.decision
        if decision.action == "alert" or decision.action in done or decision.action in failed:
            continue
        if cancel is not None and cancel.is_set():
            break
        request = OptimizeRequest(
            model=model, action=decision.action, recipes=decision.recipes, trigger=fired.rule,
            finding=by_id.get(decision.finding_id) if decision.finding_id is not None else None,
        )
        try:
            record = optimize(db, loaded, request, cancel, pool)
        except Exception:
            log.exception("the %s action for %s (rule %s) failed", decision.action, model, fired.rule)
            failed.add(decision.action)  # not retried for the next decision of this evaluation
            continue
        done[decision.action] = record
        response.actions.append(record)
        if record.id is not None and decision.key is not None:
            answered.setdefault(decision.key, record.id)
    # Every decision of an answered key (the alert beside the requantize) points at its action, so a
    # report or an alert email can say what was done about it.
    for fired in evaluation.fired:
        kind = fired.decision.action
        action_id = done[kind].id if kind in done else answered.get(fired.decision.key)
        if action_id is not None:
            rule_events.link_action(db, fired.event_id, action_id)
    _diagnose_latency_findings(db, loaded, evaluation, by_id, cancel, pool)
    return response


def _diagnose_latency_findings(
    db: Database,
    loaded: LoadedConfig,
    evaluation: Evaluation,
    by_id: dict[int, FindingRecord],
    cancel: threading.Event | None,
    pool: WorkerPool | None,
) -> None:
    """Profile the model for each latency finding a rule fired on that has no diagnosis yet."""
    series: list[PlannedBenchmark] | None = None
    for fired in evaluation.fired:
        finding = by_id.get(fired.decision.finding_id or -1)
        if finding is None or finding.diagnosis or finding.metric not in LATENCY_METRICS:
            continue
        if not finding.key.is_inference:
            continue  # the profile job profiles one inference call
        if cancel is not None and cancel.is_set():
            return
        if series is None:  # read once, after any action: the series of the variant active now
            series = plan_active(db, loaded, [finding.model])
        # None when an action replaced the finding's variant: profiling the new one would not explain it.
        planned = next((p for p in series if p.key == finding.key), None)
        if planned is not None:
            profiled = diagnose(db, loaded, planned, finding, cancel, pool)
            if finding.id is not None and profiled.error is None:
                by_id[finding.id] = replace(finding, diagnosis=profiled.diagnosis)
            if profiled.error is not None:
                log.warning("could not diagnose finding %d of %s: %s", finding.id, finding.model, profiled.error)
