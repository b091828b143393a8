"""The config as the service runs it: the file validated field by field (`monitor.config`), then the
rules it names found and their params checked (`rules.discovery`). Every command, the daemon's reload
and the Celery app load it here, so a bad rule is refused before any database is opened; the config
module itself stays below the rules, which read it."""

from __future__ import annotations

from pathlib import Path

from monitor.config import ConfigError, LoadedConfig, load_config
from rules.discovery import validate_rules


def load_service_config(path: Path | str) -> LoadedConfig:
    """`load_config`, and ConfigError naming the file and the field for each bad `[[rules]]` entry."""
    loaded = load_config(path)
    problems = validate_rules(loaded.config) if loaded.config.rules else []
    if problems:
        raise ConfigError([f"{Path(path)}: {problem}" for problem in problems])
    return loaded
