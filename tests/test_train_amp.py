"""Autocast for the training step: candidates timed interleaved with the configured step in the worker,
each on its own copy, judged on speed and on the loss they reach; stored as advice (an "amp" action)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.core.workloads import amp_modes
from monitor.harness.cpu_info import cpu_flags
from monitor.optimize.train_amp import (
    StepVerdict,
    TrainCompareError,
    compare_training,
    judge_step,
    record_advice,
)
from storage.actions import actions
from storage.db import Database
from tests.cli_helpers import TESTS_DIR, perfguard, tiny_model, write_config

TRAIN = {"loss": "cross_entropy", "optimizer": "sgd", "lr": 0.1}


def verdict(ratio: float | None, ci: tuple[float, float] | None, losses: list[float]) -> StepVerdict:
    return judge_step(StepVerdict("amp_bf16", "bf16", 1.0, 2.0, ratio, ci, losses, [2.0, 1.5, 1.2]), 0.10, 0.05)


def test_a_candidate_is_worth_it_only_faster_significantly_and_training_the_same_way() -> None:
    assert verdict(0.5, (0.45, 0.55), [2.0, 1.5, 1.21]).accepted
    slow = verdict(9.8, (9.5, 10.1), [2.0, 1.5, 1.2])
    assert not slow.accepted and slow.reasons == ["step time 0.10x, below the required 1.10x"]
    assert verdict(0.5, (0.3, 1.02), [2.0, 1.5, 1.2]).reasons == [
        "step time gain not significant (ratio 95 % CI 0.300-1.020 includes 1)"]
    assert verdict(0.5, None, [2.0, 1.5, 1.2]).reasons == [
        "too few interleaved rounds for a 95 % interval of the step time ratio"]
    drifted = verdict(0.5, (0.45, 0.55), [2.0, 1.7, 1.5])
    assert drifted.reasons == ["loss after 3 steps 1.5 vs 1.2: 0.250 apart, over the tolerance 0.05"]
    assert verdict(0.5, (0.45, 0.55), [2.0, math.nan, math.nan]).reasons == ["the loss became NaN or infinite"]


def test_the_cli_times_an_autocast_candidate_against_the_configured_step_in_the_worker(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m", train=TRAIN, max_time_s=0.6)])
    done = perfguard("optimize", "m", "--train", "--amp", "bf16", "--json", config=config)
    assert done.returncode == 0, done
    action = done.json()
    [bf16] = action["candidates"]
    assert bf16["label"] == "amp_bf16" and bf16["details"]["amp"] == "bf16" and bf16["details"]["mode"] == "train"
    assert bf16["p50_ms"] > 0 and bf16["current_p50_ms"] > 0 and bf16["ratio_p50"] > 0
    # Both really trained, from the same weights on the same batch: five losses each, going down.
    for losses in (bf16["details"]["losses"], bf16["details"]["current_losses"]):
        assert len(losses) == 5 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    # The verdict is the one its own numbers give (on a CPU with AMX bf16 may win; elsewhere it loses).
    interval = tuple(bf16["ratio_ci95"]) if bf16["ratio_ci95"] else None
    mine = judge_step(StepVerdict("amp_bf16", "bf16", None, None, bf16["ratio_p50"], interval,
                                  bf16["details"]["losses"], bf16["details"]["current_losses"]), 0.10, 0.05)
    assert bf16["accepted"] == mine.accepted and bf16["reasons"] == mine.reasons
    # Stored as advice on the baseline: nothing promoted, the history shows it like any action.
    assert action["kind"] == "amp" and action["status"] == ("advised" if mine.accepted else "rejected")
    assert action["from_variant"] == "baseline" and action["to_variant"] is None and action["id"]
    stored = perfguard("actions", "m", "--json", config=config).json()
    assert [(a["id"], a["kind"], a["status"]) for a in stored] == [(action["id"], "amp", action["status"])]


def test_a_comparison_whose_worker_fails_exits_2_with_the_cause_not_the_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m", train=TRAIN, device="cuda:7")])
    done = perfguard("optimize", "m", "--train", "--amp", "fp16", config=config)
    assert done.returncode == 2, done
    assert "Error: the comparison failed: DeviceUnavailable: device 'cuda:7': torch " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_advice_names_the_fastest_candidate_that_passed_and_the_setting_to_take(tmp_path: Path) -> None:
    loaded = load_config(write_config(tmp_path / "perfguard.toml", [tiny_model("m", train=TRAIN)]))
    fp16 = replace(verdict(0.8, (0.75, 0.85), [2.0, 1.5, 1.2]), label="amp_fp16", amp="fp16")
    bf16, slow = verdict(0.5, (0.45, 0.55), [2.0, 1.5, 1.2]), verdict(9.8, (9.5, 10.1), [2.0, 1.5, 1.2])
    with Database.open(loaded.storage_url()) as db:
        advised = record_advice(db, loaded, "m", [fp16, bf16])
        refused = record_advice(db, loaded, "m", [slow])
        untried = record_advice(db, loaded, "m", [])
        assert [a.id for a in actions(db, "m")] == [untried.id, refused.id, advised.id]
    assert untried.status == "rejected" and untried.reason.startswith("no autocast mode suits cpu here")
    assert advised.status == "advised" and advised.reason.startswith("amp_bf16: the training step 2.00x faster")
    assert advised.reason.endswith('set train.amp = "bf16"') and len(advised.candidates) == 2
    assert refused.status == "rejected" and refused.reason == "amp_bf16: step time 0.10x, below the required 1.10x"


def test_by_default_only_the_modes_this_device_suits_are_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))
    loaded = load_config(write_config(tmp_path / "perfguard.toml", [tiny_model("m", train=TRAIN)]))
    verdicts = compare_training(loaded, "m")
    assert [v.amp for v in verdicts] == amp_modes("cpu", cpu_flags())
    assert amp_modes("cuda", []) == ["bf16", "fp16"] and amp_modes("cpu", ["avx2"]) == []


def test_a_model_without_a_training_step_is_refused_by_name(tmp_path: Path) -> None:
    loaded = load_config(write_config(tmp_path / "perfguard.toml", [tiny_model("m", train="workloads:tiny")]))
    with pytest.raises(TrainCompareError, match="model 'm' has no training step to compare: give it a train table"):
        compare_training(loaded, "m")
