"""How a failure reads to the person who typed the command: one line that says what to do, and an
exit code a script can branch on, never a traceback (`-v` logs it for a bug report).

Exit codes (README, "Exit codes"): 1 a benchmark, action or internal step failed; 2 bad usage, config
or input file; 3 a service perfguard needs (the database, the broker) cannot be reached.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

from storage.db import DatabaseNotFound

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

# What to install for a module that an optional feature imports.
EXTRAS = {
    "celery": ("fleet", '[executor] kind = "celery"'),
    "redis": ("fleet", '[executor] kind = "celery"'),
    "kombu": ("fleet", '[executor] kind = "celery"'),
    "sklearn": ("examples", "the bundled example models"),
    "torchao": ("torchao", "the torchao recipes"),
}

_BACKGROUND_LINK = re.compile(r"\s*\(Background on this error at: [^)]*\)")
_SQL_DETAIL = re.compile(r"\s*\[SQL: .*", re.DOTALL)


@dataclass(frozen=True, slots=True)
class UserError:
    code: int
    message: str


def explain(exc: BaseException) -> UserError:
    """The one-line message and exit code for an exception that reached the command line."""
    if isinstance(exc, DatabaseNotFound):
        return UserError(EXIT_USAGE, f"storage.url: {exc}")
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in EXTRAS:
            extra, feature = EXTRAS[top]
            return UserError(EXIT_USAGE, f"{feature} needs the '{extra}' extra, which is not installed: "
                                         f"pip install 'perfguard[{extra}]' (no module named {exc.name!r})")
        return UserError(EXIT_USAGE, f"no module named {exc.name!r}: install it in this environment")
    if isinstance(exc, sa_exc.OperationalError) and _is_connection_failure(exc):
        return UserError(EXIT_UNREACHABLE, f"cannot reach the database: {first_line(exc)}")
    if isinstance(exc, sa_exc.DatabaseError) and _is_corrupt_sqlite(exc):
        return UserError(EXIT_USAGE, f"the SQLite database file is damaged ({first_line(exc)}): restore it "
                                     "from a backup, or move it aside to start a new history")
    if isinstance(exc, LookupError):
        return UserError(EXIT_USAGE, first_line(exc))
    if isinstance(exc, OSError) and exc.filename:
        return UserError(EXIT_FAILED, f"{exc.filename}: {exc.strerror or exc}")
    return UserError(EXIT_FAILED, f"{type(exc).__name__}: {first_line(exc)} (perfguard -v shows where)")


def first_line(exc: BaseException) -> str:
    """The driver's own message without SQLAlchemy's statement dump and documentation link."""
    text = str(getattr(exc, "orig", None) or exc)
    text = _SQL_DETAIL.sub("", _BACKGROUND_LINK.sub("", text)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _is_connection_failure(exc: sa_exc.OperationalError) -> bool:
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        return "unable to open database file" in str(orig) or "locked" in str(orig)
    return True  # PostgreSQL: psycopg raises OperationalError for refused, timed out and lost connections


def _is_corrupt_sqlite(exc: sa_exc.DatabaseError) -> bool:
    message = str(exc.orig)
    return isinstance(exc.orig, sqlite3.DatabaseError) and (
        "malformed" in message or "not a database" in message or "file is encrypted" in message
    )
