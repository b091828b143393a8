"""How long the HTML report takes for a large fleet, and how big a digest email gets.

Seeds (once, cached under --work) a SQLite database with `--models` models x `--runs` runs each
(a latency step in every fifth model, a failed run now and then, an environment change), runs
detection over it so findings and change points exist, then times:
- `gather`: reading what the report shows;
- a cold site (empty folder: every chart drawn), with 1 and with `--workers` chart processes;
- a warm refresh (nothing changed: no chart drawn) and a refresh after one model got a new run;
- the digest email of `--digest-models` models, rendered and built: its size in bytes.
Targets: the report for 100 models x 1000 runs in <= 5 s; a 20-model digest <= 2 MB.

    .venv/bin/python bench/report.py                # 100 x 1000 (seeding takes a few minutes once)
    .venv/bin/python bench/report.py --models 10 --runs 200   # quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from monitor.config import load_config
from monitor.core.runs import EnvFingerprint, HostCondition, RunMetrics, RunRecord
from monitor.detection.check import check_models
from monitor.service.reporting import ReportKeeper
from reports.charts import ChartDrawer
from reports.data import ReportedModel, gather
from reports.mail import build_message
from reports.render import Site, render_digest, write_site
from storage.db import Database
from storage.queries import save_runs

START = datetime(2026, 1, 1, tzinfo=UTC)


def runs_of(model: int, count: int) -> list[RunRecord]:
    rng = np.random.default_rng(model)
    level = 0.5 + 0.05 * model
    step_at = count * 3 // 4 if model % 5 == 0 else None
    out = []
    for i in range(count):
        started = START + timedelta(minutes=10 * i, seconds=model)
        failed = i % 397 == 11
        p50 = level * (1.2 if step_at is not None and i >= step_at else 1.0) * (1 + 0.01 * rng.standard_normal())
        out.append(RunRecord(
            model=f"model-{model:03d}", variant="baseline", device="cpu", batch_size=32,
            status="failed" if failed else "ok", error="RuntimeError: boom" if failed else None,
            started_at=started, finished_at=started + timedelta(seconds=5),
            metrics=RunMetrics() if failed else RunMetrics(
                latency_ms_p50=p50, latency_ms_p90=p50 * 1.05, latency_ms_p99=p50 * 1.2, ci95_rel=0.01,
                samples=1200, throughput_per_s=32000 / p50, peak_rss_mb=300 + rng.standard_normal(),
                model_size_mb=1.0, accuracy=0.97 + 0.001 * rng.standard_normal(),
            ),
            env=EnvFingerprint(torch="2.13.0+cpu" if i >= count // 2 else "2.12.1+cpu", threads=2, host="bench"),
            host=HostCondition(), flags=[], details={}, samples_ms=[],
        ))
    return out


def seed(work: Path, models: int, runs: int) -> Path:
    """The config of a seeded database (reused when it already holds this fleet)."""
    folder = work / f"fleet-{models}x{runs}"
    config = folder / "perfguard.toml"
    if (folder / "done").exists():
        return config
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    lines = ['[storage]\nurl = "sqlite:///fleet.db"\n[detection]\nconfirm = false\n']
    for m in range(models):
        lines.append(f'[[models]]\nname = "model-{m:03d}"\nfactory = "monitor.examples.models:mlp"\n'
                     f'inputs = [{{ shape = [32, 1024] }}]\nowners = ["team-{m % 5}@example.com"]\n'
                     f'slo = {{ latency_ms_p99 = {2 + 0.1 * m:.1f} }}\n')
    config.write_text("\n".join(lines))
    loaded = load_config(config)
    started = time.perf_counter()
    with Database.open(loaded.storage_url()) as db:
        for m in range(models):
            save_runs(db, runs_of(m, runs))
        check_models(db, loaded)
    (folder / "done").write_text("")
    print(f"seeded {models} x {runs} runs and ran detection in {time.perf_counter() - started:.0f} s")
    return config


def timed(label: str, fn):  # noqa: ANN001, ANN202 - a bench helper
    started = time.perf_counter()
    value = fn()
    print(f"{label:<52} {time.perf_counter() - started:7.2f} s")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--digest-models", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "perfguard-bench-report")
    args = parser.parse_args()

    loaded = load_config(seed(args.work, args.models, args.runs))
    models = [ReportedModel(m.name, tuple(m.owners), dict(m.slo), m.device, m.factory) for m in loaded.config.models]
    with Database.open(loaded.storage_url()) as db:
        print(f"{args.models} models x {args.runs} runs, charts with up to 1000 runs per series")
        report = timed("gather (read storage)", lambda: gather(db, models))

        def whole(out: Path, workers: int) -> Site:
            """What `perfguard report` does: drawing processes warmed up while the data is read."""
            with ChartDrawer(workers) as drawer:
                if not (out / "img").is_dir():
                    drawer.warm_up()
                return write_site(gather(db, models), out, drawer=drawer)

        site = None
        for workers in sorted({1, args.workers}):
            out = args.work / f"site-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            timed(f"cold site only (data read), {workers} process(es)", lambda: write_site(report, out, workers=workers))  # noqa: B023
            shutil.rmtree(out)
            site = timed(f"cold report: gather + site, {workers} process(es)", lambda: whole(out, workers))  # noqa: B023
        assert site is not None
        print(f"{'charts per report':<52} {site.charts:7d}")
        out = args.work / f"site-{args.workers}"
        timed("warm refresh, nothing changed (gather + site)", lambda: whole(out, args.workers))
        last = max(r.started_at for view in report.models for s in view.series for r in s.runs)
        fresh = dataclasses.replace(runs_of(0, 1)[0], started_at=last + timedelta(minutes=10),
                                    finished_at=last + timedelta(minutes=10, seconds=5))
        save_runs(db, [fresh])
        again = timed("refresh after one model's new run (gather + site)", lambda: whole(out, args.workers))
        print(f"{'charts drawn by that refresh':<52} {again.drawn:7d}")
        # What the daemon does after a model's runs: that model read and its page and the index rewritten.
        keeper = ReportKeeper()
        shutil.rmtree(loaded.base_dir / loaded.config.reports.out_dir, ignore_errors=True)
        timed("daemon: first (full) refresh, cold", lambda: keeper.refresh(db, loaded))
        fresh = dataclasses.replace(fresh, run_id=None, started_at=fresh.started_at + timedelta(minutes=10),
                                    finished_at=fresh.finished_at + timedelta(minutes=10))
        save_runs(db, [fresh])
        timed("daemon: refresh after one model's runs", lambda: keeper.refresh(db, loaded, "model-000"))
        digest_part = report.only([m.name for m in models[: args.digest_models]])
        rendered = timed(f"digest of {args.digest_models} models (render)",
                         lambda: render_digest(digest_part, "team@example.com", "http://bench:9307/"))
        message = build_message(rendered.subject, "perfguard@example.com", ["team@example.com"], rendered.html,
                                rendered.text, rendered.images)
        size = len(bytes(message))
        print(f"{'digest email size':<52} {size / 1e6:7.2f} MB ({len(rendered.images)} images)")
        # The worst case: every model in trouble, so every one gets its latency chart.
        worst = dataclasses.replace(digest_part, models=[dataclasses.replace(v, status="regressed")
                                                         for v in digest_part.models])
        rendered = render_digest(worst, "team@example.com", "http://bench:9307/")
        message = build_message(rendered.subject, "perfguard@example.com", ["team@example.com"], rendered.html,
                                rendered.text, rendered.images)
        size = len(bytes(message))
        print(f"{'digest email size, every model with its chart':<52} {size / 1e6:7.2f} MB ({len(rendered.images)} images)")


if __name__ == "__main__":
    main()
