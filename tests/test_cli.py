"""The command line as scripts rely on it: JSON on stdout and nothing else, exit codes, stored history.

Everything here runs the real `perfguard` console script in a subprocess against a real SQLite file,
with real worker processes benchmarking the cheap models of `workloads.py` on a tiny budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import FAST_HARNESS, CliResult, perfguard, tiny_model, write_config

MIN_SAMPLES = FAST_HARNESS["min_samples"]

# DESIGN.md: the keys a run record in JSON must have (more are welcome).
RUN_KEYS = {"run_id", "model", "variant", "device", "batch_size", "status", "error", "started_at", "metrics", "env"}
METRIC_KEYS = {
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_std", "samples",
    "throughput_per_s", "peak_rss_mb", "cuda_peak_mem_mb", "model_size_mb", "params", "accuracy",
    "gpu_util_pct", "gpu_power_w", "energy_j_per_inference",
}
ENV_KEYS = {"torch", "python", "cpu", "gpu", "threads", "host"}


@dataclass(frozen=True)
class Suite:
    """One config of three cheap models, run whole once and one model again; read by many tests."""

    config: Path
    first: CliResult  # `run --json`: tiny (batch 8), multi (batches 2 and 8), evaluated
    second: CliResult  # `run tiny --json`

    def runs(self, model: str) -> list[dict[str, Any]]:
        return [r for r in self.first.json() if r["model"] == model]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    folder = tmp_path_factory.mktemp("suite")
    config = write_config(
        folder / "perfguard.toml",
        [
            tiny_model("tiny"),
            tiny_model("multi", batch_sizes=[2, 8]),
            tiny_model("evaluated", eval="workloads:tiny_eval", threads=1),
        ],
    )
    first = perfguard("run", "--json", config=config)
    second = perfguard("run", "tiny", "--json", config=config)
    return Suite(config, first, second)


@pytest.fixture(scope="module")
def with_failure(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CliResult]:
    """A broken model listed before a good one: the failure must not stop or hide the good run."""
    folder = tmp_path_factory.mktemp("failing")
    config = write_config(
        folder / "perfguard.toml", [tiny_model("broken", factory="workloads:raises"), tiny_model("tiny")]
    )
    return config, perfguard("run", "--json", config=config)


# --- run --json: the contract -------------------------------------------------------------------------


def test_run_json_prints_only_a_json_array_on_stdout(suite: Suite) -> None:
    assert suite.first.returncode == 0, suite.first
    records = suite.first.json()  # the whole of stdout: any stray line would fail here
    assert isinstance(records, list)
    assert [(r["model"], r["batch_size"]) for r in records] == [
        ("tiny", 8), ("multi", 2), ("multi", 8), ("evaluated", 8)
    ]
    assert suite.second.returncode == 0, suite.second
    assert [r["model"] for r in suite.second.json()] == ["tiny"]


def test_every_run_record_has_the_keys_of_the_contract(suite: Suite) -> None:
    for record in suite.first.json() + suite.second.json():
        assert RUN_KEYS <= record.keys(), RUN_KEYS - record.keys()
        assert METRIC_KEYS <= record["metrics"].keys(), METRIC_KEYS - record["metrics"].keys()
        assert ENV_KEYS <= record["env"].keys(), ENV_KEYS - record["env"].keys()


def test_a_successful_run_is_ok_with_real_measurements(suite: Suite) -> None:
    run_ids = []
    for record in suite.first.json():
        metrics = record["metrics"]
        assert (record["status"], record["error"], record["variant"], record["device"]) == ("ok", None, "baseline", "cpu")
        assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p90"] <= metrics["latency_ms_p99"]
        assert metrics["samples"] >= MIN_SAMPLES
        assert metrics["throughput_per_s"] > 0
        assert metrics["params"] == 16 * 4 + 4  # the tiny model's one Linear(16, 4)
        assert (metrics["cuda_peak_mem_mb"], metrics["gpu_util_pct"], metrics["gpu_power_w"]) == (None, None, None)
        started = datetime.fromisoformat(record["started_at"])
        assert started.utcoffset() == timedelta(0)
        assert record["env"]["torch"] and record["env"]["python"] and record["env"]["host"]
        assert record["env"]["gpu"] is None
        run_ids.append(record["run_id"])
    assert all(isinstance(i, int) for i in run_ids)
    assert run_ids == sorted(set(run_ids))


def test_progress_goes_to_stderr_and_not_to_stdout(suite: Suite) -> None:
    stderr = suite.first.stderr
    assert "[1/4] tiny batch 8: starting worker" in stderr
    assert "[3/4] multi batch 8: starting worker" in stderr
    assert "[4/4] evaluated batch 8: p50 " in stderr
    assert "starting worker" not in suite.first.stdout


def test_a_model_with_batch_sizes_gets_one_run_per_batch_size(suite: Suite) -> None:
    runs = suite.runs("multi")
    assert [r["batch_size"] for r in runs] == [2, 8]
    assert all(r["status"] == "ok" for r in runs)


def test_an_eval_iterable_gives_the_model_accuracy(suite: Suite) -> None:
    (evaluated,) = suite.runs("evaluated")
    assert evaluated["metrics"]["accuracy"] == 0.5  # workloads.tiny_eval labels half the rows wrong
    (tiny,) = suite.runs("tiny")
    assert tiny["metrics"]["accuracy"] is None


def test_a_threads_setting_is_recorded_in_the_environment(suite: Suite) -> None:
    (evaluated,) = suite.runs("evaluated")
    assert evaluated["env"]["threads"] == 1


# --- history ------------------------------------------------------------------------------------------


def test_history_returns_the_stored_runs_newest_first(suite: Suite) -> None:
    (first,) = suite.runs("tiny")
    (second,) = suite.second.json()

    result = perfguard("history", "tiny", "--json", config=suite.config)

    assert result.returncode == 0, result
    stored = result.json()
    assert [r["run_id"] for r in stored] == [second["run_id"], first["run_id"]]
    # What was printed when the run ended is what is stored.
    for printed, read_back in zip([second, first], stored):
        for key in ("model", "variant", "device", "batch_size", "status", "error", "started_at", "env"):
            assert read_back[key] == printed[key], key
        assert read_back["metrics"] == printed["metrics"]


def test_history_honours_limit(suite: Suite) -> None:
    (second,) = suite.second.json()

    result = perfguard("history", "tiny", "--limit", "1", "--json", config=suite.config)

    assert result.returncode == 0, result
    assert [r["run_id"] for r in result.json()] == [second["run_id"]]


def test_history_honours_batch_size(suite: Suite) -> None:
    by_batch = {r["batch_size"]: r["run_id"] for r in suite.runs("multi")}

    for batch_size in (2, 8):
        result = perfguard("history", "multi", "--batch-size", str(batch_size), "--json", config=suite.config)
        assert result.returncode == 0, result
        assert [(r["run_id"], r["batch_size"]) for r in result.json()] == [(by_batch[batch_size], batch_size)]

    both = perfguard("history", "multi", "--json", config=suite.config)
    assert [r["run_id"] for r in both.json()] == sorted(by_batch.values(), reverse=True)


def test_history_of_an_unknown_model_exits_2(suite: Suite) -> None:
    result = perfguard("history", "nope", "--json", config=suite.config)

    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "unknown model 'nope'" in result.stderr


def test_history_of_an_unknown_model_creates_no_database(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("tiny")])

    result = perfguard("history", "typo", config=config)

    assert result.returncode == 2, result
    assert "unknown model 'typo'" in result.stderr
    assert not list(tmp_path.glob("*.db*"))


# --- models -------------------------------------------------------------------------------------------


def test_models_json_lists_the_configured_models_with_their_active_variant(suite: Suite) -> None:
    result = perfguard("models", "--json", config=suite.config)

    assert result.returncode == 0, result
    listed = result.json()
    assert [(m["name"], m["active_variant"], m["batch_sizes"]) for m in listed] == [
        ("tiny", "baseline", [8]),
        ("multi", "baseline", [2, 8]),
        ("evaluated", "baseline", [8]),
    ]
    assert all(m["factory"] == "workloads:tiny" and m["device"] == "cpu" for m in listed)


# --- failures and exit codes ---------------------------------------------------------------------------


def test_a_failed_benchmark_exits_1_and_still_prints_json(with_failure: tuple[Path, CliResult]) -> None:
    _, result = with_failure

    assert result.returncode == 1, result
    broken, tiny = result.json()
    assert (broken["model"], broken["status"]) == ("broken", "failed")
    assert "this model is broken on purpose" in broken["error"]
    assert (tiny["model"], tiny["status"], tiny["error"]) == ("tiny", "ok", None)
    assert "broken batch 8: failed: " in result.stderr


def test_a_failed_run_is_stored_with_its_error_and_the_good_one_too(with_failure: tuple[Path, CliResult]) -> None:
    config, result = with_failure
    printed = {r["model"]: r for r in result.json()}

    for model, status in (("broken", "failed"), ("tiny", "ok")):
        history = perfguard("history", model, "--json", config=config)
        assert history.returncode == 0, history
        (stored,) = history.json()
        assert (stored["run_id"], stored["status"], stored["error"]) == (
            printed[model]["run_id"], status, printed[model]["error"]
        )
        if status == "failed":
            assert "this model is broken on purpose" in stored["error"]


def test_running_an_unknown_model_exits_2_without_opening_storage(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("tiny")])

    result = perfguard("run", "nope", "--json", config=config)

    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "unknown model 'nope'" in result.stderr and "tiny" in result.stderr
    assert not (tmp_path / "perfguard.db").exists()


def test_the_human_table_names_the_model_and_the_database(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("tiny-table")], storage_url="sqlite:///db/runs.db")

    result = perfguard("run", config=config)

    assert result.returncode == 0, result
    database = (tmp_path / "db" / "runs.db").resolve()
    assert database.exists()
    header, rule, row, *rest = result.stdout.splitlines()
    assert header.split()[:3] == ["run", "started", "(UTC)"] and "p50 ms" in header
    assert set(rule.replace(" ", "")) == {"-"}
    assert "tiny-table" in row and " ok " in row
    assert rest[-1] == f"1 run(s) stored in {database}"
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_db_upgrade_creates_a_fresh_sqlite_database(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("tiny")], storage_url="sqlite:///data/new/perf.db")
    database = tmp_path / "data" / "new" / "perf.db"
    assert not database.exists()

    result = perfguard("db", "upgrade", config=config)

    assert result.returncode == 0, result
    assert result.stdout == ""
    assert database.exists() and database.stat().st_size > 0
    assert "up to date" in result.stderr
    again = perfguard("db", "upgrade", config=config)
    assert again.returncode == 0, again
    # The upgraded database is usable at once: the configured model has no history yet.
    empty = perfguard("history", "tiny", "--json", config=config)
    assert (empty.returncode, empty.json()) == (0, [])


@pytest.mark.postgres
def test_run_and_history_against_postgresql(tmp_path: Path, pg_schema_url: str) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("tiny")], storage_url=pg_schema_url)

    upgraded = perfguard("db", "upgrade", config=config)
    ran = perfguard("run", "--json", config=config)
    read = perfguard("history", "tiny", "--json", config=config)

    assert upgraded.returncode == 0, upgraded
    assert ran.returncode == 0, ran
    assert read.returncode == 0, read
    assert [r["run_id"] for r in read.json()] == [r["run_id"] for r in ran.json()]
    assert read.json()[0]["metrics"] == ran.json()[0]["metrics"]
    assert not list(tmp_path.glob("*.db*"))  # nothing went to a SQLite file by mistake
