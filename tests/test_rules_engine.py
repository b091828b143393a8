"""The rule engine on SQLite and PostgreSQL: misbehaving rules are isolated, decisions fire once per
event and not again within the cooldown, and every outcome is stored as a rule event."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import select

from monitor.config import LoadedConfig
from monitor.detection.check import CheckResult, check_model
from rules.api import Decision, Rule, RuleContext
from rules.discovery import ConfiguredRule, configured_rules
from rules.engine import Evaluation, evaluate_model
from storage import rule_events
from storage.db import Database
from storage.tables import ActionRow, VariantRow
from tests.cli_helpers import perfguard
from tests.rules_helpers import (
    MODEL,
    install_plugins,
    plugins_on_path,
    rules_config,
    store_steps,
)
from tests.storage_helpers import T0

NOW = T0 + timedelta(days=2)


@pytest.fixture
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from plugins_on_path(install_plugins(tmp_path_factory))


def evaluate(db: Database, loaded: LoadedConfig, checked: CheckResult, at: Any = NOW, **kw: Any) -> Evaluation:
    return evaluate_model(db, loaded, MODEL, checked.findings, [f.id for f in checked.new if f.id], now=at, **kw)


def latency_regression(db: Database, loaded: LoadedConfig, *, batch_size: int = 8, start: int = 0,
                       seed: int = 0) -> CheckResult:
    store_steps(db, 30, 6, start=start, seed=seed, batch_size=batch_size, latency_ms_p50=(1.0, 1.3))
    return check_model(db, loaded, MODEL, loaded.config.models[0])


def fired(evaluation: Evaluation) -> list[tuple[str, str, str | None]]:
    return [(f.rule, f.decision.action, f.decision.key) for f in evaluation.fired]


# isolation ----------------------------------------------------------------------------------------


def test_a_plugin_that_raises_hangs_spins_or_exits_is_stopped_and_the_others_still_run(
    db: Database, tmp_path: Path, plugins: Path
) -> None:
    """A plugin's call runs in a process of its own: killed past its limit (a busy loop would keep a
    core forever in a thread), and its `os._exit` ends that process, not the service."""
    pid_file = tmp_path / "busy.pid"
    loaded = rules_config(tmp_path, [
        {"use": "always_raises", "priority": 5},
        {"use": "hangs", "params": {"seconds": 3600}, "timeout_s": 0.5, "priority": 5},
        {"use": "busy_loops", "params": {"pid_file": str(pid_file)}, "timeout_s": 0.5, "priority": 5},
        {"use": "exits", "priority": 5},
        {"use": "latency_drift"},
    ])
    checked = latency_regression(db, loaded)
    built = configured_rules(loaded.config)
    assert [r.isolated for r in built] == [True, True, True, True, False]  # plugins apart, built-ins in threads
    began = time.monotonic()
    first = evaluate(db, loaded, checked, configured=built)
    assert time.monotonic() - began < 30  # the hour-long hang and the endless loop cost their limits
    key = next(f"finding:{f.id}" for f in checked.findings if f.metric == "latency_ms_p50")
    assert fired(first) == [("latency_drift", "alert", key), ("latency_drift", "requantize", key)]
    failures = {f.rule: (f.outcome, f.reason) for f in first.failures}
    assert {rule: outcome for rule, (outcome, _) in failures.items()} == {
        "always_raises": "error", "hangs": "timeout", "busy_loops": "timeout", "exits": "error"}
    assert failures["always_raises"][1] == "RuntimeError: bug in always_raises while looking at m"
    assert "0.5 s" in failures["hangs"][1] and "killed" in failures["busy_loops"][1]
    assert failures["exits"][1] == "the rule ended its process (exit status 3) without answering"
    spinner = int(pid_file.read_text())
    assert wait_until(lambda: not running(spinner), 10), "the busy loop still spins"
    stored = {(e.rule, e.outcome) for e in rule_events.events(db, MODEL)}
    assert stored == {("always_raises", "error"), ("hangs", "timeout"), ("busy_loops", "timeout"),
                      ("exits", "error"), ("latency_drift", "alert"), ("latency_drift", "requantize")}

    # Killed, not left running: the next evaluation calls each of them again, and stops them again.
    second = evaluate(db, loaded, checked, NOW + timedelta(minutes=10), configured=built)
    assert second.skipped == [] and sorted(f.rule for f in second.failures) == [
        "always_raises", "busy_loops", "exits", "hangs"]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.timing
def test_a_built_in_rule_that_hangs_in_its_thread_is_not_called_again_until_it_returns(
    db: Database, tmp_path: Path
) -> None:
    loaded = rules_config(tmp_path, [])
    checked = latency_regression(db, loaded)
    slow = configured("slow", _Returns(lambda: time.sleep(1.5) or []), timeout_s=0.5)
    good = configured("good", _Returns([Decision("alert", "all is well")]), index=1)
    began = time.monotonic()
    first = evaluate(db, loaded, checked, configured=[slow, good])
    assert 0.5 <= time.monotonic() - began < 1.4  # the hang costs its own limit, once, and nothing more
    assert [(f.rule, f.outcome) for f in first.failures] == [("slow", "timeout")] and len(first.fired) == 1
    # Still hung: skipped, not called again (one thread, not one per run), not recorded again.
    second = evaluate(db, loaded, checked, NOW + timedelta(hours=2), configured=[slow])
    assert second.skipped == ["slow"] and second.failures == []
    # Once its call has returned, the rule is called again (and here times out again).
    assert wait_until(lambda: not any(thread.is_alive() for thread in slow.hung.values()), 10)
    third = evaluate(db, loaded, checked, NOW + timedelta(hours=4), configured=[slow])
    assert third.skipped == [] and [f.outcome for f in third.failures] == ["timeout"]


class _Returns(Rule):
    """A rule returning whatever it is built with, to feed the engine invalid values."""

    name = "returns"
    description = "returns a fixed value"

    def __init__(self, value: Any) -> None:
        self.value = value

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        return self.value() if callable(self.value) else self.value


def configured(label: str, rule: Rule, *, priority: int = 0, index: int = 0, cooldown_s: float = 3600,
               timeout_s: float = 2.0) -> ConfiguredRule:
    return ConfiguredRule(index=index, use="returns", label=label, rule=rule, origin="tests", models=None,
                          priority=priority, cooldown="1h", cooldown_s=cooldown_s, timeout_s=timeout_s)


def test_invalid_return_values_are_recorded_as_errors(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [])
    checked = latency_regression(db, loaded)
    bad: dict[str, Any] = {
        "none": None,
        "text": "alert",
        "numbers": [1, 2],
        "stranger": [Decision("alert", "about a finding of another model", finding_id=999_999)],
        "not-json": [Decision("alert", "details with an object", details={"at": object()})],
        "long-key": [Decision("alert", "a key too long", key="k" * 201)],
    }
    rules = [configured(label, _Returns(value), index=i) for i, (label, value) in enumerate(bad.items())]
    good = configured("good", _Returns([Decision("alert", "all is well")]), index=len(rules))
    evaluation = evaluate(db, loaded, checked, configured=[*rules, good])
    assert {f.rule: f.outcome for f in evaluation.failures} == {label: "error" for label in bad}
    assert "returned NoneType, not a list of Decision" in evaluation.failures[0].reason
    assert fired(evaluation) == [("good", "alert", None)]


def test_a_plugin_that_cannot_travel_to_its_process_is_an_error_not_a_crash(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [])
    checked = latency_regression(db, loaded)
    holds_a_lambda = dataclasses.replace(configured("unpicklable", _Returns(lambda: [])), isolated=True)
    evaluation = evaluate(db, loaded, checked, configured=[holds_a_lambda])
    [failure] = evaluation.failures
    assert failure.outcome == "error" and failure.reason.startswith("cannot be sent to its process")


class _Sees(Rule):
    """A rule that alerts with what it saw of the model (and of a field only the config has)."""

    name = "sees"
    description = "reports the model view"

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        m = context.model
        try:
            m.schedule  # noqa: B018 - the config's, not the view's
            beyond = "schedule seen"
        except AttributeError as exc:
            beyond = str(exc)
        return [Decision("alert", "seen", details={"view": [m.name, m.device, list(m.series_batch_sizes),
                                                            list(m.owners), dict(m.slo), list(m.tags)],
                                                   "beyond": beyond})]


def test_a_rule_sees_a_view_of_the_model_and_a_clear_error_for_what_only_the_config_has(
    db: Database, tmp_path: Path
) -> None:
    loaded = rules_config(tmp_path, [], batch_sizes=[2, 8], owners=["vision@example.com"],
                          slo={"latency_ms_p99": 5.0}, tags=["vision", "tier:1"])
    checked = latency_regression(db, loaded)
    [seen] = evaluate(db, loaded, checked, configured=[configured("sees", _Sees(_Sees.Params()))]).fired
    assert seen.decision.details["view"] == [MODEL, "cpu", [2, 8], ["vision@example.com"],
                                             {"latency_ms_p99": 5.0}, ["vision", "tier:1"]]
    assert "RuleContext.model has no 'schedule'" in seen.decision.details["beyond"]


def test_rules_run_by_priority_then_config_order(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [])
    checked = latency_regression(db, loaded)
    rules = [configured(name, _Returns([Decision("alert", name)]), priority=p, index=i)
             for i, (name, p) in enumerate([("low", -1), ("first-zero", 0), ("high", 10), ("second-zero", 0)])]
    assert [f.rule for f in evaluate(db, loaded, checked, configured=rules).fired] == [
        "high", "first-zero", "second-zero", "low"]


def test_rules_apply_only_to_their_models(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [{"use": "latency_drift", "models": [MODEL]}])
    checked = latency_regression(db, loaded)
    assert evaluate_model(db, loaded, "other", [], []).fired == []
    assert len(evaluate(db, loaded, checked).fired) == 2


# cooldown and hysteresis --------------------------------------------------------------------------


def test_one_regression_gives_one_alert_and_one_requantize_over_many_evaluations(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [{"use": "latency_drift", "cooldown": "1h"}], batch_sizes=[8, 16])
    checked = latency_regression(db, loaded)
    runs = configured_rules(loaded.config)
    for hour in range(0, 30, 3):  # well past the cooldown: the key is what stops it
        evaluate(db, loaded, checked, NOW + timedelta(hours=hour), configured=runs)
    events = rule_events.events(db, MODEL)
    assert sorted(e.outcome for e in events) == ["alert", "requantize"]
    assert {e.key for e in events} == {f"finding:{f.id}" for f in checked.findings if f.metric == "latency_ms_p50"}


def test_a_second_finding_waits_for_the_cooldown(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [{"use": "latency_drift", "cooldown": "6h"}], batch_sizes=[8, 16])
    first = latency_regression(db, loaded, batch_size=8)
    assert [a for _, a, _ in fired(evaluate(db, loaded, first))] == ["alert", "requantize"]
    second = latency_regression(db, loaded, batch_size=16, seed=1)
    new_key = next(f"finding:{f.id}" for f in second.new if f.metric == "latency_ms_p50")
    within = evaluate(db, loaded, second, NOW + timedelta(hours=5))
    assert within.fired == [] and within.suppressed == 4  # both findings' alert and requantize
    after = evaluate(db, loaded, second, NOW + timedelta(hours=6, minutes=1))
    assert fired(after) == [("latency_drift", "alert", new_key), ("latency_drift", "requantize", new_key)]
    assert evaluate(db, loaded, second, NOW + timedelta(hours=20)).fired == []


def test_each_configured_entry_of_a_rule_has_its_own_memory(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [{"use": "latency_drift"}, {"use": "latency_drift", "params": {"actions": ["alert"]}}])
    checked = latency_regression(db, loaded)
    assert [(r, a) for r, a, _ in fired(evaluate(db, loaded, checked))] == [
        ("latency_drift", "alert"), ("latency_drift", "requantize"), ("latency_drift#2", "alert")]


def test_keyless_decisions_are_limited_by_the_cooldown_alone(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [])
    checked = latency_regression(db, loaded)
    rule = [configured("nag", _Returns([Decision("alert", "look"), Decision("prune", "and prune")]), cooldown_s=3600)]
    assert len(evaluate(db, loaded, checked, configured=rule).fired) == 2
    assert evaluate(db, loaded, checked, NOW + timedelta(minutes=59), configured=rule).fired == []
    assert len(evaluate(db, loaded, checked, NOW + timedelta(minutes=61), configured=rule).fired) == 2


def test_failures_do_not_start_a_cooldown(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [])
    checked = latency_regression(db, loaded)
    calls = iter([None, [Decision("alert", "now it works")]])
    rule = [configured("flaky", _Returns(lambda: next(calls)))]
    assert [f.outcome for f in evaluate(db, loaded, checked, configured=rule).failures] == ["error"]
    assert len(evaluate(db, loaded, checked, NOW + timedelta(minutes=1), configured=rule).fired) == 1


# stored events ------------------------------------------------------------------------------------


def test_fired_decisions_carry_their_event_ids_and_can_be_linked_to_an_action(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [{"use": "latency_drift", "params": {"recipes": ["dynamic_int8"]}}])
    checked = latency_regression(db, loaded)
    alert, requantize = evaluate(db, loaded, checked).fired
    events = {e.id: e for e in rule_events.events(db, MODEL)}
    stored = events[requantize.event_id]
    assert (stored.outcome, stored.key, stored.finding_id, stored.rule) == (
        "requantize", requantize.decision.key, requantize.decision.finding_id, "latency_drift")
    assert stored.details["recipes"] == ["dynamic_int8"] and stored.created_at == NOW
    with db.session() as session:
        variant_id = session.scalars(select(VariantRow.id)).first()
        action = ActionRow(model_id=session.scalars(select(VariantRow.model_id)).first(), kind="requantize",
                           trigger="latency_drift", finding_id=stored.finding_id, from_variant_id=variant_id,
                           status="rejected", reason="no candidate was faster", candidates=[])
        session.add(action)
        session.flush()
        action_id = action.id
    rule_events.link_action(db, requantize.event_id, action_id)
    linked = {e.id: e for e in rule_events.events(db, MODEL)}
    assert linked[requantize.event_id].action_id == action_id and linked[alert.event_id].action_id is None
    with pytest.raises(KeyError):
        rule_events.link_action(db, 999_999, action_id)


def test_events_are_listed_newest_first_per_model(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [])
    checked = latency_regression(db, loaded)
    rule = [configured("tick", _Returns([Decision("alert", "tick")]), cooldown_s=1)]
    for minute in range(3):
        evaluate(db, loaded, checked, NOW + timedelta(minutes=minute), configured=rule)
    listed = rule_events.events(db, MODEL, limit=2)
    assert [e.created_at for e in listed] == [NOW + timedelta(minutes=2), NOW + timedelta(minutes=1)]
    assert rule_events.events(db, "other") == [] and len(rule_events.events(db)) == 3
    assert listed[0].to_json()["created_at"] == (NOW + timedelta(minutes=2)).isoformat()


def test_perfguard_rules_shows_each_models_latest_events(tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [{"use": "latency_drift"}])
    with Database.open(loaded.storage_url()) as database:
        evaluate(database, loaded, latency_regression(database, loaded))
    result = perfguard("rules", "--json", config=loaded.path)
    assert result.returncode == 0, result
    assert [e["outcome"] for e in result.json()["events"][MODEL]] == ["requantize", "alert"]
    text = perfguard("rules", config=loaded.path)
    assert "requantize" in text.stdout and "latency_ms_p50 of m baseline/cpu/b8 rose" in text.stdout
