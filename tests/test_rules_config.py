"""`[[rules]]` entries are validated against each rule's own params, before any database is opened:
an unknown rule, a bad or unknown param, a bad cooldown or time limit exits 2 naming `rules[i]...`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from monitor.config import ConfigError
from monitor.service.loading import load_service_config
from rules.discovery import configured_rules
from tests.cli_helpers import perfguard, tiny_model, write_config
from tests.rules_helpers import MODEL, rules_toml


def config_with(tmp_path: Path, rules: list[dict[str, Any]]) -> Path:
    return write_config(tmp_path / "perfguard.toml", [tiny_model(MODEL)], extra=rules_toml(rules))


def errors(tmp_path: Path, rules: list[dict[str, Any]]) -> list[str]:
    path = config_with(tmp_path, rules)
    with pytest.raises(ConfigError) as caught:
        load_service_config(path)
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in caught.value.lines)
    return [line[len(prefix):] for line in caught.value.lines]


CASES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "unknown-rule": (
        [{"use": "latency_drift"}, {"use": "latency_drif"}],
        "rules[1].use: unknown rule 'latency_drif'; did you mean 'latency_drift'?",
    ),
    "unknown-rule-no-hint": (
        [{"use": "zzz"}],
        "rules[0].use: unknown rule 'zzz'; available: accuracy_drop, energy_drift, latency_drift, memory_growth, "
        "slo_breach, throughput_drop",
    ),
    "param-type": (
        [{"use": "latency_drift", "params": {"min_change": "5%"}}],
        "rules[0].params.min_change: Input should be a valid number",
    ),
    "param-bool-is-no-number": (
        [{"use": "slo_breach", "params": {"last": True}}],
        "rules[0].params.last: Input should be a valid integer",
    ),
    "unknown-param": (
        [{"use": "latency_drift", "params": {"min_chnage": 0.1}}],
        "rules[0].params.min_chnage: unknown key; did you mean 'min_change'?",
    ),
    "param-range": (
        [{"use": "memory_growth", "params": {"min_change": 0}}],
        "rules[0].params.min_change: Input should be greater than 0",
    ),
    "param-choice": (
        [{"use": "slo_breach", "params": {"statistic": "mode"}}],
        "rules[0].params.statistic: Input should be 'mean' or 'median'",
    ),
    "param-list-item": (
        [{"use": "latency_drift", "params": {"actions": ["alert", "quantize"]}}],
        "rules[0].params.actions[1]: Input should be 'alert', 'requantize', 'prune' or 'distill'",
    ),
    "param-metric": (
        [{"use": "memory_growth", "params": {"metrics": ["peak_rss"]}}],
        "rules[0].params.metrics: unknown memory metric 'peak_rss'; did you mean 'peak_rss_mb'?",
    ),
    "param-recipe": (
        [{"use": "latency_drift", "params": {"recipes": ["dynamic_int"]}}],
        "rules[0].params.recipes: unknown recipe 'dynamic_int'; did you mean 'dynamic_int8'?",
    ),
    "cooldown": (
        [{"use": "latency_drift", "cooldown": "soon"}],
        "rules[0].cooldown: expected a positive duration like '30s', '10m' or '2h', got 'soon'",
    ),
    "timeout": ([{"use": "latency_drift", "timeout_s": 0}], "rules[0].timeout_s: Input should be greater than 0"),
}


@pytest.mark.parametrize(("rules", "expected"), list(CASES.values()), ids=list(CASES))
def test_a_bad_rule_entry_is_a_config_error_naming_the_field(tmp_path: Path, rules: list[dict[str, Any]], expected: str) -> None:
    assert errors(tmp_path, rules) == [expected]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = errors(tmp_path, [{"use": "latency_drift", "params": {"min_change": "x", "foo": 1}}, {"use": "nope"}])
    assert [line.split(":")[0] for line in found] == ["rules[0].params.min_change", "rules[0].params.foo", "rules[1].use"]


@pytest.mark.parametrize("command", [["rules"], ["check"]])
def test_commands_exit_2_before_opening_the_database(tmp_path: Path, command: list[str]) -> None:
    path = config_with(tmp_path, [{"use": "latency_drift"}, {"use": "latency_drif"}])
    result = perfguard(*command, config=path)
    assert result.returncode == 2, result
    assert f"{path.name}: rules[1].use: unknown rule 'latency_drif'; did you mean 'latency_drift'?" in result.stderr
    assert not (tmp_path / "perfguard.db").exists()


def test_a_good_entry_gets_defaults_params_and_labels(tmp_path: Path) -> None:
    loaded = load_service_config(config_with(tmp_path, [
        {"use": "latency_drift", "params": {"min_change": 1, "actions": ["alert"]}, "models": [MODEL]},
        {"use": "slo_breach", "priority": 3, "cooldown": "90m", "timeout_s": 2.5},
        {"use": "latency_drift"},
    ]))
    first, slo, second = configured_rules(loaded.config)
    assert (first.label, second.label, slo.label) == ("latency_drift", "latency_drift#2", "slo_breach")
    assert first.rule.params.model_dump()["min_change"] == 1.0  # an integer is a fine number
    assert first.models == frozenset({MODEL}) and second.models is None and first.applies_to(MODEL)
    assert (first.cooldown_s, first.timeout_s, first.priority) == (6 * 3600, 10.0, 0)
    assert (slo.cooldown_s, slo.timeout_s, slo.priority, slo.index) == (5400, 2.5, 3, 1)


def test_perfguard_rules_json_is_only_json(tmp_path: Path) -> None:
    result = perfguard("rules", "--json", config=config_with(tmp_path, [{"use": "slo_breach"}]))
    assert result.returncode == 0, result
    listing = result.json()
    assert {r["name"] for r in listing["available"]} >= {
        "latency_drift", "slo_breach", "memory_growth", "throughput_drop", "accuracy_drop", "energy_drift"}
    assert [c["label"] for c in listing["configured"]] == ["slo_breach"]
