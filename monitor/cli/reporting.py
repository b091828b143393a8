"""What perfguard tells people: `report` (HTML, email) and `rules` (the configured rules and what they did)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from monitor.cli.app import main
from monitor.cli.common import config_option, json_option, load, open_db, print_json
from monitor.cli.tables import format_table
from monitor.config import LoadedConfig
from storage.db import Database


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

    loaded = load(config_path)
    if send_email and loaded.config.email is None:
        raise click.UsageError(f"{loaded.path}: --email needs an [email] section (smtp_host, sender)")
    target = report_dir(loaded, out_dir)
    with open_db(loaded, create=False) as db:
        site = write_report(db, loaded, target)
        sent = []
        if send_email:
            try:
                sent = send_digests(db, loaded, key=f"manual:{datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%f}")
            except EmailNotConfigured as exc:  # pragma: no cover - checked above
                raise click.UsageError(str(exc)) from None
    failed = [s for s in sent if not s.delivery.ok]
    if as_json:
        print_json(
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


@main.command("rules")
@config_option
@json_option
def rules_command(config_path: Path, as_json: bool) -> None:
    """Available rules (built-in and plugins), the configured ones, and each model's latest rule events."""
    from rules.discovery import available_rules, configured_rules

    loaded = load(config_path)
    available = available_rules()
    configured = configured_rules(loaded.config)
    events = _latest_rule_events(loaded)
    if as_json:
        print_json({"available": [r.to_json() for r in available], "configured": [c.to_json() for c in configured],
                    "events": {model: [e.to_json() for e in found] for model, found in events.items()}})
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
        headers = ["#", "use", "label", "models", "priority", "cooldown", "timeout s", "params"]
        click.echo(format_table(headers, [
            [c.index, c.use, c.label, ",".join(sorted(c.models)) if c.models is not None else "all", c.priority,
             c.cooldown, c.timeout_s, json.dumps(c.rule.params.model_dump(mode="json"))] for c in configured
        ]))
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
