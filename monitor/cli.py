"""The `perfguard` command: parses, calls one function, prints a table or JSON.

Contract (DESIGN.md): every command takes `--config PATH`; `--json` prints machine-readable JSON on
stdout and nothing else there (logs and progress go to stderr). Exit codes: 0 ok, 1 a benchmark
failed, 2 bad usage or bad config (the message names the file and field), 3 the database or broker
cannot be reached; a bad config is rejected before the database is opened, so stored history is never
touched by it. No traceback reaches the terminal (`GuardedGroup`; `-v` logs it).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import click

from monitor.config import DEFAULT_CONFIG_NAME, ConfigError, LoadedConfig
from monitor.core.actions import ActionRecord
from monitor.core.runs import RunRecord
from monitor.core.series import FindingRecord
from monitor.harness.worker_pool import WorkerPool
from monitor.logsetup import configure_logging
from monitor.registry import PlannedBenchmark, UnknownModelError, plan, plan_active
from monitor.service.benchmark import BenchmarkProgress, benchmark_models
from monitor.service.loading import load_service_config
from monitor.user_errors import EXIT_FAILED, EXIT_USAGE, explain
from storage import queries
from storage.db import Database, DatabaseNotFound

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG_NAME,
    show_default=True,
    help="The perfguard TOML config.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout, nothing else.")


def _load(config_path: Path) -> LoadedConfig:
    try:
        return load_service_config(config_path)
    except ConfigError as exc:
        for line in exc.lines:
            click.echo(f"error: {line}", err=True)
        sys.exit(EXIT_USAGE)


def _open_db(loaded: LoadedConfig, *, create: bool = True) -> Database:
    """The configured database, or one line naming it and exit 2 (missing or damaged file) or 3
    (unreachable); a new SQLite file is made only with `create`: commands that only read leave no
    empty database behind."""
    try:
        return Database.open(loaded.storage_url(), create=create)
    except DatabaseNotFound as exc:
        click.echo(f"error: {loaded.path}: storage.url: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001 - any driver error: say which database, exit 2 or 3
        problem = explain(exc)
        click.echo(f"error: {loaded.path}: storage.url: {problem.message}", err=True)
        sys.exit(problem.code if problem.code != EXIT_FAILED else EXIT_USAGE)


def _open_stored(loaded: LoadedConfig) -> Database | None:
    """For commands that only read: the database, or None when its SQLite file was never made (its
    folder exists, so nothing has been stored yet); any other problem is `_open_db`'s error."""
    sqlite_file = loaded.sqlite_path()
    if sqlite_file is not None and sqlite_file.parent.is_dir() and not sqlite_file.exists():
        return None
    return _open_db(loaded, create=False)


def _known_model(loaded: LoadedConfig, name: str, db: Database | None) -> None:
    """A usage error unless `name` is configured or has stored history (`db` None: nothing stored)."""
    known = {m.name for m in loaded.config.models} | ({m.name for m in queries.list_models(db)} if db else set())
    if name not in known:
        raise click.UsageError(f"unknown model {name!r}; known: {', '.join(sorted(known)) or '(none)'}")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, allow_nan=False))  # strict JSON: no NaN/inf


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns: numbers right, text left."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows if row[i] is not None) and rows for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


RUN_COLUMNS: list[tuple[str, Callable[[RunRecord], Any]]] = [
    ("run", lambda r: r.run_id),
    ("started (UTC)", lambda r: r.started_at.strftime("%Y-%m-%d %H:%M:%S")),
    ("model", lambda r: r.model),
    ("variant", lambda r: r.variant),
    ("batch", lambda r: r.batch_size),
    ("status", lambda r: r.status),
    ("p50 ms", lambda r: r.metrics.latency_ms_p50),
    ("p99 ms", lambda r: r.metrics.latency_ms_p99),
    ("±ci %", lambda r: None if r.metrics.ci95_rel is None else r.metrics.ci95_rel * 100),
    ("vs ref", lambda r: r.metrics.rel_to_reference),
    ("samples", lambda r: r.metrics.samples),
    ("items/s", lambda r: r.metrics.throughput_per_s),
    ("rss MB", lambda r: r.metrics.peak_rss_mb),
    ("acc", lambda r: r.metrics.accuracy),
    ("flags / error", lambda r: _note(r)),
]


def _note(record: RunRecord) -> str:
    return record.error_summary[:80] if record.error else ",".join(record.flags)


def runs_table(records: Sequence[RunRecord]) -> str:
    return format_table([h for h, _ in RUN_COLUMNS], [[f(r) for _, f in RUN_COLUMNS] for r in records])


class StderrProgress(BenchmarkProgress):
    """One line per phase change on stderr, and a sample count at most every two seconds."""

    def __init__(self) -> None:
        self._prefix = ""
        self._phase = ""
        self._last = 0.0
        self._start = 0.0

    def begin(self, index: int, total: int, planned: PlannedBenchmark) -> None:
        self._prefix = f"[{index + 1}/{total}] {planned.job.model} batch {planned.job.batch_size}"
        self._phase = ""
        self._start = time.monotonic()
        click.echo(f"{self._prefix}: starting worker", err=True)

    def update(self, phase: str, samples: int) -> None:
        now = time.monotonic()
        if phase != self._phase or now - self._last >= 2.0:
            label = {"warmup": "warming up", "setup": "loading model", "collect": "size, memory, accuracy"}
            text = f"{samples} samples" if phase == "sampling" else label.get(phase, phase)
            click.echo(f"{self._prefix}: {text}", err=True)
            self._phase, self._last = phase, now

    def end(self, record: RunRecord) -> None:
        took = time.monotonic() - self._start
        prepared = record.details.get("prepare")
        if prepared and prepared.get("status") == "ok":
            click.echo(
                f"{self._prefix}: prepare step {prepared['step']} took {prepared['seconds']:.1f} s "
                f"(peak {prepared['peak_rss_mb']:.0f} MiB), not timed",
                err=True,
            )
        if record.status == "ok":
            summary = f"p50 {_cell(record.metrics.latency_ms_p50)} ms from {record.metrics.samples} samples"
            if record.metrics.rel_to_reference is not None:
                summary += f", {record.metrics.rel_to_reference:.3f}x its frozen reference"
        else:
            summary = f"{record.status}: {record.error_summary}"
        click.echo(f"{self._prefix}: {summary} ({took:.1f} s)", err=True)


class GuardedGroup(click.Group):
    """Every command's failure as one line and a documented exit code (`user_errors`), never a traceback;
    `-v` logs the traceback as well."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `perfguard history m | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            ctx.exit(0)
        except Exception as exc:
            problem = explain(exc)
            if ctx.params.get("verbose"):
                logging.getLogger(__name__).error("the error below in full", exc_info=True)
            click.echo(f"error: {problem.message}", err=True)
            ctx.exit(problem.code)


@click.group(cls=GuardedGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log more detail on stderr.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text or as one JSON object per line (for log shippers).",
)
@click.version_option(package_name="perfguard")
def main(verbose: bool, log_format: str) -> None:
    """perfguard: keep deployed PyTorch models fast."""
    configure_logging(logging.INFO if verbose else logging.WARNING, log_format)


@main.command()
@config_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(config_path: Path, force: bool) -> None:
    """Write a starter config (SQLite, the example models)."""
    if config_path.exists() and not force:
        click.echo(f"error: {config_path} already exists (use --force to overwrite)", err=True)
        sys.exit(EXIT_USAGE)
    text = resources.files("monitor").joinpath("starter_config.toml").read_text(encoding="utf-8")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {config_path}", err=True)
    if importlib.util.find_spec("sklearn") is None:
        click.echo(
            "note: the seed-cnn example learns from scikit-learn's bundled digits, which is not installed "
            "here: pip install 'perfguard[examples]' (the mlp example runs without it)",
            err=True,
        )


@main.command()
@config_option
@json_option
def models(config_path: Path, as_json: bool) -> None:
    """Registered models and their active variant."""
    loaded = _load(config_path)
    stored = {}
    database = _open_stored(loaded)
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
                "active_variant": info.active_variant if info else queries.BASELINE,
                "schedule": model.schedule.model_dump(exclude_none=True),
                "owners": list(model.owners),
                "slo": dict(model.slo),
            }
        )
    if as_json:
        _print_json(rows)
        return
    headers = ["model", "factory", "device", "batches", "variant", "schedule", "owners"]
    table = [
        [
            r["name"],
            r["factory"],
            r["device"],
            ",".join(map(str, r["batch_sizes"])),
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
    loaded = _load(config_path)
    try:
        plan(loaded, list(names))  # unknown names are a usage error, before the database is opened
    except UnknownModelError as exc:
        raise click.UsageError(str(exc)) from None
    with _open_db(loaded) as db, WorkerPool() as pool:
        records = benchmark_models(loaded, db, list(names) or None, StderrProgress(), pool=pool)
        location = db.display_location()
    if as_json:
        _print_json([r.to_json() for r in records])
    else:
        click.echo(runs_table(records))
        click.echo(f"\n{len(records)} run(s) stored in {location}")
    if any(r.status != "ok" for r in records):
        sys.exit(EXIT_FAILED)


@main.command()
@config_option
@json_option
@click.argument("model")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Newest N runs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Only this batch size's series.")
def history(config_path: Path, as_json: bool, model: str, limit: int, batch_size: int | None) -> None:
    """Stored runs of MODEL, newest first."""
    loaded = _load(config_path)
    database = _open_stored(loaded)
    records = []
    if database is None:
        _known_model(loaded, model, None)
    else:
        with database as db:
            _known_model(loaded, model, db)
            records = queries.history(db, model, limit=limit, batch_size=batch_size)
    if as_json:
        _print_json([r.to_json() for r in records])
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

    loaded = _load(config_path)
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

    loaded = _load(config_path)
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
    from monitor.service.daemon import daemon_report

    loaded = _load(config_path)
    database = _open_stored(loaded)
    if database is None:
        report = daemon_report(loaded, None)
    else:
        with database:
            report = daemon_report(loaded, database)
    if as_json:
        _print_json(report)
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


def findings_table(findings: Sequence[FindingRecord]) -> str:
    """One line per finding: what changed, by how much, since when, and why if known."""
    rows = []
    for f in findings:
        before, after = f.before, f.after
        rows.append(
            [
                f.id,
                f.model,
                f.key.label(),
                f.metric,
                f.verdict,
                f"{100 * f.rel_change:+.1f}%",
                f"{_cell(before['median'])} [{_cell(before['low'])}-{_cell(before['high'])}]",
                f"{_cell(after['median'])} [{_cell(after['low'])}-{_cell(after['high'])}]",
                f.change_run_id,
                f.p_value,
                _samples_note(f.samples),
                f.reading,
                f.cause or "-",
                _env_note(f.env_diff),
                f.state,
            ]
        )
    headers = [
        "id",
        "model",
        "series",
        "metric",
        "verdict",
        "change",
        "before [95% CI]",
        "after [95% CI]",
        "since run",
        "p",
        "samples",
        "reading",
        "cause",
        "environment",
        "state",
    ]
    return format_table(headers, rows)


def _samples_note(samples: dict[str, Any] | None) -> str:
    """Whether the raw samples confirm the change, with their 95 % interval of it."""
    if not samples or samples.get("interval") is None:
        return "-"
    low, high = samples["interval"]
    return f"{'yes' if samples.get('confirmed') else 'no'} [{100 * low:+.0f}%..{100 * high:+.0f}%]"


def _env_note(diff: dict[str, Any] | None) -> str:
    if not diff:
        return "-"
    return ", ".join(f"{name} {old}->{new}" for name, (old, new) in diff.items())[:60]


@main.command()
@config_option
@json_option
@click.argument("names", nargs=-1)
@click.option("--all", "show_all", is_flag=True, help="Also list resolved findings.")
@click.option(
    "--confirm/--no-confirm",
    default=None,
    help="A/B new latency regressions against the frozen reference (default: detection.confirm).",
)
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 when a regression is open (for CI gates).")
@click.option(
    "--rules/--no-rules",
    "with_rules",
    default=True,
    show_default=True,
    help="Evaluate the configured rules and run the actions they decide, as the daemon does.",
)
def check(
    config_path: Path,
    as_json: bool,
    names: tuple[str, ...],
    show_all: bool,
    confirm: bool | None,
    fail_on_regression: bool,
    with_rules: bool,
) -> None:
    """Detect changes in the stored history (all models, or NAMES) and print the findings.

    With confirmation on, a series without a frozen reference gets one first (a worker run per
    series, once), and each new latency regression is timed against its reference. Then the rules
    are evaluated and their actions (alerts, optimisations) carried out and printed.
    """
    from monitor.service.followup import follow_up
    from rules.discovery import configured_rules
    from storage import findings as findings_store

    loaded = _load(config_path)
    with _open_db(loaded) as db, WorkerPool() as pool:
        for name in names:
            _known_model(loaded, name, db)
        rules = configured_rules(loaded.config) if with_rules and loaded.config.rules else None
        done = follow_up(db, loaded, list(names) or None, rules, confirm=confirm, pool=pool)
        assert done.check is not None  # no runs given: the check always runs
        result = done.check
        if done.actions:  # a promotion resolves the replaced variant's findings
            result.findings = [f for f in findings_store.findings(db) if not names or f.model in names]
    shown = [f for f in result.findings if show_all or f.state == "open"]
    fired, acted = done.fired, done.actions
    if as_json:
        _print_json(
            {
                "findings": [f.to_json() for f in shown],
                "new": [f.id for f in result.new],
                "host_events": [e.to_json() for e in result.host_events],
                "decisions": [d.to_json() for d in fired],
                "rule_failures": [x.to_json() for x in done.failures],
                "actions": [a.to_json() for a in acted],
            }
        )
    elif shown:
        click.echo(findings_table(shown))
        for f in shown:
            if f.diagnosis:
                click.echo(
                    f"finding {f.id} ({f.model} {f.metric}): where the time went: {f.diagnosis.get('summary', '-')}"
                )
    else:
        click.echo("no open findings", err=True)
    if not as_json:
        for e in result.host_events:
            click.echo(
                f"host event on {e.host}: {e.signal} {100 * e.rel_change:+.1f}% since run {e.change_run_id} "
                f"(the host, not a model: no finding)"
            )
        for d in fired:
            click.echo(f"rule {d.rule}: {d.decision.action} {d.model}: {d.decision.reason}")
        for failure in done.failures:
            click.echo(f"rule {failure.rule} on {failure.model}: {failure.outcome}: {failure.reason}", err=True)
        for a in acted:
            click.echo(f"action {a.id} ({a.kind} {a.model}): {a.status}: {a.reason}")
    if fail_on_regression and any(f.state == "open" and f.verdict == "regression" for f in result.findings):
        sys.exit(EXIT_FAILED)


def candidates_table(action: ActionRecord) -> str:
    """The before/after table of an optimisation: the current variant, then each candidate."""
    rows = []
    first = action.candidates[0] if action.candidates else {}
    rows.append(
        [
            action.from_variant,
            "(current)",
            first.get("current_p50_ms"),
            first.get("current_p99_ms"),
            1.0,
            first.get("current_size_mb"),
            first.get("current_forward_peak_mb"),
            first.get("current_accuracy"),
            "-",
            "current",
        ]
    )
    for c in action.candidates:
        fidelity = c.get("fidelity") or {}
        quality = (
            f"top1 {fidelity['agreement']:.4f}"
            if fidelity.get("kind") == "top1"
            else f"rel.err {fidelity['value']:.2e}"
            if fidelity
            else "-"
        )
        verdict = "accepted" if c["accepted"] else "rejected: " + "; ".join(c["reasons"])
        rows.append(
            [
                c["label"],
                c["recipe"],
                c.get("p50_ms"),
                c.get("p99_ms"),
                c.get("speedup"),
                c.get("size_mb"),
                c.get("forward_peak_mb"),
                c.get("accuracy"),
                quality,
                verdict[:110],
            ]
        )
    return format_table(
        [
            "variant",
            "recipe",
            "p50 ms",
            "p99 ms",
            "speed-up",
            "size MiB",
            "call MiB",
            "accuracy",
            "fidelity",
            "decision",
        ],
        rows,
    )


@main.command()
@config_option
@json_option
@click.argument("model", required=False)
@click.option("--recipe", "recipes", multiple=True, help="Try this recipe (repeatable); default: the suitable ones.")
@click.option(
    "--action",
    type=click.Choice(["requantize", "prune"]),
    default=None,
    help="Which kind of recipes to try when none is named (default: requantize).",
)
@click.option(
    "--dry-run/--promote",
    "dry_run",
    default=None,
    help="Decide and record without promoting (default: optimize.dry_run).",
)
@click.option("--list", "list_recipes", is_flag=True, help="List the recipes and exit.")
def optimize(
    config_path: Path,
    as_json: bool,
    model: str | None,
    recipes: tuple[str, ...],
    action: str | None,
    dry_run: bool | None,
    list_recipes: bool,
) -> None:
    """Try to make MODEL faster now: build candidates, time them against the current variant, keep the best.

    A candidate is kept only if it is faster by optimize.min_speedup, as accurate (within the
    tolerance) and no bigger; the decision and every candidate's numbers are stored either way.
    """
    from monitor.core import catalog
    from monitor.optimize.search import OptimizeError, OptimizeRequest
    from monitor.optimize.search import optimize as run_optimize

    if list_recipes:
        rows: list[dict[str, Any]] = [
            {
                "name": s.name,
                "action": s.action,
                "devices": list(s.devices),
                "suits": list(s.suits) or ["any"],
                "exact": s.exact,
                "default": s.by_default,
                "description": s.description,
            }
            for s in catalog.CATALOG
        ]
        if as_json:
            _print_json(rows)
        else:
            click.echo(
                format_table(
                    ["recipe", "action", "devices", "suits", "exact", "default", "description"],
                    [
                        [
                            r["name"],
                            r["action"],
                            ",".join(r["devices"]),
                            ",".join(r["suits"]),
                            r["exact"],
                            r["default"],
                            r["description"],
                        ]
                        for r in rows
                    ],
                )
            )
        return
    if model is None:
        raise click.UsageError("missing argument 'MODEL' (or --list to see the recipes)")
    loaded = _load(config_path)
    if model not in {m.name for m in loaded.config.models}:
        raise click.UsageError(
            f"unknown model {model!r}; configured: {', '.join(m.name for m in loaded.config.models) or '(none)'}"
        )
    for name in recipes:
        if name not in catalog.RECIPES:
            raise click.UsageError(f"unknown recipe {name!r}; known: {', '.join(catalog.RECIPES)}")
    request = OptimizeRequest(
        model=model,
        action=action if action or recipes else "requantize",  # type: ignore[arg-type]
        recipes=recipes,
        dry_run=dry_run,
    )
    with _open_db(loaded) as db, WorkerPool() as pool:
        try:
            record = run_optimize(db, loaded, request, pool=pool)
        except OptimizeError as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        _print_json(record.to_json())
    else:
        if record.diagnosis:
            click.echo(f"diagnosis: {record.diagnosis.get('summary', '-')}")
        if record.candidates:
            click.echo(candidates_table(record))
        for c in record.candidates:
            for other in c.get("details", {}).get("other_batch_sizes", []):
                ratio = other["ratio_p50"]
                click.echo(
                    f"{c['label']} at batch {other['batch_size']}: "
                    + (f"{1 / ratio:.2f}x" if ratio else f"not measured ({other['error']})")
                )
        click.echo(f"\naction {record.id}: {record.status}: {record.reason}")
    if record.status == "failed":
        sys.exit(EXIT_FAILED)


@main.command()
@config_option
@json_option
@click.argument("model")
def rollback(config_path: Path, as_json: bool, model: str) -> None:
    """Make MODEL's previous variant active again (the one the current variant was derived from)."""
    from monitor.optimize.rollback import roll_back
    from storage.actions import NothingToRollBack

    loaded = _load(config_path)
    database = _open_stored(loaded)
    if database is None:  # nothing stored yet: nothing was ever promoted
        _known_model(loaded, model, None)
        raise click.UsageError(f"{model}: nothing to roll back: it has never been benchmarked or optimised")
    with database as db:
        known = {m.name for m in queries.list_models(db)}
        if model not in known:
            configured = {m.name for m in loaded.config.models}
            if model in configured:
                raise click.UsageError(f"{model}: nothing to roll back: it has never been benchmarked or optimised")
            raise click.UsageError(
                f"unknown model {model!r}; known: {', '.join(sorted(known | configured)) or '(none)'}"
            )
        try:
            record = roll_back(db, loaded, model)
        except NothingToRollBack as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        _print_json(record.to_json())
    else:
        click.echo(f"{model}: {record.reason} (action {record.id})")


@main.command()
@config_option
@json_option
@click.argument("model", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
def actions(config_path: Path, as_json: bool, model: str | None, limit: int) -> None:
    """Optimisation decisions and rollbacks, newest first (all models, or MODEL)."""
    from storage.actions import actions as stored_actions

    loaded = _load(config_path)
    records: list[ActionRecord] = []
    database = _open_stored(loaded)
    if database is None and model is not None:
        _known_model(loaded, model, None)
    if database is not None:
        with database as db:
            if model is not None:
                _known_model(loaded, model, db)
            records = stored_actions(db, model, limit)
    if as_json:
        _print_json([r.to_json() for r in records])
        return
    click.echo(
        format_table(
            ["id", "created (UTC)", "model", "kind", "trigger", "status", "from", "to", "reason"],
            [
                [
                    r.id,
                    r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "-",
                    r.model,
                    r.kind,
                    r.trigger,
                    r.status + (" (rolled back)" if r.rolled_back_at else ""),
                    r.from_variant,
                    r.to_variant or "-",
                    r.reason[:100],
                ]
                for r in records
            ],
        )
    )


@main.command()
@config_option
@json_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the site (default: the config's reports.out_dir, ./perfguard-reports).",
)
@click.option("--email", "send_email", is_flag=True, help="Also send the digest to every owner and recipient now.")
def report(config_path: Path, as_json: bool, out_dir: Path | None, send_email: bool) -> None:
    """Write the HTML report (index.html, a page per model, charts); with --email, send the digest."""
    from monitor.service.reporting import (
        EmailNotConfigured,
        report_dir,
        send_digests,
        write_report,
    )

    loaded = _load(config_path)
    if send_email and loaded.config.email is None:
        raise click.UsageError(f"{loaded.path}: --email needs an [email] section (smtp_host, sender)")
    target = report_dir(loaded, out_dir)
    with _open_db(loaded, create=False) as db:
        site = write_report(db, loaded, target)
        sent = []
        if send_email:
            try:
                sent = send_digests(db, loaded, key=f"manual:{datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%f}")
            except EmailNotConfigured as exc:  # pragma: no cover - checked above
                raise click.UsageError(str(exc)) from None
    failed = [s for s in sent if not s.delivery.ok]
    if as_json:
        _print_json(
            {
                "index": str(site.index),
                "pages": {k: str(v) for k, v in site.pages.items()},
                "charts": site.charts,
                "charts_drawn": site.drawn,
                "emails": [s.to_json() for s in sent],
            }
        )
    else:
        click.echo(
            f"report: {site.index.resolve().as_uri()} ({len(site.pages)} model pages, {site.charts} charts, "
            f"{site.drawn} drawn now)"
        )
        for s in sent:
            state = "sent" if s.delivery.ok else f"NOT sent ({s.delivery.error}); kept in {s.saved_to}"
            click.echo(f"digest to {s.recipient}: {state}")
    if failed:
        sys.exit(1)


@main.group()
def baseline() -> None:
    """Baselines that findings are measured against."""


@baseline.command("accept")
@config_option
@json_option
@click.argument("model")
@click.option("--note", help="Why the new level is intended (kept with the baseline).")
def baseline_accept(config_path: Path, as_json: bool, model: str, note: str | None) -> None:
    """After an intended change: make MODEL's current level its baseline and freeze a new reference."""
    from monitor.detection import attribution
    from monitor.detection.baseline import NoRunsError, accept

    loaded = _load(config_path)
    with _open_db(loaded, create=False) as db, WorkerPool() as pool:
        try:
            segments = accept(db, loaded, model, note)
        except NoRunsError as exc:
            raise click.UsageError(str(exc)) from None
        references = []
        if model in {m.name for m in loaded.config.models}:
            accepted = {s.key for s in segments}
            for planned in plan_active(db, loaded, [model]):
                key = attribution.series_key(db, planned)
                if key in accepted:
                    references.append(attribution.freeze_reference(db, loaded, planned, key, pool=pool))
    if as_json:
        _print_json(
            {
                "model": model,
                "series": [
                    {
                        "variant": s.key.variant,
                        "device": s.key.device,
                        "batch_size": s.key.batch_size,
                        "since_run_id": s.run_id,
                        "since": s.started_at.isoformat(),
                        "runs": s.runs,
                    }
                    for s in segments
                ],
                "references": references,
            }
        )
    else:
        click.echo(
            format_table(
                ["series", "baseline from run", "since (UTC)", "runs"],
                [[s.key.label(), s.run_id, s.started_at.strftime("%Y-%m-%d %H:%M:%S"), s.runs] for s in segments],
            )
        )
    if any(r is None for r in references):
        click.echo("warning: a reference could not be frozen (see the log)", err=True)
        sys.exit(EXIT_FAILED)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@config_option
def upgrade(config_path: Path) -> None:
    """Apply schema migrations up to the newest."""
    loaded = _load(config_path)
    with _open_db(loaded, create=True) as database:  # opening applies pending migrations
        location = database.display_location()
    click.echo(f"database at {location} is up to date", err=True)


@main.command("rules")
@config_option
@json_option
def rules_command(config_path: Path, as_json: bool) -> None:
    """Available rules (built-in and plugins), the configured ones, and each model's latest rule events."""
    from rules.discovery import available_rules, configured_rules

    loaded = _load(config_path)
    available = available_rules()
    configured = configured_rules(loaded.config)
    events = _latest_rule_events(loaded)
    if as_json:
        _print_json(
            {
                "available": [r.to_json() for r in available],
                "configured": [c.to_json() for c in configured],
                "events": {model: [e.to_json() for e in found] for model, found in events.items()},
            }
        )
        return
    click.echo(
        format_table(
            ["rule", "origin", "description"],
            [[r.name, r.origin, f"UNUSABLE: {r.error}" if r.error else r.description] for r in available],
        )
    )
    for info in available:
        for p in info.params:
            default = "required" if p.required else f"default {json.dumps(p.default)}"
            click.echo(f"  {info.name}.{p.name} ({p.type}, {default}): {p.description}")
    click.echo("")
    if not configured:
        click.echo("no rules configured ([[rules]] in the config)")
    else:
        click.echo(
            format_table(
                ["#", "use", "label", "models", "priority", "cooldown", "timeout s", "params"],
                [
                    [
                        c.index,
                        c.use,
                        c.label,
                        ",".join(sorted(c.models)) if c.models is not None else "all",
                        c.priority,
                        c.cooldown,
                        c.timeout_s,
                        json.dumps(c.rule.params.model_dump(mode="json")),
                    ]
                    for c in configured
                ],
            )
        )
    rows = [
        [e.created_at.strftime("%Y-%m-%d %H:%M:%S"), model, e.rule, e.outcome, e.key, e.reason[:100]]
        for model, found in events.items()
        for e in found
    ]
    if rows:
        click.echo("")
        click.echo(format_table(["at (UTC)", "model", "rule", "outcome", "key", "reason"], rows))


def _latest_rule_events(loaded: LoadedConfig, per_model: int = 5) -> dict[str, Any]:
    """The newest rule events of each configured model, if there is a database to read them from."""
    from storage import rule_events

    sqlite_file = loaded.sqlite_path()
    if sqlite_file is not None and not sqlite_file.exists():
        return {}
    try:
        database = Database.open(loaded.storage_url())
    except Exception as exc:  # noqa: BLE001 - events are optional here; the listing is not
        logging.getLogger(__name__).warning("rule events not shown: cannot open the database: %s", exc)
        return {}
    with database:
        found = {m.name: rule_events.events(database, m.name, limit=per_model) for m in loaded.config.models}
    return {model: events for model, events in found.items() if events}
