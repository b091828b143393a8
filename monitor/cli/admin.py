"""Setting up: a starter config, and the database schema brought up to date."""

from __future__ import annotations

import importlib.util
import sys
from importlib import resources
from pathlib import Path

import click

from monitor.cli.app import main
from monitor.cli.common import config_option, load, open_db
from monitor.user_errors import EXIT_USAGE


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


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@config_option
def upgrade(config_path: Path) -> None:
    """Apply schema migrations up to the newest."""
    loaded = load(config_path)
    with open_db(loaded, create=True) as database:  # opening applies pending migrations
        location = database.display_location()
    click.echo(f"database at {location} is up to date", err=True)
