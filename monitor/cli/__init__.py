"""The `perfguard` command: parses, calls one function, prints a table or JSON.

Contract (DESIGN.md): every command takes `--config PATH`; `--json` prints machine-readable JSON on
stdout and nothing else there (logs and progress go to stderr). Exit codes: 0 ok, 1 a benchmark
failed, 2 bad usage or bad config (the message names the file and field), 3 the database or broker
cannot be reached; a bad config is rejected before the database is opened, so stored history is never
touched by it. No traceback reaches the terminal (`GuardedGroup`; `-v` logs it).
"""

from monitor.cli import actions, admin, benchmarks, findings, reporting  # noqa: F401 - each registers its commands
from monitor.cli.app import main

__all__ = ["main"]
