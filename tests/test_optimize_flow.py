"""The whole loop with real workers: a model drifts, a rule fires, the diagnosis names the grown
layer, a re-quantized candidate is measured, kept, benchmarked from then on, and rolled back; a
recipe that destroys accuracy is refused with its numbers; a dry run decides without promoting."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.config import LoadedConfig, load_config
from monitor.detection.attribution import confirm_pending, ensure_references
from monitor.detection.check import check_model
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize.action import OptimizeRequest, optimize
from monitor.optimize.rollback import damaged_weights
from monitor.registry import active_variant
from monitor.service.benchmark import benchmark_models
from monitor.service.respond import respond
from storage import actions as actions_store
from storage import findings as findings_store
from storage import rule_events
from storage.db import Database
from storage.queries import save_runs
from tests.cli_helpers import TESTS_DIR, perfguard, tiny_model, write_config
from tests.test_detection_check import levels, run
from tests.workloads import DRIFT_VERSION_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timing]


@pytest.fixture(autouse=True)
def workloads_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # workers inherit it


def drifty(tmp_path: Path, extra: str = "", **fields: object) -> LoadedConfig:
    """The drifting MLP on one intra-op thread: with two, a neighbour busy on one of the host's two
    cores stalls every parallel region, and no budget this small tells 2x apart from the noise
    (perfguard then rightly refuses to decide; these tests are about the loop, not the host)."""
    model = tiny_model("drifty", factory="workloads:drifting_mlp", inputs=[{"shape": [32, 512]}], max_time_s=1.0,
                       threads=1, **fields)
    return load_config(write_config(tmp_path / "perfguard.toml", [model], extra=extra))


def set_version(tmp_path: Path, version: int) -> None:
    (tmp_path / DRIFT_VERSION_FILE).write_text(str(version))


def regressed_history(db: Database) -> None:
    """30 stored runs at one level, then 5 at twice it, after the real runs: a p50 regression."""
    later = datetime.now(UTC) + timedelta(minutes=1)
    history = [dataclasses.replace(run(i, v), model="drifty", batch_size=32, started_at=later + timedelta(minutes=i),
                                   finished_at=later + timedelta(minutes=i, seconds=1))
               for i, v in enumerate(levels(1, [(30, 1.0), (5, 2.0)]))]
    save_runs(db, history)


RULES = """
[[rules]]
use = "latency_drift"
params = { metrics = ["latency_ms_p50"] }

[optimize]
recipes = ["dynamic_int8"]
"""


def test_a_drifting_model_is_diagnosed_requantized_promoted_and_rolled_back(tmp_path: Path, workers: WorkerPool) -> None:
    set_version(tmp_path, 1)
    loaded = drifty(tmp_path, RULES, optimize={"fidelity": "relative_error"})
    with Database.open(loaded.storage_url()) as db:
        (first,) = benchmark_models(loaded, db, pool=workers)
        assert first.status == "ok", first.error
        assert len(ensure_references(db, loaded, pool=workers)) == 1  # version 1, frozen
        set_version(tmp_path, 2)  # a new checkpoint: the hidden layer grows from 512 to 2048
        regressed_history(db)
        result = check_model(db, loaded, "drifty", loaded.config.models[0])
        confirm_pending(db, loaded, result.findings, pool=workers)
        latency = next(f for f in findings_store.findings(db, "drifty", state="open") if f.metric == "latency_ms_p50")
        assert latency.cause == "model", latency.confirmation

        findings = findings_store.findings(db, "drifty")
        response = respond(db, loaded, "drifty", findings, {latency.id} if latency.id else set(), pool=workers)

        assert [d.decision.action for d in response.evaluation.fired] == ["alert", "requantize"]
        (action,) = response.actions
        diagnosis = action.diagnosis
        assert diagnosis is not None and diagnosis["grown"][0]["op"] == "aten::addmm"
        assert any("2048" in shapes for shapes in diagnosis["grown"][0]["new_shapes"]), diagnosis
        stored = findings_store.findings(db, "drifty")
        assert next(f for f in stored if f.id == latency.id).diagnosis == diagnosis  # kept with the finding

        assert action.status == "accepted", action.reason
        (candidate,) = action.candidates
        assert candidate["recipe"] == "dynamic_int8" and candidate["accepted"]
        assert candidate["speedup"] >= 1.1 and candidate["ratio_ci95"][1] < 1.0
        assert candidate["fidelity"]["value"] <= 0.05
        assert candidate["size_mb"] < candidate["current_size_mb"] / 2
        events = rule_events.events(db, "drifty")
        assert {e.outcome for e in events if e.action_id == action.id} == {"alert", "requantize"}

        with db.session(readonly=True) as session:
            spec = active_variant(session, "drifty")
        assert spec.name == "baseline+dynamic_int8" and spec.weights_path and Path(spec.weights_path).exists()
        (promoted,) = benchmark_models(loaded, db, pool=workers)  # the scheduler now benchmarks the new variant
        assert promoted.status == "ok" and promoted.variant == "baseline+dynamic_int8", promoted.error
        assert promoted.metrics.model_size_mb is not None and promoted.metrics.model_size_mb < 2.5

        again = respond(db, loaded, "drifty", findings_store.findings(db, "drifty"), set(), pool=workers)
        assert again.actions == []  # one regression, one action

        weights = Path(spec.weights_path)
        good = weights.read_bytes()
        weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one flipped bit
        (refused,) = benchmark_models(loaded, db, pool=workers)
        assert refused.status == "failed" and "does not match its recorded sha256" in (refused.error or "")
        assert damaged_weights(refused.error)  # the words the daemon's automatic fallback looks for
        weights.write_bytes(good)

        back = perfguard("rollback", "drifty", "--json", config=loaded.path)
        assert back.returncode == 0, back
        assert back.json()["to_variant"] == "baseline"
        (restored,) = benchmark_models(loaded, db, pool=workers)
        assert restored.variant == "baseline"
        listed = perfguard("actions", "drifty", "--json", config=loaded.path).json()
        assert [a["kind"] for a in listed] == ["rollback", "requantize"] and listed[1]["rolled_back_at"]


def test_a_destructive_recipe_is_refused_with_numbers_and_a_dry_run_promotes_nothing(tmp_path: Path, workers: WorkerPool) -> None:
    set_version(tmp_path, 2)
    loaded = drifty(tmp_path, eval="workloads:mlp_eval", optimize={"accuracy_tolerance": 0.05})
    with Database.open(loaded.storage_url()) as db:
        pruned = optimize(db, loaded, OptimizeRequest(
            model="drifty", action="prune", recipes=("prune_structured",),
            params={"prune_structured": {"amount": 0.9}},
        ), pool=workers)
        assert pruned.status == "rejected"
        (candidate,) = pruned.candidates
        assert candidate["current_accuracy"] == 1.0 and candidate["accuracy"] < 0.9
        assert any("accuracy" in reason and "over the tolerance 0.05" in reason for reason in candidate["reasons"])
        assert "accuracy" in pruned.reason

        dry = optimize(db, loaded, OptimizeRequest(model="drifty", recipes=("dynamic_int8",), dry_run=True), pool=workers)
        assert dry.status == "dry_run", dry.reason
        with db.session(readonly=True) as session:
            assert active_variant(session, "drifty").name == "baseline"
        assert [a.status for a in actions_store.actions(db, "drifty")] == ["dry_run", "rejected"]
        cli = perfguard("optimize", "drifty", "--recipe", "prune_l1_unstructured", "--json", config=loaded.path)
        assert cli.returncode == 0, cli
        assert cli.json()["status"] == "rejected"  # zeros in dense kernels: no faster
