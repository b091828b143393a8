"""Rule plugins are plain packages found through their `perfguard.rules` entry points: installed for
real with pip, listed by `perfguard rules`, reported (never crashing anything) when broken, and
evaluated like built-ins."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from rules.discovery import BUILTIN_ORIGIN, available_rules
from rules.engine import evaluate_model
from storage.db import Database
from storage.queries import save_runs
from tests.cli_helpers import TESTS_DIR, perfguard, tiny_model, write_config
from tests.rules_helpers import (
    MODEL,
    install_plugins,
    plugins_on_path,
    rules_config,
    rules_toml,
    run,
)
from tests.storage_helpers import T0, saved

TEAM_ORIGIN = "team-rules 1.2.0"
BROKEN_ORIGIN = "broken-rules 0.1.0"


@pytest.fixture
def installed(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The plugins installed, on the PYTHONPATH of `perfguard` subprocesses."""
    folder = install_plugins(tmp_path_factory)
    monkeypatch.setenv("PYTHONPATH", str(folder))
    return folder


@pytest.fixture
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The plugins installed and importable in this process."""
    yield from plugins_on_path(install_plugins(tmp_path_factory))


def config_file(tmp_path: Path, rules: list[dict[str, object]]) -> Path:
    return write_config(tmp_path / "perfguard.toml", [tiny_model(MODEL)], extra=rules_toml(rules))


def test_perfguard_rules_lists_an_installed_plugin_with_its_origin_and_params(installed: Path, tmp_path: Path) -> None:
    result = perfguard("rules", "--json", config=config_file(tmp_path, [{"use": "p99_guard", "params": {"runs": 2}}]))
    assert result.returncode == 0, result
    listing = result.json()
    by_name = {(r["name"], r["origin"]): r for r in listing["available"]}
    guard = by_name["p99_guard", TEAM_ORIGIN]
    assert guard["error"] is None and guard["description"].startswith("alert when p99 latency runs away")
    assert [(p["name"], p["type"], p["default"]) for p in guard["params"]] == [("max_ratio", "float", 3.0),
                                                                              ("runs", "int", 3)]
    assert all(p["description"] for p in guard["params"])
    assert by_name["latency_drift", BUILTIN_ORIGIN]["error"] is None
    (entry,) = listing["configured"]
    assert (entry["use"], entry["label"], entry["origin"], entry["params"]) == (
        "p99_guard", "p99_guard", TEAM_ORIGIN, {"max_ratio": 3.0, "runs": 2})
    assert (entry["cooldown"], entry["cooldown_s"], entry["timeout_s"], entry["models"]) == ("6h", 21600.0, 10.0, None)
    assert listing["events"] == {}
    assert not (tmp_path / "perfguard.db").exists()  # listing does not create a database


def test_broken_plugins_are_reported_not_fatal(installed: Path, tmp_path: Path) -> None:
    result = perfguard("rules", "--json", config=config_file(tmp_path, []))
    assert result.returncode == 0, result
    broken = {r["name"]: r for r in result.json()["available"] if r["origin"] == BROKEN_ORIGIN}
    assert "perfguard_no_such_dependency" in broken["cannot_import"]["error"]
    assert "not a subclass of rules.api.Rule" in broken["not_a_rule"]["error"]
    assert broken["latency_drift"]["error"].startswith("shadowed: a built-in rule is named 'latency_drift'")
    text = perfguard("rules", config=config_file(tmp_path, []))
    assert text.returncode == 0 and "UNUSABLE: cannot import" in text.stdout and "p99_guard" in text.stdout


def test_a_config_using_a_broken_or_misconfigured_plugin_exits_2_naming_the_field(installed: Path, tmp_path: Path) -> None:
    result = perfguard("rules", config=config_file(tmp_path, [{"use": "cannot_import"}]))
    assert result.returncode == 2
    assert "perfguard.toml: rules[0].use: rule 'cannot_import' cannot be used: cannot import" in result.stderr
    result = perfguard("models", config=config_file(tmp_path, [{"use": "p99_guard", "params": {"max_ratio": 0.5}}]))
    assert result.returncode == 2
    assert "perfguard.toml: rules[0].params.max_ratio: Input should be greater than 1" in result.stderr
    assert not (tmp_path / "perfguard.db").exists()  # refused before the database is opened


def test_a_plugin_shadowing_a_built_in_loses_to_it(plugins: Path, db: Database, tmp_path: Path) -> None:
    infos = [r for r in available_rules() if r.name == "latency_drift"]
    assert [(r.origin, r.error is None) for r in infos] == [(BUILTIN_ORIGIN, True), (BROKEN_ORIGIN, False)]
    loaded = rules_config(tmp_path, [{"use": "latency_drift"}])
    save_runs(db, [run(i, latency_ms_p50=1.0) for i in range(3)])
    # The shadow would prune on every call; the built-in sees no regression and stays silent.
    assert evaluate_model(db, loaded, MODEL, [], []).fired == []


def test_p99_guard_fires_once_per_tail_latency_episode(plugins: Path, db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [{"use": "p99_guard", "params": {"max_ratio": 2.5, "runs": 3}}])
    save_runs(db, [run(i, latency_ms_p50=1.0, latency_ms_p99=1.5) for i in range(5)])
    now = T0 + timedelta(days=1)
    assert evaluate_model(db, loaded, MODEL, [], [], now=now).fired == []
    tail = saved(db, [run(5 + i, latency_ms_p50=1.0, latency_ms_p99=4.0) for i in range(3)])
    (fired,) = evaluate_model(db, loaded, MODEL, [], [], now=now).fired
    assert fired.rule == "p99_guard" and fired.decision.key == f"p99_guard:b8:{tail[0].run_id}"
    assert fired.decision.reason.startswith(f"p99 of {MODEL} b8 is 4.0x its p50 in the last 3 runs")
    save_runs(db, [run(8, latency_ms_p50=1.0, latency_ms_p99=4.2)])
    later = evaluate_model(db, loaded, MODEL, [], [], now=now + timedelta(days=1))
    assert later.fired == [] and later.suppressed == 1  # the same episode: already answered


def test_the_readme_shows_the_example_plugin_as_it_is() -> None:
    readme = (TESTS_DIR.parent / "README.md").read_text(encoding="utf-8")
    for part in ("pyproject.toml", "team_rules/p99_guard.py"):
        text = (TESTS_DIR / "plugins" / "team_rules" / part).read_text(encoding="utf-8")
        assert f"\n{text}```\n" in readme, f"README's copy of {part} is out of date"
