"""The fleet's pieces without a worker: config, idempotent storage on every backend, a dead broker."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.config import ConfigError, ExecutorConfig, load_config
from monitor.service.executors import CeleryExecutor, LocalExecutor, make_executor
from monitor.service.fleet import job_key
from storage.db import Database
from storage.queries import history, save_runs, stored_run_ids
from tests.cli_helpers import TESTS_DIR, free_port, tiny_model, write_config
from tests.report_helpers import history_runs


def test_executor_config_needs_a_broker_for_celery_and_names_the_field(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", [tiny_model("m")], extra='[executor]\nkind = "celery"\n')
    with pytest.raises(ConfigError, match=r"executor.*needs a broker URL"):
        load_config(path)
    path = write_config(tmp_path / "c.toml", [tiny_model("m")], extra='[executor]\nkind = "celery"\nbroker = "http://x"\n')
    with pytest.raises(ConfigError, match=r"executor\.broker"):
        load_config(path)


def test_a_visibility_timeout_within_a_jobs_time_limit_is_refused(tmp_path: Path) -> None:
    """Redis redelivers a job unacknowledged for longer than the visibility timeout: a second worker
    would benchmark it while the first still runs it."""
    executor = '[executor]\nkind = "celery"\nbroker = "redis://127.0.0.1:6379/0"\nvisibility_timeout_s = 300\n'
    models = [tiny_model("short", timeout_s=20), tiny_model("long", batch_sizes=[1, 8], timeout_s=100)]
    with pytest.raises(ConfigError) as refused:
        load_config(write_config(tmp_path / "c.toml", models, extra=executor))
    assert len(refused.value.lines) == 1
    line = refused.value.lines[0]
    assert "executor.visibility_timeout_s: 300 s" in line and 'model "long"' in line and "(320 s" in line
    load_config(write_config(tmp_path / "c.toml", models, extra=executor.replace("300", "321")))
    shorter = executor + "follow_up_s = 60\n"  # what follows the runs, sized for these models
    load_config(write_config(tmp_path / "c.toml", models, extra=shorter))
    amqp = executor.replace("redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672//")
    load_config(write_config(tmp_path / "c.toml", models, extra=amqp))  # RabbitMQ: a server setting


def test_a_models_hardware_class_is_its_runs_on_or_its_device_kind(tmp_path: Path) -> None:
    loaded = load_config(write_config(tmp_path / "c.toml", [
        tiny_model("a"), tiny_model("b", device="cuda:1"), tiny_model("c", runs_on="gpu-h100"),
        tiny_model("d", batch_sizes=[1, 8], timeout_s=100),
    ]))
    assert [m.hardware_class for m in loaded.config.models] == ["cpu", "cuda", "gpu-h100", "cpu"]
    assert loaded.config.executor.job_limit_s(loaded.config.models[3]) == 2 * 100 + 120  # every series, then the follow-up
    assert isinstance(make_executor(loaded.config.executor, lambda name: None), LocalExecutor)


def test_a_run_stored_twice_under_one_key_is_stored_once(db_url: str) -> None:
    key = job_key("m", datetime(2026, 11, 29, 10, 0, 0, 123, tzinfo=UTC)) + "/baseline/cpu/b8"
    assert key == "m@2026-11-29T10:00:00+00:00/baseline/cpu/b8"
    first, again = ([dataclasses.replace(r, idempotency_key=key) for r in history_runs("m", 1)] for _ in range(2))
    other = history_runs("m", 1, start=datetime(2026, 11, 2, tzinfo=UTC))
    with Database.open(db_url) as db:
        [run_id] = save_runs(db, first)
        assert save_runs(db, [*again, *other]) == [run_id, run_id + 1]  # the known one is not stored again
        assert len(history(db, "m", limit=10)) == 2
        assert stored_run_ids(db, [key, "nope"]) == {key: run_id}


def test_a_dead_broker_makes_runs_wait_coalesced_and_health_say_so() -> None:
    port = free_port()  # nothing listens there
    config = ExecutorConfig(kind="celery", broker=f"redis://127.0.0.1:{port}/0", enqueue_attempts=1,
                            enqueue_backoff_s=0)
    from monitor.config import ModelConfig

    model = ModelConfig(name="m", factory="workloads:tiny", inputs=[{"shape": [4, 16]}])
    executor = CeleryExecutor(config)
    try:
        due = datetime.now(UTC)
        executor.submit(model, due)
        executor.submit(model, due + timedelta(minutes=10))  # coalesced into the waiting one
        health = executor.health()
        assert not health["healthy"] and not health["broker_reachable"]
        assert health["waiting_runs"] == ["m"] and health["enqueued"] == 0 and health["last_error"]
        executor.poll()  # still away
        assert executor.health()["waiting_runs"] == ["m"]
    finally:
        executor.shutdown()


def test_celery_tools_find_the_fleet_app_the_usual_way(tmp_path: Path) -> None:
    """`celery -A monitor.service.celery_app ...` (inspect, purge, flower) with the config from the
    environment; a config without a broker is one clear line, not a traceback."""
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m")],
                          extra='[executor]\nkind = "celery"\nbroker = "redis://127.0.0.1:6379/7"\n')
    env = dict(os.environ, PERFGUARD_CONFIG=str(config), PYTHONPATH=str(TESTS_DIR))
    purge = subprocess.run([sys.executable, "-m", "celery", "-A", "monitor.service.celery_app", "purge", "-f"],
                           env=env, capture_output=True, text=True, timeout=120, check=False)
    assert purge.returncode == 0, purge.stderr[-2000:]
    assert "purged" in (purge.stdout + purge.stderr).lower()
    local = write_config(tmp_path / "local.toml", [tiny_model("m")])
    wrong = subprocess.run([sys.executable, "-c", "import monitor.service.celery_app"],
                           env=dict(env, PERFGUARD_CONFIG=str(local)), capture_output=True, text=True, timeout=60,
                           check=False)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert 'kind = "celery"' in wrong.stderr
