"""What the fleet costs and gives: Celery dispatch overhead per job, and throughput with 2 workers.

Same no-op model (workloads:tiny, a 0.1 s sampling budget) both ways:
- local: the job run in this process, as the local executor runs it (`FleetJobs.run`, what the
  daemon's own thread and a fleet worker both call);
- celery: the job enqueued on Redis and run by one `perfguard worker`, submitted one at a time.
For each job, the dispatch latency is the time from the call (or the enqueue) to the moment the
harness started the benchmark (the run's `started_at`): the benchmark itself is left out, so host
noise does not hide a 50 ms difference. Then `--jobs` jobs are enqueued at once to one worker and to
two workers on the same queue, and the wall time until all are stored is compared.
Goal: overhead <= 50 ms per job.

    .venv/bin/python bench/scaleout.py            # Redis on 127.0.0.1:6379 (db 4)
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.config import load_config  # noqa: E402
from monitor.service.executors import CeleryExecutor  # noqa: E402
from monitor.service.fleet import job_key  # noqa: E402
from monitor.service.fleet_worker import FleetJobs  # noqa: E402
from storage import queries  # noqa: E402
from storage.db import Database  # noqa: E402

PERFGUARD = str(Path(sys.executable).with_name("perfguard"))


def write_config(folder: Path, broker: str, queue: str) -> Path:
    (folder / "workloads.py").symlink_to(ROOT / "tests" / "workloads.py")
    path = folder / "perfguard.toml"
    path.write_text(
        '[storage]\nurl = "sqlite:///runs.db"\n[harness]\nmin_samples = 20\nrelative = false\n[detection]\nconfirm = false\n'
        f'[executor]\nkind = "celery"\nbroker = "{broker}"\n'
        f'[[models]]\nname = "noop"\nfactory = "workloads:tiny"\ninputs = [{{ shape = [4, 16] }}]\n'
        f'max_time_s = 0.1\nruns_on = "{queue}"\n'
    )
    return path


def start_worker(config: Path, queue: str, n: int) -> subprocess.Popen[bytes]:
    # A lock folder per worker: two workers stand for two hosts here, not two benchmarks that must
    # take turns on one device (which the shared device lock would make them do).
    locks = config.parent / f"locks-{n}"
    locks.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(config.parent), PERFGUARD_LOCK_DIR=str(locks))
    log = open(config.parent / f"worker-{n}.log", "wb")  # noqa: SIM115
    return subprocess.Popen([PERFGUARD, "worker", "--queue", queue, "--config", str(config)], cwd=config.parent,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=60)


def started_at(db: Database, key: str) -> datetime | None:
    ids = queries.stored_run_ids(db, [f"{key}/baseline/cpu/b4"])
    if not ids:
        return None
    [record] = [r for r in queries.history(db, "noop", limit=50) if r.run_id in ids.values()]
    return record.started_at


def wait_stored(db: Database, keys: list[str], timeout: float = 600) -> None:
    wanted = [f"{k}/baseline/cpu/b4" for k in keys]
    deadline = time.monotonic() + timeout
    while len(queries.stored_run_ids(db, wanted)) < len(wanted):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted)} jobs not stored within {timeout} s")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="jobs each way for the dispatch latency")
    parser.add_argument("--jobs", type=int, default=20, help="jobs for the throughput comparison")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/4")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="perfguard-scaleout-"))
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    config = write_config(folder, args.broker, queue)
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    loaded = load_config(config)
    [model] = loaded.config.models
    executor = CeleryExecutor(loaded.config.executor)
    local = FleetJobs(loaded, "local")
    db = Database.open(loaded.storage_url())
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    serial = 0

    def next_due() -> datetime:
        nonlocal serial
        serial += 1
        return base + timedelta(seconds=serial)

    workers = [start_worker(config, queue, 0)]
    try:
        # Warm both paths once (imports, the worker's first job), then alternate local and celery jobs.
        local.run("noop", job_key("noop", next_due()))
        due = next_due()
        executor.submit(model, due)
        wait_stored(db, [job_key("noop", due)], timeout=120)
        local_lat, celery_lat, local_total, celery_total = [], [], [], []
        for _ in range(args.rounds):
            key = job_key("noop", next_due())
            t0 = datetime.now(UTC)
            local.run("noop", key)
            local_total.append((datetime.now(UTC) - t0).total_seconds())
            local_lat.append((started_at(db, key) - t0).total_seconds())
            due = next_due()
            key = job_key("noop", due)
            t0 = datetime.now(UTC)
            executor.submit(model, due)
            wait_stored(db, [key])
            celery_total.append((datetime.now(UTC) - t0).total_seconds())
            celery_lat.append((started_at(db, key) - t0).total_seconds())
        med = statistics.median
        print(f"dispatch latency, call/enqueue -> benchmark start, median of {args.rounds}:")
        print(f"  local   {1000 * med(local_lat):8.1f} ms   (whole job {med(local_total):.2f} s)")
        print(f"  celery  {1000 * med(celery_lat):8.1f} ms   (whole job {med(celery_total):.2f} s)")
        print(f"  overhead of celery per job: {1000 * (med(celery_lat) - med(local_lat)):.1f} ms "
              f"(whole job: {1000 * (med(celery_total) - med(local_total)):.0f} ms)")

        for count in (1, 2):
            while len(workers) < count:
                workers.append(start_worker(config, queue, len(workers)))
                time.sleep(5)  # the new worker is up
            dues = [next_due() for _ in range(args.jobs)]
            t0 = time.perf_counter()
            for due in dues:
                executor.submit(model, due)
            wait_stored(db, [job_key("noop", d) for d in dues])
            wall = time.perf_counter() - t0
            print(f"{args.jobs} jobs, {count} worker(s): {wall:6.1f} s, {args.jobs / wall:.2f} jobs/s")
    finally:
        stop_workers(workers)
        executor.shutdown()
        db.close()
        if args.broker.startswith("redis"):  # leave the shared Redis as it was: this run's queue goes
            import redis

            client = redis.Redis.from_url(args.broker)
            for key in client.scan_iter(f"*{queue}*"):
                client.delete(key)
            client.close()


if __name__ == "__main__":
    main()
