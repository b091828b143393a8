"""Rules at work: after a model's check, run its configured rules and record what fired.

For one model: build the read-only `RuleContext` -> call each configured rule under its time limit,
all at once, so one slow rule costs its own limit, not the others' (a plugin in a process of its own,
rules/isolation.py; a built-in rule in a thread) -> keep the valid decisions -> cooldown and
hysteresis against the rule's stored events -> store what fires. A rule that raises, hangs, dies or
returns nonsense is recorded and logged, and the other rules still run.

The engine never acts: it returns the fired decisions, and the action runner and the daemon decide
what to do with them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from monitor.config import LoadedConfig
from monitor.core.runs import RunRecord
from monitor.core.series import FindingRecord
from rules.api import Decision, ModelView, RuleContext
from rules.discovery import ConfiguredRule, configured_rules
from rules.isolation import IsolatedCall, finish_calls, start_call
from storage import queries
from storage import rule_events as store
from storage.db import Database

log = logging.getLogger(__name__)

# Newest runs of the model (all batch sizes) put in the context; rules read further through `history`.
RUNS_IN_CONTEXT = 200
MAX_HISTORY_RUNS = 10_000
MAX_KEY_LENGTH = 200  # rule_events.key



@dataclass(frozen=True, slots=True)
class FiredDecision:
    """A decision that went through cooldown and hysteresis and was stored as event `event_id`."""

    event_id: int
    model: str
    rule: str  # the configured rule's label (`latency_drift`, `latency_drift#2`)
    decision: Decision
    at: datetime

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {"event_id": self.event_id, "model": self.model, "rule": self.rule, "action": d.action,
                "reason": d.reason, "key": d.key, "finding_id": d.finding_id, "recipes": list(d.recipes),
                "details": d.details, "at": self.at.isoformat()}


@dataclass(frozen=True, slots=True)
class RuleFailure:
    """A rule that raised, returned something other than decisions, or ran past its time limit."""

    event_id: int
    model: str
    rule: str
    outcome: Literal["error", "timeout"]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "model": self.model, "rule": self.rule, "outcome": self.outcome,
                "reason": self.reason}


@dataclass(slots=True)
class Evaluation:
    """What evaluating one model's rules gave: the decisions that fired, in rule priority order."""

    model: str
    at: datetime
    fired: list[FiredDecision] = field(default_factory=list)
    failures: list[RuleFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # rules not called: their previous call still runs
    suppressed: int = 0  # decisions held back by cooldown or hysteresis (logged at debug level)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "at": self.at.isoformat(), "fired": [f.to_json() for f in self.fired],
                "failures": [f.to_json() for f in self.failures], "skipped": list(self.skipped),
                "suppressed": self.suppressed}


class InvalidDecisions(Exception):
    """A rule returned something the engine cannot act on."""


@dataclass(slots=True)
class _Call:
    """One rule called in its own thread."""

    configured: ConfiguredRule
    done: threading.Event
    deadline: float
    thread: threading.Thread | None = None
    result: object = None
    error: BaseException | None = None


def evaluate_model(
    db: Database,
    loaded: LoadedConfig,
    model_name: str,
    findings: Sequence[FindingRecord],
    new_ids: Collection[int],
    now: datetime | None = None,
    configured: Sequence[ConfiguredRule] | None = None,
) -> Evaluation:
    """Run the rules configured for `model_name`, higher priority first (ties in config order).

    `findings` are the model's findings as the check left them (open ones go into the context), and
    `new_ids` those it opened. `configured` (from `configured_rules`) saves rebuilding the rules on
    every call; `now` is the time of the evaluation (aware), which cooldowns count from.
    """
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    evaluation = Evaluation(model_name, now)
    rules = configured if configured is not None else configured_rules(loaded.config)
    applicable = sorted((c for c in rules if c.applies_to(model_name)), key=lambda c: (-c.priority, c.index))
    if not applicable:
        return evaluation
    context = build_context(db, loaded, model_name, findings, new_ids, now)
    if context is None:
        log.debug("rules: %s is not configured or has no stored runs; nothing to evaluate", model_name)
        return evaluation
    calls: list[tuple[ConfiguredRule, _Call | IsolatedCall]] = []  # in priority order
    storage_url = db.engine.url.render_as_string(hide_password=False)
    for rule in applicable:
        if rule.isolated:
            calls.append((rule, start_call(rule.label, rule.rule, context, storage_url, rule.timeout_s)))
        elif _still_running(model_name, rule):
            log.warning("rule %s on model %s: skipped, its previous call is still running", rule.label, model_name)
            evaluation.skipped.append(rule.label)
        else:
            calls.append((rule, _start(rule, context)))
    finish_calls([call for _, call in calls if isinstance(call, IsolatedCall)])
    for _, call in calls:
        if isinstance(call, _Call):
            call.done.wait(max(0.0, call.deadline - time.monotonic()))
    for rule, call in calls:
        if isinstance(call, IsolatedCall):
            _settle(db, rule, call.outcome or "error", call.result, call.error, context, evaluation)
        else:
            _settle_thread(db, call, context, evaluation)
    return evaluation


def build_context(
    db: Database, loaded: LoadedConfig, model: str, findings: Sequence[FindingRecord], new_ids: Collection[int],
    now: datetime,
) -> RuleContext | None:
    """The context rules read for `model`; None when it is not configured or has no stored runs."""
    try:
        config = loaded.config.model(model)
    except KeyError:
        return None
    recent = queries.history(db, model, limit=RUNS_IN_CONTEXT, mode="infer")
    if not recent:
        return None
    with db.session(readonly=True) as session:
        variant = queries.active_variant(session, model)
    open_findings = [f for f in findings if f.model == model and f.state == "open"]
    open_ids = {f.id for f in open_findings}
    newest_first = sorted(open_findings, key=lambda f: (f.change_at, f.id or 0), reverse=True)
    profile = next((f.diagnosis for f in newest_first if f.diagnosis), None)

    def history(limit: int, batch_size: int | None = None) -> Sequence[RunRecord]:
        return tuple(queries.history(db, model, limit=min(max(1, limit), MAX_HISTORY_RUNS), batch_size=batch_size,
                                     mode="infer"))

    return RuleContext(
        model=ModelView(name=config.name, device=config.device, batch_sizes=tuple(config.series_batch_sizes),
                        owners=tuple(config.owners), slo=dict(config.slo), tags=tuple(config.tags)),
        runs=tuple(r for r in recent if r.variant == variant),
        findings=tuple(open_findings),
        active_variant=variant,
        now=now,
        new_findings=frozenset(i for i in new_ids if i in open_ids),
        profile=profile,
        history=history,
    )


def _still_running(model: str, rule: ConfiguredRule) -> bool:
    thread = rule.hung.get(model)
    if thread is not None and thread.is_alive():
        return True
    rule.hung.pop(model, None)
    return False


def _start(rule: ConfiguredRule, context: RuleContext) -> _Call:
    done = threading.Event()
    call = _Call(rule, done, time.monotonic() + rule.timeout_s)

    def run() -> None:
        try:
            call.result = rule.rule.evaluate(context)
        except BaseException as exc:  # noqa: BLE001 - a rule's bug is recorded, never raised into the service
            call.error = exc
        finally:
            done.set()

    # A daemon thread: a rule that never returns must not keep the process from exiting.
    call.thread = threading.Thread(target=run, name=f"perfguard-rule-{rule.label}-{context.model.name}", daemon=True)
    call.thread.start()
    return call


def _settle_thread(db: Database, call: _Call, context: RuleContext, evaluation: Evaluation) -> None:
    """A thread's call as an outcome: a thread cannot be killed, so a hung one is remembered."""
    rule, model = call.configured, evaluation.model
    if not call.done.is_set() and call.thread is not None:
        rule.hung[model] = call.thread
        reason = f"no answer within its time limit of {rule.timeout_s:g} s; not called again until it returns"
        _settle(db, rule, "timeout", None, reason, context, evaluation)
    elif call.error is not None:
        trace = "".join(traceback.format_exception(call.error))
        _settle(db, rule, "error", None, f"{type(call.error).__name__}: {call.error}\n{trace}", context, evaluation)
    else:
        _settle(db, rule, "ok", call.result, None, context, evaluation)


def _settle(db: Database, rule: ConfiguredRule, outcome: str, result: object, error: str | None,
            context: RuleContext, evaluation: Evaluation) -> None:
    """Record one call's outcome: a failure, or its decisions through cooldown and hysteresis."""
    model = evaluation.model
    if outcome == "timeout":
        log.warning("rule %s on model %s: %s", rule.label, model, error)
        _fail(db, evaluation, rule.label, "timeout", str(error))
        return
    if outcome != "ok":
        reason, _, trace = str(error).partition("\n")
        log.error("rule %s on model %s failed: %s%s", rule.label, model, reason, f"\n{trace}" if trace else "")
        _fail(db, evaluation, rule.label, "error", reason)
        return
    try:
        decisions = valid_decisions(result, context)
    except InvalidDecisions as exc:
        log.error("rule %s on model %s: %s", rule.label, model, exc)
        _fail(db, evaluation, rule.label, "error", str(exc))
        return
    if not decisions:
        return
    admitted: list[Decision] = []

    def admit(memory: store.RuleMemory) -> list[store.NewRuleEvent]:
        admitted[:] = _admit(decisions, memory, rule, evaluation)
        return [_new_event(d) for d in admitted]

    keys = {d.key for d in decisions if d.key is not None}
    stored = store.fire(db, model, rule.label, keys, evaluation.at, admit)
    evaluation.suppressed += len(decisions) - len(admitted)
    for event, decision in zip(stored, admitted, strict=True):
        log.info("rule %s on model %s: %s: %s", rule.label, model, decision.action, decision.reason)
        evaluation.fired.append(FiredDecision(event.id, model, rule.label, decision, evaluation.at))


def valid_decisions(result: object, context: RuleContext) -> list[Decision]:
    """A rule's return value as decisions the engine can store; InvalidDecisions says what is wrong."""
    if isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
        raise InvalidDecisions(f"returned {type(result).__name__}, not a list of Decision")
    open_ids = {f.id for f in context.findings}
    decisions = []
    for item in result:
        if not isinstance(item, Decision):
            raise InvalidDecisions(f"returned a {type(item).__name__} among its decisions, not a Decision")
        if item.key is not None and (not isinstance(item.key, str) or len(item.key) > MAX_KEY_LENGTH):
            raise InvalidDecisions(f"decision key {item.key!r} is not a string of at most {MAX_KEY_LENGTH} characters")
        if item.finding_id is not None and item.finding_id not in open_ids:
            raise InvalidDecisions(f"decision names finding {item.finding_id}, not an open finding of this model")
        try:
            json.dumps(item.details, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidDecisions(f"decision details are not plain JSON: {exc}") from None
        decisions.append(item)
    return decisions


def _admit(
    decisions: Sequence[Decision], memory: store.RuleMemory, rule: ConfiguredRule, evaluation: Evaluation
) -> list[Decision]:
    """The decisions that go through, in the rule's order.

    Hysteresis: a key the rule answered before for this model is done with. Cooldown: within
    `cooldown_s` of the rule's last fired decision for the model, nothing more fires; except that in
    one evaluation the decisions answering the same key as the first one admitted (an alert and an
    action for one regression) all go through together.
    """
    cooling = memory.last_fired_at is not None and evaluation.at - memory.last_fired_at < timedelta(
        seconds=rule.cooldown_s
    )
    admitted: list[Decision] = []
    for decision in decisions:
        why = None
        if decision.key is not None and decision.key in memory.answered_keys:
            why = f"key {decision.key} already answered"
        elif any((d.action, d.key) == (decision.action, decision.key) for d in admitted):
            why = "repeated in this evaluation"
        elif admitted and decision.key != admitted[0].key:
            why = f"cooldown: {admitted[0].action} for {admitted[0].key or 'no key'} fired in this evaluation"
        elif not admitted and cooling:
            why = f"cooldown of {rule.cooldown} since {memory.last_fired_at:%Y-%m-%d %H:%M:%S} UTC"
        if why is None:
            admitted.append(decision)
        else:
            log.debug("rule %s on model %s: %s suppressed (%s)", rule.label, evaluation.model, decision.action, why)
    return admitted


def _new_event(decision: Decision) -> store.NewRuleEvent:
    details = dict(decision.details)
    if decision.recipes:
        details["recipes"] = list(decision.recipes)
    return store.NewRuleEvent(decision.action, decision.reason, decision.key, details, decision.finding_id)


def _fail(db: Database, evaluation: Evaluation, label: str, outcome: Literal["error", "timeout"], reason: str) -> None:
    (event,) = store.record(db, evaluation.model, label, [store.NewRuleEvent(outcome, reason)], evaluation.at)
    evaluation.failures.append(RuleFailure(event.id, evaluation.model, label, outcome, reason))
