"""The daemon's own footprint: idle memory with 200 models, scheduling jitter, memory growth.

1. Idle RSS: a real `perfguard daemon` process with 200 registered models, none due (each has a
   stored run from a minute ago and an hourly schedule), measured after it settles.
2. Jitter: the daemon's scheduler (`BenchmarkScheduler`, the same class the daemon uses) with 200
   models every 2 s and a no-op benchmark that records when it started; jitter = actual start minus
   the planned one (each job's own interval grid).
3. Growth: the same scheduler for 2000 runs whose no-op benchmark does the daemon's per-run
   bookkeeping (store a full run record in SQLite, update the Prometheus gauges); RSS after the first
   200 runs against RSS at the end.

    .venv/bin/python bench/bench_daemon.py
Goals: idle RSS <= 100 MB; jitter p99 <= 0.5 s; growth <= 5 %.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from monitor.config import ModelConfig, Schedule
from monitor.core.runs import EnvFingerprint, RunMetrics, RunRecord
from monitor.service.http import RunMetricsExporter
from monitor.service.scheduler import BenchmarkScheduler
from storage.db import Database
from storage.queries import save_run, save_runs

MODEL_TOML = """
[[models]]
name = "m{i:03d}"
factory = "monitor.examples.models:mlp"
inputs = [{{ shape = [32, 1024] }}]
schedule = {{ every = "1h" }}
"""


def record(model: str, when: datetime) -> RunRecord:
    return RunRecord(model=model, variant="baseline", device="cpu", batch_size=32, status="ok",
                     started_at=when, finished_at=when + timedelta(seconds=3),
                     metrics=RunMetrics(latency_ms_p50=1.5, latency_ms_p90=1.7, latency_ms_p99=2.0, samples=500,
                                        throughput_per_s=21000.0, peak_rss_mb=250.0),
                     env=EnvFingerprint(torch="2.13.0", python="3.11", threads=2, host="bench"),
                     samples_ms=[1.5] * 500)


def idle_rss(folder: Path, models: int) -> float:
    config = folder / "perfguard.toml"
    config.write_text('[storage]\nurl = "sqlite:///idle.db"\n[daemon]\nlisten = "127.0.0.1:0"\n'
                      + "".join(MODEL_TOML.format(i=i) for i in range(models)))
    with Database.open(f"sqlite:///{folder / 'idle.db'}") as db:
        now = datetime.now(UTC) - timedelta(minutes=1)
        save_runs(db, [record(f"m{i:03d}", now) for i in range(models)])
    exe = shutil.which("perfguard", path=os.path.dirname(sys.executable))
    proc = subprocess.Popen([exe, "daemon", "--config", str(config)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(8)
        children = psutil.Process(proc.pid).children(recursive=True)
        if children:
            raise SystemExit("a worker started: some model was due, the idle figure would be wrong")
        return psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def run_scheduler(models: int, every_s: float, runs: int, work) -> tuple[list[float], list[float]]:
    """Start `models` jobs; return each run's lateness and RSS samples (MiB) taken every 100 runs."""
    lateness: list[float] = []
    rss: list[float] = []
    done = threading.Event()
    first: dict[str, float] = {}
    lock = threading.Lock()
    me = psutil.Process()

    def job(name: str) -> None:
        now = time.time()
        with lock:
            start = first.setdefault(name, now)
            planned = start + round((now - start) / every_s) * every_s
            lateness.append(now - planned)
            count = len(lateness)
        work(name, count)
        if count % 100 == 0:
            rss.append(me.memory_info().rss / 2**20)
        if count >= runs:
            done.set()

    scheduler = BenchmarkScheduler(job, misfire_grace_s=60)
    configs = [ModelConfig(name=f"m{i:03d}", factory="x.y:z", inputs=[{"shape": [1]}],
                           schedule=Schedule(every=f"{every_s}s")) for i in range(models)]
    scheduler.sync(configs, {}, grace_s=60)
    scheduler.start()
    done.wait(timeout=runs * every_s / models * 3 + 60)
    scheduler.shutdown()
    return lateness, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"idle RSS of the daemon with {args.models} models: {idle_rss(folder, args.models):.1f} MiB")

        lateness, _ = run_scheduler(args.models, 2.0, args.models * 5, lambda name, n: None)
        cuts = statistics.quantiles(lateness, n=100)
        print(f"scheduling jitter, {len(lateness)} no-op runs of {args.models} models every 2 s: "
              f"p50 {statistics.median(lateness) * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, "
              f"max {max(lateness) * 1000:.1f} ms")

        db = Database.open(f"sqlite:///{folder / 'growth.db'}")
        exporter = RunMetricsExporter()

        def bookkeeping(name: str, n: int) -> None:
            run = record(name, datetime.now(UTC))
            save_run(db, run)
            exporter.observe(run)

        _, rss = run_scheduler(args.models, 4.0, args.runs, bookkeeping)
        db.close()
        base, end = rss[1], rss[-1]  # after the first 200 runs: imports and caches are warm
        print(f"RSS over {args.runs} runs with storage and metrics: {base:.1f} MiB after 200 runs, "
              f"{end:.1f} MiB at the end ({(end / base - 1) * 100:+.1f} %); samples: "
              + " ".join(f"{v:.0f}" for v in rss))


if __name__ == "__main__":
    main()
