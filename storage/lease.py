"""One holder per PostgreSQL database, whoever reaches it from wherever: a lock kept in the server.

The daemon's file lock (monitor/service/lock.py) covers one host. Two daemons on two hosts, or in two
containers, or one reaching the server as `localhost` and the other through a proxy, would still both
benchmark into one database, each scheduling every model. A session-level advisory lock is held by the
server for as long as the connection that took it lives, so it names the database itself (and the
schema perfguard's tables are in: several deployments may share a server, or a database), and a holder
that crashes or loses its connection leaves nothing stale. SQLite needs no lease: one file is on one
host, and the file lock names it by its real path.
"""

from __future__ import annotations

import os
import socket

from sqlalchemy import Connection, text

from storage.db import Database

# pg_try_advisory_lock(int, int): the first half says "perfguard daemon", the second the schema.
_LEASE_CLASS = 0x7066_6464  # "pfdd"


class DatabaseLease:
    """`acquire()` takes the lease or says who holds it; `alive()` checks it is still held."""

    def __init__(self, db: Database, holder: str | None = None) -> None:
        self._db = db
        self._conn: Connection | None = None
        self.holder = holder or f"perfguard daemon pid {os.getpid()} on {socket.gethostname()}"

    @property
    def needed(self) -> bool:
        return self._db.engine.dialect.name == "postgresql"

    @property
    def held(self) -> bool:
        return self._conn is not None or not self.needed

    def acquire(self) -> str | None:
        """Take the lease: None when it is ours now, else who holds it. Raises the driver's error
        when the database cannot be reached (the caller waits for it, as for everything else)."""
        if self.held:
            return None
        conn = self._db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        kept = False
        try:
            # Who holds it reads from pg_stat_activity: say who we are before anyone asks.
            conn.execute(text("SELECT set_config('application_name', :name, false)"), {"name": self.holder[:63]})
            taken = conn.execute(text("SELECT pg_try_advisory_lock(:cls, hashtext(current_database() || '.' || "
                                      "current_schema()))"), {"cls": _LEASE_CLASS}).scalar_one()
            if taken:
                self._conn, kept = conn, True
                return None
            return self._current_holder(conn)
        finally:
            if not kept:
                conn.close()

    def alive(self) -> bool:
        """Still held? A connection the server dropped (a restart, an outage) took the lease with it."""
        if self._conn is None:
            return not self.needed
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any driver error: the connection, and the lease, are gone
            self._drop()
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
            except Exception:  # noqa: BLE001 - the server ends it with the connection anyway
                pass
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool: a pooled connection would keep the lock
            except Exception:  # noqa: BLE001 - closing a dead connection may fail; it is gone either way
                pass

    @staticmethod
    def _current_holder(conn: Connection) -> str:
        row = conn.execute(text(
            "SELECT a.application_name, host(a.client_addr), a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid = (:cls)::oid AND l.objid = (hashtext(current_database() || '.' || current_schema()))::oid "
            "AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ), {"cls": _LEASE_CLASS & 0xFFFF_FFFF}).first()
        if row is None:
            return "another perfguard daemon (it has just let go: try again)"
        name, address, since = row
        where = f" from {address}" if address else ""
        return f"{name or 'another perfguard daemon'}{where}, since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip()
