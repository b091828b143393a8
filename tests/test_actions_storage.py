"""Actions and variants in the database, on every backend: promotion, rejection, rollback."""

from __future__ import annotations

import dataclasses

import pytest

from monitor.config import load_config
from monitor.core.actions import ActionRecord, Promotion, Verdict
from monitor.core.diagnosis import Diagnosis
from monitor.core.series import FindingRecord, Level, SeriesKey, SeriesState
from monitor.registry import active_variant
from monitor.service.followup import fall_back_from_damaged_weights
from storage import actions as store
from storage import queries
from storage.actions import NothingToRollBack
from storage.db import Database
from storage.findings import findings, sync_findings
from tests.cli_helpers import tiny_model, write_config
from tests.storage_helpers import T0, full_record

SPEC = {"name": "baseline+dynamic_int8", "steps": [{"recipe": "dynamic_int8", "params": {}}],
        "weights_path": "/artifacts/w.pt", "weights_sha256": "ab" * 32}


def registered(db: Database) -> None:
    with db.session() as session:
        queries.register_model(session, "m", "pkg:m", "cpu")


def action(status: str = "accepted") -> ActionRecord:
    return ActionRecord(model="m", kind="requantize", trigger="latency_drift", status=status,
                        reason="why", from_variant="baseline", candidates=[Verdict.from_dict({"label": "dynamic_int8", "recipe": "dynamic_int8", "ratio_p50": 0.4})])


def test_an_accepted_action_promotes_its_variant_with_the_numbers(db: Database) -> None:
    registered(db)
    record = store.record_action(db, action(), Promotion("baseline+dynamic_int8", "requantize", SPEC, {"speedup": 2.5}))
    assert record.id is not None and record.to_variant == "baseline+dynamic_int8"
    with db.session(readonly=True) as session:
        spec = active_variant(session, "m")
    assert spec.name == "baseline+dynamic_int8" and spec.steps[0].recipe == "dynamic_int8"
    assert spec.weights_sha256 == "ab" * 32
    (stored,) = store.actions(db, "m")
    assert stored.status == "accepted" and stored.candidates == action().candidates
    assert stored.from_variant == "baseline" and stored.to_variant == "baseline+dynamic_int8"


def test_a_rejected_action_is_stored_and_changes_nothing(db: Database) -> None:
    registered(db)
    store.record_action(db, action("rejected"))
    with db.session(readonly=True) as session:
        assert queries.active_variant(session, "m") == "baseline"
        assert store.active_spec(session, "m") is None
    assert [a.status for a in store.actions(db)] == ["rejected"]


def test_rollback_restores_the_parent_and_marks_the_promotion(db: Database) -> None:
    registered(db)
    store.record_action(db, action(), Promotion("baseline+dynamic_int8", "requantize", SPEC, {}))
    back = store.rollback(db, "m")
    assert (back.kind, back.from_variant, back.to_variant) == ("rollback", "baseline+dynamic_int8", "baseline")
    with db.session(readonly=True) as session:
        assert queries.active_variant(session, "m") == "baseline"
    rollback_row, promotion_row = store.actions(db, "m")
    assert rollback_row.kind == "rollback" and promotion_row.rolled_back_at is not None
    with pytest.raises(NothingToRollBack, match="baseline variant is active"):
        store.rollback(db, "m")


def test_names_of_new_variants_never_repeat(db: Database) -> None:
    registered(db)
    store.record_action(db, action(), Promotion("baseline+bf16", "requantize", SPEC, {}))
    store.rollback(db, "m")
    with db.session(readonly=True) as session:
        assert store.unused_variant_name(session, "m", "baseline+bf16") == "baseline+bf16-2"
        assert store.unused_variant_name(session, "m", "baseline+compile") == "baseline+compile"


def test_promotion_resolves_the_open_findings_of_the_variant_it_replaces(db: Database) -> None:
    record = full_record("m")
    run_id = queries.save_run(db, record)
    key = SeriesKey("baseline", "cpu", 32)
    found = FindingRecord(model="m", key=key, metric="latency_ms_p50", change="up", verdict="regression",
                          change_run_id=run_id, change_at=T0, before=Level.from_dict({"median": 1.0}), after=Level.from_dict({"median": 2.0}),
                          rel_change=1.0, p_value=1e-6)
    (stored,) = sync_findings(db, "m", [found], {(key, "latency_ms_p50", "absolute"): SeriesState(2.0, 0.05)}, {run_id: 0})
    assert stored.id is not None
    store.set_diagnosis(db, stored.id, Diagnosis(summary="aten::addmm +300 %"))
    store.record_action(db, action(), Promotion("baseline+dynamic_int8", "requantize", SPEC, {}))
    (after,) = findings(db, "m")
    assert after.state == "resolved" and after.resolution == "variant baseline+dynamic_int8 promoted"
    assert after.diagnosis == Diagnosis(summary="aten::addmm +300 %")


def test_a_promotion_from_a_variant_no_longer_active_is_not_carried_out(db: Database) -> None:
    registered(db)
    store.record_action(db, action(), Promotion("baseline+bf16", "requantize", SPEC, {}))
    # An action that started from the baseline finishes after bf16 was promoted: it must not win.
    late = store.record_action(db, action(), Promotion("baseline+dynamic_int8", "requantize", SPEC, {}))
    assert late.status == "failed" and "the active variant became baseline+bf16" in late.reason
    assert late.to_variant is None
    with db.session(readonly=True) as session:
        assert queries.active_variant(session, "m") == "baseline+bf16"


def test_damaged_weights_of_the_active_variant_roll_it_back_with_an_alertable_action(
        db: Database, db_url: str, tmp_path) -> None:
    """Every run of a variant whose weights fail their check would fail: the follow-up rolls back to
    the previous variant at once, as an action (which the alerts announce), and says why."""
    registered(db)
    store.record_action(db, action(), Promotion("baseline+dynamic_int8", "requantize", SPEC, {}))
    loaded = load_config(write_config(tmp_path / "c.toml", [tiny_model("m")], storage_url=db_url))
    failed = dataclasses.replace(
        full_record("m"), variant="baseline+dynamic_int8", status="failed", run_id=7,
        error=("ArtifactError: weights of variant 'baseline+dynamic_int8' /artifacts/w.pt does not match "
               "its recorded sha256 (expected abab..., found 0101...)"),
    )
    fall_back_from_damaged_weights(db, loaded, "m", [failed])
    with db.session(readonly=True) as session:
        assert queries.active_variant(session, "m") == "baseline"
    back, promoted = store.actions(db, "m")
    assert back.kind == "rollback" and back.trigger == "integrity" and promoted.rolled_back_at is not None
    assert "weights of variant baseline+dynamic_int8 failed their check (run 7)" in back.reason
    fall_back_from_damaged_weights(db, loaded, "m", [failed])  # baseline active now: nothing more to do
    assert len(store.actions(db, "m")) == 2
