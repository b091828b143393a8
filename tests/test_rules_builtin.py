"""Each built-in rule acts on the data it is meant for and stays silent on the rest, on stored runs and
findings from real detection (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from monitor.detection.check import CheckResult, check_model
from rules.api import Decision
from rules.discovery import configured_rules
from rules.engine import build_context, evaluate_model
from storage import findings as store
from storage.db import Database
from storage.queries import save_runs
from tests.rules_helpers import MODEL, rules_config, run, store_steps
from tests.storage_helpers import T0, saved

NOW = T0 + timedelta(days=2)


def decide(db: Database, tmp_path: Path, rule: dict[str, Any], **model_fields: Any) -> tuple[list[Decision], CheckResult]:
    """Detection over the stored runs, then one call of the configured rule on the stored data."""
    loaded = rules_config(tmp_path, [rule], **model_fields)
    checked = check_model(db, loaded, MODEL, loaded.config.models[0])
    context = build_context(db, loaded, MODEL, checked.findings, [f.id for f in checked.new if f.id], NOW)
    assert context is not None
    (configured,) = configured_rules(loaded.config)
    return list(configured.rule.evaluate(context)), checked


def finding_of(checked: CheckResult, metric: str) -> Any:
    (found,) = [f for f in checked.findings if f.metric == metric and f.state == "open"]
    return found


def actions(decisions: Sequence[Decision]) -> list[tuple[str, str | None]]:
    return [(d.action, d.key) for d in decisions]


# latency_drift ------------------------------------------------------------------------------------


def test_latency_drift_answers_a_latency_regression_with_an_alert_and_a_requantize(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, latency_ms_p50=(1.0, 1.85))
    decisions, checked = decide(db, tmp_path, {"use": "latency_drift"})
    finding = finding_of(checked, "latency_ms_p50")
    key = f"finding:{finding.id}"
    assert actions(decisions) == [("alert", key), ("requantize", key)]
    assert all(d.finding_id == finding.id for d in decisions)
    pattern = rf"latency_ms_p50 of {MODEL} baseline/cpu/b8 rose 8\d % \((0\.99\d|1|1\.0\d) -> 1\.8\d ms\) since run {finding.change_run_id}"
    assert re.fullmatch(pattern, decisions[0].reason), decisions[0].reason
    assert decisions[0].details["metric"] == "latency_ms_p50"


def test_latency_drift_only_alerts_when_the_environment_caused_it(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, latency_ms_p50=(1.0, 1.3))
    loaded = rules_config(tmp_path, [{"use": "latency_drift"}])
    finding = finding_of(check_model(db, loaded, MODEL, None), "latency_ms_p50")
    store.set_cause(db, finding.id, "environment", {"r0": 1.0, "r1": 1.0})
    decisions, _ = decide(db, tmp_path, {"use": "latency_drift"})
    assert actions(decisions) == [("alert", f"finding:{finding.id}")]
    assert "cause environment" in decisions[0].reason and "cannot fix its environment" in decisions[0].reason
    told, _ = decide(db, tmp_path, {"use": "latency_drift", "params": {"act_on_environment": True}})
    assert [d.action for d in told] == ["alert", "requantize"]


def test_latency_drift_ignores_improvements_small_changes_and_other_metrics(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, latency_ms_p50=(1.0, 0.8), peak_rss_mb=(300, 400))  # faster; more memory
    decisions, checked = decide(db, tmp_path, {"use": "latency_drift"})
    assert {f.metric for f in checked.findings} >= {"latency_ms_p50", "peak_rss_mb"}
    assert decisions == []


def test_latency_drift_min_change_and_recipes_are_honoured(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, latency_ms_p50=(1.0, 1.2))
    assert decide(db, tmp_path, {"use": "latency_drift", "params": {"min_change": 0.5}})[0] == []
    decisions, _ = decide(db, tmp_path, {"use": "latency_drift", "params": {"recipes": ["dynamic_int8"]}})
    assert [d.recipes for d in decisions] == [(), ("dynamic_int8",)]


# slo_breach ---------------------------------------------------------------------------------------


def slo_rule(**params: Any) -> dict[str, Any]:
    return {"use": "slo_breach", "params": params} if params else {"use": "slo_breach"}


def test_slo_breach_fires_once_per_episode_keyed_by_its_first_breaching_run(db: Database, tmp_path: Path) -> None:
    slo = {"latency_ms_p50": 1.2}
    save_runs(db, [run(i, latency_ms_p50=1.0) for i in range(10)])
    assert decide(db, tmp_path, slo_rule(), slo=slo)[0] == []
    slow = saved(db, [run(10 + i, latency_ms_p50=1.5) for i in range(5)])
    (decision,), _ = decide(db, tmp_path, slo_rule(), slo=slo)
    assert decision.action == "alert" and decision.key == f"slo:latency_ms_p50:b8:{slow[0].run_id}"
    assert "median of the last 5 runs 1.5 ms is above the SLO of 1.2 ms" in decision.reason
    assert decision.details["since_run_id"] == slow[0].run_id and len(decision.details["runs"]) == 5
    # The breach goes on: the same episode, the same key.
    save_runs(db, [run(15 + i, latency_ms_p50=1.6) for i in range(7)])
    (still,), _ = decide(db, tmp_path, slo_rule(), slo=slo)
    assert still.key == decision.key
    # Recovery, then a new breach: a new episode.
    save_runs(db, [run(22 + i, latency_ms_p50=1.0) for i in range(5)])
    assert decide(db, tmp_path, slo_rule(), slo=slo)[0] == []
    again = saved(db, [run(27 + i, latency_ms_p50=1.4) for i in range(5)])
    (new,), _ = decide(db, tmp_path, slo_rule(), slo=slo)
    assert new.key == f"slo:latency_ms_p50:b8:{again[0].run_id}"


def test_slo_breach_episode_key_holds_beyond_the_runs_in_the_context(db: Database, tmp_path: Path) -> None:
    slo = {"latency_ms_p50": 1.2}
    save_runs(db, [run(i, latency_ms_p50=1.0) for i in range(5)])
    breach = saved(db, [run(5 + i, latency_ms_p50=1.5) for i in range(260)])  # longer than RUNS_IN_CONTEXT
    (decision,), _ = decide(db, tmp_path, slo_rule(), slo=slo)
    assert decision.key == f"slo:latency_ms_p50:b8:{breach[0].run_id}"


def test_slo_breach_needs_all_its_runs_and_skips_failed_and_contended_ones(db: Database, tmp_path: Path) -> None:
    slo = {"latency_ms_p50": 1.2}
    save_runs(db, [run(i, latency_ms_p50=1.5) for i in range(4)])
    assert decide(db, tmp_path, slo_rule(), slo=slo)[0] == []  # 4 of 5 runs: not enough to judge
    save_runs(db, [run(4, status="failed"), run(5, latency_ms_p50=1.5, flags=("contended",))])
    assert decide(db, tmp_path, slo_rule(), slo=slo)[0] == []
    save_runs(db, [run(6, latency_ms_p50=1.5)])
    assert len(decide(db, tmp_path, slo_rule(), slo=slo)[0]) == 1


def test_slo_breach_median_shrugs_off_one_bad_reading_the_mean_does_not(db: Database, tmp_path: Path) -> None:
    slo = {"latency_ms_p50": 1.2}
    save_runs(db, [run(i, latency_ms_p50=v) for i, v in enumerate([1.0, 1.0, 4.0, 1.0, 1.0])])
    assert decide(db, tmp_path, slo_rule(), slo=slo)[0] == []
    (decision,), _ = decide(db, tmp_path, slo_rule(statistic="mean"), slo=slo)
    assert "mean of the last 5 runs 1.6 ms" in decision.reason


def test_slo_breach_lower_bounds_batch_sizes_and_metric_filter(db: Database, tmp_path: Path) -> None:
    slo = {"throughput_per_s": 5000.0, "latency_ms_p50": 10.0}
    save_runs(db, [run(i, batch_size=b, latency_ms_p50=1.0, throughput_per_s=4000.0 if b == 16 else 8000.0)
                   for i in range(5) for b in (8, 16)])
    (decision,), _ = decide(db, tmp_path, slo_rule(), slo=slo, batch_sizes=[8, 16])
    assert decision.key is not None and decision.key.startswith("slo:throughput_per_s:b16:")
    assert "is below the SLO of 5,000/s" in decision.reason
    only_latency, _ = decide(db, tmp_path, slo_rule(metrics=["latency_ms_p50"]), slo=slo, batch_sizes=[8, 16])
    assert only_latency == []


# memory_growth, throughput_drop, accuracy_drop, energy_drift ----------------------------------------


def test_memory_growth_alerts_on_a_lasting_step_past_its_threshold(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, latency_ms_p50=(1.0, 1.0), peak_rss_mb=(300.0, 360.0), cuda_peak_mem_mb=(100.0, 107.0))
    decisions, checked = decide(db, tmp_path, {"use": "memory_growth"})
    rss = finding_of(checked, "peak_rss_mb")
    finding_of(checked, "cuda_peak_mem_mb")  # detected (+7 %) but under the rule's 10 %
    assert actions(decisions) == [("alert", f"finding:{rss.id}")]
    assert decisions[0].reason.startswith(f"peak_rss_mb of {MODEL} baseline/cpu/b8 rose 20 % (")
    assert " MB) since run " in decisions[0].reason


def test_throughput_drop_alerts_on_a_drop_not_a_rise(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, throughput_per_s=(8000.0, 7000.0))
    decisions, checked = decide(db, tmp_path, {"use": "throughput_drop"})
    assert actions(decisions) == [("alert", f"finding:{finding_of(checked, 'throughput_per_s').id}")]
    assert "fell 12 %" in decisions[0].reason


def test_throughput_drop_is_silent_when_throughput_rises(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, throughput_per_s=(8000.0, 9500.0))
    decisions, checked = decide(db, tmp_path, {"use": "throughput_drop"})
    assert finding_of(checked, "throughput_per_s").verdict == "improvement" and decisions == []


def test_accuracy_drop_uses_an_absolute_drop_of_the_medians(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, cv=0.001, accuracy=(0.97, 0.95))
    decisions, checked = decide(db, tmp_path, {"use": "accuracy_drop"})
    assert actions(decisions) == [("alert", f"finding:{finding_of(checked, 'accuracy').id}")]
    assert decide(db, tmp_path, {"use": "accuracy_drop", "params": {"min_drop": 0.03}})[0] == []


def test_energy_drift_acts_on_gpu_models_only(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, device="cuda", energy_j_per_inference=(0.07, 0.09))
    decisions, checked = decide(db, tmp_path, {"use": "energy_drift"}, device="cuda")
    assert actions(decisions) == [("alert", f"finding:{finding_of(checked, 'energy_j_per_inference').id}")]
    assert decide(db, tmp_path, {"use": "energy_drift"}, device="cpu")[0] == []
    assert decide(db, tmp_path, {"use": "energy_drift", "params": {"min_change": 0.5}}, device="cuda")[0] == []


def test_a_built_in_rule_through_the_engine_stores_what_fired(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 6, peak_rss_mb=(300.0, 400.0))
    loaded = rules_config(tmp_path, [{"use": "memory_growth"}])
    checked = check_model(db, loaded, MODEL, None)
    evaluation = evaluate_model(db, loaded, MODEL, checked.findings, [f.id for f in checked.new if f.id], now=NOW)
    (fired,) = evaluation.fired
    assert (fired.rule, fired.decision.action, fired.model) == ("memory_growth", "alert", MODEL)
    assert evaluation.failures == [] and evaluation.skipped == []


def test_flat_history_gives_no_decisions(db: Database, tmp_path: Path) -> None:
    store_steps(db, 30, 0, latency_ms_p50=(1.0, 1.0), peak_rss_mb=(300.0, 300.0),
                throughput_per_s=(8000.0, 8000.0), accuracy=(0.97, 0.97))
    for use in ("latency_drift", "memory_growth", "throughput_drop", "accuracy_drop", "energy_drift"):
        assert decide(db, tmp_path, {"use": use})[0] == [], use
