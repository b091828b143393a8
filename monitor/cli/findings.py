"""What changed: `check` (detection, attribution, the rules' follow-up) and `baseline accept`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from monitor.cli.app import main
from monitor.cli.common import config_option, json_option, known_model, load, open_db, print_json
from monitor.cli.tables import follow_up_json, follow_up_text, format_table
from monitor.harness.worker_pool import WorkerPool
from monitor.user_errors import EXIT_FAILED


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
def check(config_path: Path, as_json: bool, names: tuple[str, ...], show_all: bool, confirm: bool | None,
          fail_on_regression: bool, with_rules: bool) -> None:
    """Detect changes in the stored history (all models, or NAMES) and print the findings.

    With confirmation on, a series without a frozen reference gets one first (a worker run per
    series, once), and each new latency regression is timed against its reference. Then the rules
    are evaluated and their actions (alerts, optimisations) carried out and printed.
    """
    from monitor.service.followup import follow_up
    from rules.discovery import configured_rules
    from storage import findings as findings_store

    loaded = load(config_path)
    with open_db(loaded) as db, WorkerPool() as pool:
        for name in names:
            known_model(loaded, name, db)
        rules = configured_rules(loaded.config) if with_rules and loaded.config.rules else None
        done = follow_up(db, loaded, list(names) or None, rules, confirm=confirm, pool=pool)
        assert done.check is not None  # no runs given: the check always runs
        result = done.check
        if done.actions:  # a promotion resolves the replaced variant's findings
            result.findings = [f for f in findings_store.findings(db) if not names or f.model in names]
    shown = [f for f in result.findings if show_all or f.state == "open"]
    if as_json:
        print_json(follow_up_json(done, shown))
    else:
        out, err = follow_up_text(done, shown)
        for line in out:
            click.echo(line)
        for line in err:
            click.echo(line, err=True)
    if fail_on_regression and any(f.state == "open" and f.verdict == "regression" for f in result.findings):
        sys.exit(EXIT_FAILED)


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
    from monitor.detection.baseline import NoRunsError
    from monitor.service.baselines import accept_baseline

    loaded = load(config_path)
    with open_db(loaded, create=False) as db, WorkerPool() as pool:
        try:
            done = accept_baseline(db, loaded, model, note, pool)
        except NoRunsError as exc:
            raise click.UsageError(str(exc)) from None
    segments, references = done.segments, done.references
    if as_json:
        print_json(
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
    if not done.all_frozen:
        click.echo("warning: a reference could not be frozen (see the log)", err=True)
        sys.exit(EXIT_FAILED)
