"""How fast detection can read history once a database holds a long service life of runs.

Seeds a fresh database with `--runs` runs spread over `--models` models (one batch size, interleaved
in time as the scheduler would write them), then times reading the last `--last` runs of one model:
`latency_trend` (what detection reads) and `history` without samples (what the CLI and reports read).
Prints the median of `--repeat` timings in ms. SQLite always; PostgreSQL when `--pg-url` or
PERFGUARD_TEST_PG_URL is set, in a throw-away schema.

    .venv/bin/python bench/bench_storage.py --runs 2000   # quick check
    .venv/bin/python bench/bench_storage.py               # 100k runs; target <= 20 ms on SQLite
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, make_url

from monitor.core.runs import EnvFingerprint, HostCondition, RunMetrics, RunRecord
from storage.db import Database
from storage.queries import history, latency_trend, save_runs

BATCH_SIZE = 32
SEED_CHUNK = 5000  # runs per transaction while seeding: bounded memory, few commits


def synthetic_runs(runs: int, models: int, samples_per_run: int) -> Iterator[RunRecord]:
    """Plausible runs, as wide as real ones (environment, host, flags, details, raw samples)."""
    rng = random.Random(7)
    env = EnvFingerprint(
        torch="2.13.0+cpu", python="3.11.7", cpu="Intel Xeon", cpu_count=2,
        cpu_flags=["avx512f", "avx512_bf16", "amx_int8"], threads=2, interop_threads=2,
        host="bench-host", platform="Linux-6.1-x86_64", allocator={"MALLOC_MMAP_THRESHOLD_": "65536"},
    )  # fmt: skip
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(runs):
        started = start + timedelta(seconds=10 * i)
        p50 = 1.0 + (i % models) * 0.1 + rng.gauss(0, 0.01)
        yield RunRecord(
            model=f"model-{i % models:03d}",
            variant="baseline",
            device="cpu",
            batch_size=BATCH_SIZE,
            status="ok",
            started_at=started,
            finished_at=started + timedelta(seconds=5),
            metrics=RunMetrics(
                latency_ms_p50=p50, latency_ms_p90=p50 * 1.05, latency_ms_p99=p50 * 1.2,
                latency_ms_mean=p50 * 1.01, latency_ms_std=0.02, ci95_rel=0.01, samples=1200,
                throughput_per_s=BATCH_SIZE * 1000 / p50, peak_rss_mb=310.0, params=152330,
            ),  # fmt: skip
            env=env,
            host=HostCondition(loadavg_1m=0.3, others_cpu_pct=2.0, cpu_freq_mhz=2600.0),
            details={"warmup_iters": 50, "stop_reason": "ci_reached"},
            samples_ms=[p50 + rng.gauss(0, 0.02) for _ in range(samples_per_run)],
        )


def seed(db: Database, runs: int, models: int, samples_per_run: int) -> float:
    """Write the runs through the normal bulk path; seconds taken."""
    began = time.perf_counter()
    chunk: list[RunRecord] = []
    for record in synthetic_runs(runs, models, samples_per_run):
        chunk.append(record)
        if len(chunk) == SEED_CHUNK:
            save_runs(db, chunk)
            chunk = []
    if chunk:
        save_runs(db, chunk)
    return time.perf_counter() - began


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm the caches and the statement cache, as a running service would have them
    timings = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - began) * 1000)
    return statistics.median(timings)


def bench(label: str, db: Database, args: argparse.Namespace) -> None:
    seconds = seed(db, args.runs, args.models, args.samples)
    print(f"{label}: seeded {args.runs} runs in {seconds:.1f} s ({args.runs / seconds:.0f} runs/s)")
    model = "model-000"
    trend = median_ms(lambda: latency_trend(db, model, BATCH_SIZE, limit=args.last), args.repeat)
    rows = len(latency_trend(db, model, BATCH_SIZE, limit=args.last))
    print(f"{label}: latency_trend last {rows} runs of one model: {trend:.1f} ms (median of {args.repeat})")
    hist = median_ms(lambda: history(db, model, limit=args.last), args.repeat)
    print(f"{label}: history last {args.last} runs, no samples: {hist:.1f} ms (median of {args.repeat})")


@contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """A URL whose connections live in a new schema, dropped afterwards: the bench leaves no trace."""
    schema = f"perfguard_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--last", type=int, default=1000, help="runs read per query")
    parser.add_argument("--samples", type=int, default=100, help="raw samples stored per run")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--pg-url", default=os.environ.get("PERFGUARD_TEST_PG_URL"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="perfguard-bench-") as tmp:
        db = Database.open(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            bench("sqlite", db, args)
        finally:
            db.close()
    if args.pg_url:
        with pg_schema(args.pg_url) as url:
            db = Database.open(url)
            try:
                bench("postgresql", db, args)
            finally:
                db.close()
    else:
        print("postgresql: skipped (no --pg-url or PERFGUARD_TEST_PG_URL)")


if __name__ == "__main__":
    main()
