"""Options and steps every command shares: the config loaded or a clear exit, the database opened or
a clear exit, JSON on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from monitor.config import DEFAULT_CONFIG_NAME, ConfigError, LoadedConfig
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


def load(config_path: Path) -> LoadedConfig:
    try:
        return load_service_config(config_path)
    except ConfigError as exc:
        for line in exc.lines:
            click.echo(f"error: {line}", err=True)
        sys.exit(EXIT_USAGE)


def open_db(loaded: LoadedConfig, *, create: bool = True) -> Database:
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


def open_stored(loaded: LoadedConfig) -> Database | None:
    """For commands that only read: the database, or None when its SQLite file was never made (its
    folder exists, so nothing has been stored yet); any other problem is `open_db`'s error."""
    sqlite_file = loaded.sqlite_path()
    if sqlite_file is not None and sqlite_file.parent.is_dir() and not sqlite_file.exists():
        return None
    return open_db(loaded, create=False)


def known_model(loaded: LoadedConfig, name: str, db: Database | None) -> None:
    """A usage error unless `name` is configured or has stored history (`db` None: nothing stored)."""
    known = {m.name for m in loaded.config.models} | ({m.name for m in queries.list_models(db)} if db else set())
    if name not in known:
        raise click.UsageError(f"unknown model {name!r}; known: {', '.join(sorted(known)) or '(none)'}")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, allow_nan=False))  # strict JSON: no NaN/inf
