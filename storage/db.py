"""The database handle: one engine per URL, sessions as units of work, schema kept at the newest revision.

SQLite (the default, a single file) and PostgreSQL (psycopg 3, for long-running shared services) are
opened the same way. Opening applies pending Alembic migrations, so every process that touches the
database sees the schema its code expects; `upgrade` does the same on request (`perfguard db upgrade`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest migration's revision (tests/test_migrations.py holds it to Alembic's head): an open whose
# schema is there already needs one query and no import of Alembic, which costs a command 0.1 s.
SCHEMA_HEAD = "0009"
log = logging.getLogger(__name__)

# Long enough to ride out another process's commit (the daemon and a CLI call can share one file).
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 5
PG_UNANSWERED_S = 20
# Any fixed number: serialises concurrent upgrades of one PostgreSQL database by several hosts.
_PG_MIGRATION_LOCK_KEY = 0x7065_7266  # "perf"


class DatabaseNotFound(FileNotFoundError):
    """A SQLite file that is not there where it must be, or whose folder does not exist."""


class Database:
    """An open database: `Database.open(url)`, then `close()` when done (or use it in a `with`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Objects stay readable after commit: callers convert them to records outside the session.
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | URL, *, upgrade: bool = True, create: bool = True) -> Database:
        """Connect to `url` (a relative SQLite path is taken from the current directory) and migrate.

        A new SQLite file (and its folder, said in a log line) is made only with `create`; commands
        that only read pass False, so a misspelt path never looks like a database with no history.
        """
        db = cls(_create_engine(make_url(url), create))
        if upgrade:
            db.upgrade()
        return db

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """One unit of work: commits when the block ends, rolls everything back if it raises.

        On SQLite a unit of work takes the write lock when it begins (waiting up to the busy timeout),
        because a transaction that reads first and writes later fails at once, without waiting, when
        another process wrote in between. `readonly=True` skips the lock for pure reads, which then
        neither wait for writers nor hold them up. PostgreSQL ignores the flag.
        """
        with self._sessions.begin() as session:
            if readonly:
                session.connection(execution_options={"sqlite_begin": "DEFERRED"})
            yield session

    def upgrade(self) -> None:
        """Apply pending migrations; costs one small query when the schema is already at head."""
        if self.revisions() == {SCHEMA_HEAD}:
            return
        self._migrate()

    def revisions(self) -> set[str]:
        """The schema revisions stamped in the database (none for a new one)."""
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            if not inspect(conn).has_table("alembic_version"):
                return set()
            return {str(version) for version in conn.execute(text("SELECT version_num FROM alembic_version")).scalars()}

    def _migrate(self) -> None:
        # Alembic loads only when the schema must move.
        from alembic import command  # noqa: PLC0415
        from alembic.config import Config  # noqa: PLC0415

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        # Several processes may open a new database at once: each waits for the lock, then finds
        # the schema at head (on SQLite the write lock comes with BEGIN, see `session`).
        with self.engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # SQLite alters a table by copying it and dropping the old one; with foreign keys
                # enforced, that drop would cascade into every table referencing it (a rebuilt `runs`
                # would empty run_metrics, run_samples, baselines...). The pragma is a no-op inside
                # a transaction, so it is set on the raw connection before BEGIN.
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            try:
                with conn.begin():
                    if conn.dialect.name == "postgresql":
                        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK_KEY})")
                    config.attributes["connection"] = conn
                    command.upgrade(config, "head")
                    if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                        raise RuntimeError("a migration left rows whose references are broken; nothing was changed")
            finally:
                if sqlite:
                    conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]

    def display_location(self) -> str:
        """Where the data lives, safe to print: the file path for SQLite, the URL without password."""
        url = self.engine.url
        if url.get_backend_name() == "sqlite":
            return url.database or ":memory:"
        # URL.set() treats None as "keep", so build the URL anew without the password.
        no_password = URL.create(
            url.drivername, url.username, None, url.host, url.port, url.database, url.query
        )
        return no_password.render_as_string(hide_password=False)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Strict JSON in every JSON column: SQLite would keep NaN/Infinity that PostgreSQL's json type
# refuses, and the two backends must accept the same runs.
_json_serializer = functools.partial(json.dumps, allow_nan=False)


def _create_engine(url: URL, create: bool) -> Engine:
    if url.get_backend_name() != "sqlite":
        # A service runs for months: connections dropped by a database restart are replaced, not used.
        # ...and a server that stopped answering fails a connect within seconds instead of hanging it,
        # and a query on a connection whose packets go unanswered (a cut network) within
        # PG_UNANSWERED_S instead of the kernel's ~15 minutes of retransmissions.
        connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 30,
                        "tcp_user_timeout": int(PG_UNANSWERED_S * 1000)}
        return create_engine(url, pool_pre_ping=True, json_serializer=_json_serializer,
                             connect_args=connect_args)
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        path = Path(url.database).expanduser().resolve()
        if not path.parent.is_dir():
            if not create:
                raise DatabaseNotFound(f"the folder {path.parent} does not exist, so neither does a database "
                                       "there (is the path misspelt?)")
            path.parent.mkdir(parents=True, exist_ok=True)
            log.warning("created the folder %s for a new database", path.parent)  # said, not silent
        if not create and not path.exists():
            raise DatabaseNotFound(f"no database at {path}: nothing has been stored there yet "
                                   "(a benchmark run creates it), or the path is misspelt")
        url = url.set(database=str(path))
    engine = create_engine(url, json_serializer=_json_serializer)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: object) -> None:
    # The sqlite3 module would otherwise open transactions only before DML, leaving SELECTs and DDL
    # outside them; SQLAlchemy emits BEGIN itself instead (see `_begin_sqlite_transaction`).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers (reports, CLI) proceed while the daemon writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _begin_sqlite_transaction(conn: Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
    conn.exec_driver_sql(f"BEGIN {mode}")
