"""The fleet for real: Celery workers as processes on Redis and RabbitMQ, runs in a shared PostgreSQL,
exactly once per scheduled run and series, a killed worker's job redelivered, a dead broker survived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from monitor.config import load_config
from monitor.service.executors import CeleryExecutor
from storage.db import Database
from storage.tables import ModelRow, RunRow
from tests.cli_helpers import PERFGUARD, TESTS_DIR, free_port
from tests.test_daemon import TcpProxy, http_get, start, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BROKERS = {
    "redis": "redis://127.0.0.1:6379/3",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}


def fleet_config(folder: Path, storage_url: str, broker: str, models: str, harness: str = "", **executor: object) -> Path:
    (folder / "workloads.py").unlink(missing_ok=True)
    (folder / "workloads.py").symlink_to(TESTS_DIR / "workloads.py")
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in executor.items())
    path = folder / "perfguard.toml"
    path.write_text(
        f'[storage]\nurl = "{storage_url}"\n[harness]\nmin_samples = 20\nrelative = false\n{harness}[detection]\nconfirm = false\n'
        f'[daemon]\nlisten = "127.0.0.1:{free_port()}"\nstop_timeout_s = 5\n'
        f'[executor]\nkind = "celery"\nbroker = "{broker}"\nenqueue_attempts = 2\nenqueue_backoff_s = 0.2\n{extra}'
        + textwrap.dedent(models)
    )
    return path


def model(name: str, queue: str, max_time_s: float = 0.1, batch_sizes: str = "", every: str = "1h") -> str:
    return f"""
[[models]]
name = "{name}"
factory = "workloads:tiny"
inputs = [{{ shape = [4, 16] }}]
max_time_s = {max_time_s}
runs_on = "{queue}"
schedule = {{ every = "{every}" }}
{batch_sizes}
"""


def benchmarking(proc: subprocess.Popen[str]) -> bool:
    """Whether a benchmark worker runs under this `perfguard worker` (forked from its fork server)."""
    try:
        return any(p.name() == "perfguard-work" for p in psutil.Process(proc.pid).children(recursive=True))
    except psutil.Error:
        return False


class Workers:
    """`perfguard worker` processes, each in its own process group (a SIGKILL takes its pool too)."""

    def __init__(self, config: Path):
        self.config = config
        self.procs: list[subprocess.Popen[str]] = []
        self.queues: set[str] = set()

    def start(self, queue: str) -> subprocess.Popen[str]:
        self.queues.add(queue)
        env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
        log = open(self.config.parent / f"worker-{queue}-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([PERFGUARD, "worker", "--queue", queue, "--config", str(self.config)],
                                cwd=self.config.parent, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[str]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        # Benchmark processes live in their own groups and end when they see their worker gone; wait
        # for them, so that the next test's timings do not share the CPU with a leftover.
        folder = str(self.config.parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = [p for p in psutil.process_iter(["cwd"]) if (p.info["cwd"] or "").startswith(folder)]
            if not left:
                return
            time.sleep(0.2)
        for process in left:
            process.kill()

    def delete_queues(self) -> None:
        """Leave the shared broker as it was: these tests' queues (named per test) go."""
        from kombu import Connection

        broker = load_config(self.config).config.executor.broker or ""
        with Connection(broker) as connection:
            channel = connection.default_channel
            for queue in self.queues:
                try:
                    channel.queue_delete(queue)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        if broker.startswith("redis"):
            import redis

            client = redis.Redis.from_url(broker)
            for queue in self.queues:  # kombu's bindings and unacked bookkeeping of these queues
                for key in client.scan_iter(f"*{queue}*"):
                    client.delete(key)
            client.close()

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.config.parent.glob("worker-*.log")))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Workers]]:
    made: list[Workers] = []
    yield made
    for group in made:
        group.stop_all()
        group.delete_queues()


def stored(url: str) -> list[tuple[str, str | None, dict]]:
    """(model, idempotency key, details) of every stored run."""
    with Database.open(url) as db, db.session(readonly=True) as session:
        rows = session.execute(
            select(ModelRow.name, RunRow.idempotency_key, RunRow.details).join(ModelRow, ModelRow.id == RunRow.model_id)
        )
        return [(name, key, details) for name, key, details in rows]


@pytest.mark.parametrize("broker", ["redis"])  # RabbitMQ's routing and redelivery: the killed-worker test
def test_two_workers_on_two_queues_store_each_job_once_on_the_right_queue(
    broker: str, tmp_path: Path, pg_schema_url: str, workers: list[Workers]
) -> None:
    tag = uuid.uuid4().hex[:8]
    queues = {"a": f"cpu-a-{tag}", "b": f"cpu-b-{tag}"}
    config = fleet_config(tmp_path, pg_schema_url, BROKERS[broker],
                          model("m-a", queues["a"]) + model("m-b", queues["b"]))
    group = Workers(config)
    workers.append(group)
    for queue in queues.values():
        group.start(queue)
    loaded = load_config(config)
    executor = CeleryExecutor(loaded.config.executor)
    base = datetime.now(UTC).replace(microsecond=0)
    per_model = 4  # enough to interleave the queues; the throughput is bench/scaleout.py's
    for i in range(per_model):
        for m in loaded.config.models:
            executor.submit(m, base + timedelta(seconds=i))
    executor.submit(loaded.config.models[0], base)  # the same scheduled run again: stored once
    jobs = per_model * len(loaded.config.models)
    assert executor.health()["enqueued"] == jobs + 1 and executor.health()["healthy"]
    assert wait_for(lambda: len(stored(pg_schema_url)) >= jobs, 240, step=0.5), group.logs()[-3000:]
    time.sleep(3)  # a duplicate would have arrived by now
    runs = stored(pg_schema_url)
    executor.shutdown()
    assert len(runs) == jobs and len({key for _, key, _ in runs}) == jobs
    for name, key, details in runs:
        assert key is not None and key.startswith(f"{name}@")
        assert details["executor"]["queue"] == queues[name[-1]]  # the right hardware class ran it


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_a_worker_killed_mid_benchmark_has_its_job_redelivered_and_each_series_stored_once(
    broker: str, tmp_path: Path, pg_schema_url: str, workers: list[Workers]
) -> None:
    queue = f"cpu-{uuid.uuid4().hex[:8]}"
    # Two series: the first is stored, the worker dies during the second; the job comes back. Redis
    # hands it out again after the visibility timeout, which must outlast the job's time limit (2 x 6 s
    # series, then 2 s to follow up): 16 s, the wait that makes this the suite's longest test. A
    # precision no run reaches keeps each series sampling for its whole 2 s budget, the window in which
    # the worker is killed; a series that ran past 6 s would be stored as a timeout, and count the same.
    config = fleet_config(tmp_path, pg_schema_url, BROKERS[broker],
                          model("slow", queue, max_time_s=2, batch_sizes="batch_sizes = [2, 4]\ntimeout_s = 6"),
                          harness="target_ci_rel = 0.000001\n", visibility_timeout_s=16, follow_up_s=2)
    group = Workers(config)
    workers.append(group)
    first = group.start(queue)
    loaded = load_config(config)
    executor = CeleryExecutor(loaded.config.executor)
    executor.submit(loaded.config.models[0], datetime.now(UTC))
    executor.shutdown()
    assert wait_for(lambda: len(stored(pg_schema_url)) == 1, 90, step=0.2), group.logs()[-3000:]
    assert wait_for(lambda: benchmarking(first), 30, step=0.05), group.logs()[-3000:]
    time.sleep(0.5)  # into the second series' benchmark
    group.kill(first)
    assert len(stored(pg_schema_url)) == 1
    group.start(queue)
    assert wait_for(lambda: len(stored(pg_schema_url)) == 2, 120, step=1), group.logs()[-3000:]
    time.sleep(3)
    runs = stored(pg_schema_url)
    assert len(runs) == 2 and len({key for _, key, _ in runs}) == 2
    assert "already stored as run" in group.logs()  # the redelivered job skipped the stored series


def test_a_dead_broker_keeps_the_daemon_up_and_its_run_waits_until_the_broker_returns(
    tmp_path: Path, pg_schema_url: str, workers: list[Workers]
) -> None:
    queue = f"cpu-{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy(6379)  # the broker as the daemon sees it: dead until started
    daemon_dir, worker_dir = tmp_path / "daemon", tmp_path / "worker"
    daemon_dir.mkdir()
    worker_dir.mkdir()
    daemon_config = fleet_config(daemon_dir, pg_schema_url, f"redis://127.0.0.1:{proxy.port}/3",
                                 model("m", queue, every="1h"))
    port = int(load_config(daemon_config).config.daemon.listen.rsplit(":", 1)[1])
    worker_config = fleet_config(worker_dir, pg_schema_url, BROKERS["redis"], model("m", queue))
    group = Workers(worker_config)
    workers.append(group)
    group.start(queue)
    proc = start(daemon_config)
    try:
        # The model is due at once; the broker is away: the daemon stays up and says so.
        # (503 comes first while the daemon starts; wait for the run that waits for the broker.)
        assert wait_for(lambda: json.loads(http_get(port, "/healthz")[1] or "{}").get("executor", {}).get("waiting_runs"),
                        30), proc
        code, body = http_get(port, "/healthz")
        health = json.loads(body)
        assert code == 503 and health["database_reachable"] and health["executor"]["waiting_runs"] == ["m"]
        assert not health["executor"]["broker_reachable"] and health["executor"]["last_error"]
        assert proc.poll() is None and stored(pg_schema_url) == []
        proxy.start()  # the broker is back
        assert wait_for(lambda: http_get(port, "/healthz")[0] == 200, 30)
        assert wait_for(lambda: len(stored(pg_schema_url)) == 1, 90, step=1), group.logs()[-3000:]
        # The daemon learns of the worker's run from the database: /metrics and the report.
        assert wait_for(lambda: 'perfguard_runs_total{model="m",status="ok"} 1.0' in http_get(port, "/metrics")[1], 20)
        assert wait_for(lambda: '<span class="pill pill-ok">ok</span>' in http_get(port, "/")[1], 20)
    finally:
        code, err = stop(proc)
        proxy.stop()
    assert code == 0, err
    assert "broker unavailable, run of m waits" in err and "enqueued m@" in err
