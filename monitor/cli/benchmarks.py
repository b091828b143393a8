"""The models, their runs and the service that makes them: `models`, `run`, `history`, `status`,
`daemon`, `worker`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from monitor.cli.app import main
from monitor.cli.common import config_option, json_option, known_model, load, open_db, open_stored, print_json
from monitor.cli.progress import StderrProgress
from monitor.cli.tables import format_table, runs_table
from monitor.harness.worker_pool import WorkerPool
from monitor.registry import UnknownModelError, plan
from monitor.service.benchmark import benchmark_models
from monitor.user_errors import EXIT_FAILED
from storage import queries


@main.command()
@config_option
@json_option
def models(config_path: Path, as_json: bool) -> None:
    """Registered models and their active variant."""
    loaded = load(config_path)
    stored = {}
    database = open_stored(loaded)
    if database is not None:
        with database as db:
            stored = {m.name: m for m in queries.list_models(db)}
    rows: list[dict[str, Any]] = []
    for model in loaded.config.models:
        info = stored.get(model.name)
        rows.append(
            {
                "name": model.name,
                "factory": model.factory,
                "device": model.device,
                "batch_sizes": model.series_batch_sizes,
                "train_batch_sizes": model.train_batch_sizes,
                "load_concurrency": list(model.load.concurrency) if model.load else [],
                "active_variant": info.active_variant if info else queries.BASELINE,
                "schedule": model.schedule.model_dump(exclude_none=True),
                "owners": list(model.owners),
                "slo": dict(model.slo),
            }
        )
    if as_json:
        print_json(rows)
        return
    headers = ["model", "factory", "device", "batches", "also", "variant", "schedule", "owners"]
    table = [
        [
            r["name"],
            r["factory"],
            r["device"],
            ",".join(map(str, r["batch_sizes"])),
            _also(r),
            r["active_variant"],
            " ".join(f"{k}={v}" for k, v in r["schedule"].items()),
            ",".join(r["owners"]),
        ]
        for r in rows
    ]
    click.echo(format_table(headers, table))


@main.command()
@config_option
@json_option
@click.argument("names", nargs=-1)
def run(config_path: Path, as_json: bool, names: tuple[str, ...]) -> None:
    """Benchmark models now (all, or the NAMES given), store and print the runs."""
    loaded = load(config_path)
    try:
        plan(loaded, list(names))  # unknown names are a usage error, before the database is opened
    except UnknownModelError as exc:
        raise click.UsageError(str(exc)) from None
    with open_db(loaded) as db, WorkerPool() as pool:
        records = benchmark_models(loaded, db, list(names) or None, StderrProgress(), pool=pool)
        location = db.display_location()
    if as_json:
        print_json([r.to_json() for r in records])
    else:
        click.echo(runs_table(records))
        click.echo(f"\n{len(records)} run(s) stored in {location}")
    if any(r.status != "ok" for r in records):
        sys.exit(EXIT_FAILED)


def _also(row: dict[str, Any]) -> str:
    """The model's series besides inference: "train b32", "load ×1,2,4"."""
    parts = []
    if row["train_batch_sizes"]:
        parts.append("train b" + ",".join(map(str, row["train_batch_sizes"])))
    if row["load_concurrency"]:
        parts.append("load ×" + ",".join(map(str, row["load_concurrency"])))
    return "; ".join(parts) or "-"


@main.command()
@config_option
@json_option
@click.argument("model")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Newest N runs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Only this batch size's series.")
def history(config_path: Path, as_json: bool, model: str, limit: int, batch_size: int | None) -> None:
    """Stored runs of MODEL, newest first."""
    loaded = load(config_path)
    database = open_stored(loaded)
    records = []
    if database is None:
        known_model(loaded, model, None)
    else:
        with database as db:
            known_model(loaded, model, db)
            records = queries.history(db, model, limit=limit, batch_size=batch_size)
    if as_json:
        print_json([r.to_json() for r in records])
    elif records:
        click.echo(runs_table(records))
    else:
        click.echo(f"no runs stored for {model}", err=True)


@main.command()
@config_option
def daemon(config_path: Path) -> None:
    """Benchmark every model on its schedule until SIGTERM/SIGINT (SIGHUP reloads the config)."""
    from monitor.service.daemon import run_daemon
    from monitor.service.lock import DaemonAlreadyRunning

    loaded = load(config_path)
    # A service logs what it does; the libraries' own chatter stays at warnings.
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        sys.exit(run_daemon(loaded))
    except DaemonAlreadyRunning as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)


@main.command()
@config_option
@click.option("--queue", required=True, help="The hardware class to serve (a model's runs_on, e.g. cpu, gpu-h100).")
@click.option("--name", default=None, help="The worker's node name (default: perfguard-QUEUE-PID@HOST).")
def worker(config_path: Path, queue: str, name: str | None) -> None:
    """Benchmark jobs of one hardware class from the fleet's broker, one at a time ([executor] kind = "celery")."""
    from monitor.service.fleet import run_fleet_worker

    loaded = load(config_path)
    if loaded.config.executor.kind != "celery":
        raise click.UsageError(f'{loaded.path}: a worker needs [executor] kind = "celery" and its broker')
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    for noisy in ("alembic", "kombu", "celery.worker.consumer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    served = [m.name for m in loaded.config.models if m.hardware_class == queue]
    if not served:
        logging.getLogger(__name__).warning(
            "no model in %s runs on %r: it will get no jobs from this config", loaded.path, queue
        )
    sys.exit(run_fleet_worker(loaded, queue, name=name))


@main.command()
@config_option
@json_option
def status(config_path: Path, as_json: bool) -> None:
    """Is a daemon running on this database; each model's last run and next scheduled run."""
    from monitor.service.status import daemon_report

    loaded = load(config_path)
    database = open_stored(loaded)
    if database is None:
        report = daemon_report(loaded, None)
    else:
        with database:
            report = daemon_report(loaded, database)
    if as_json:
        print_json(report)
        return
    daemon_state = report["daemon"]
    if daemon_state["running"]:
        click.echo(f"daemon: running ({daemon_state['holder']}), {daemon_state['endpoint']}")
    else:
        click.echo("daemon: not running")
    click.echo(f"database: {report['database']}\n")
    rows = []
    for item in report["models"]:
        last = item["last_run"] or {}
        rows.append(
            [
                item["model"],
                last.get("run_id"),
                last.get("started_at", "-")[:19],
                last.get("status"),
                last.get("error") or "",
                item["next_run"][:19],
                item["next_run_source"],
            ]
        )
    click.echo(format_table(["model", "last run", "started (UTC)", "status", "error", "next run (UTC)", "from"], rows))
