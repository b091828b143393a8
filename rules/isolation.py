"""A plugin rule's call in a process of its own, so that nothing it does can take the service down.

A thread cannot be stopped: a plugin that busy-loops would keep a core at 100 % for the rest of the
daemon's life, and one that calls `os._exit` (or segfaults in a C extension) would end the daemon
with no log line. So each call of a plugin rule runs in a child process, forked from a small server
process that has the rule contract imported already (multiprocessing's forkserver: a few
milliseconds per call, and no fork of the daemon's own threads and locks). Past its time limit the
child is killed with its whole process group; a child that dies says how. The rule and its context
travel pickled; `RuleContext.history` reads the database from the child, through a connection of
its own.

perfguard's built-in rules are its own code and run in threads (rules/engine.py).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, cast

from monitor.core.runs import RunRecord
from rules.api import Rule, RuleContext
from storage import queries
from storage.db import Database

MAX_HISTORY_RUNS = 10_000
STARTUP_LIMIT_S = 60.0  # for the child to start running the call, beyond the rule's own limit
_PR_SET_PDEATHSIG = 1
_CONTEXT = multiprocessing.get_context("forkserver")
# The forkserver imports this module (and so the contract and storage) once; each call is a fork.
_CONTEXT.set_forkserver_preload([__name__])


@dataclass(slots=True)
class IsolatedCall:
    """One rule call running in a child process, and what came back from it."""

    process: BaseProcess | None  # None: the call could not even be sent (outcome says why)
    conn: Connection | None
    deadline: float
    timeout_s: float
    outcome: str | None = None  # "ok" | "error" | "timeout" once settled
    result: object = None
    error: str | None = None


def start_call(label: str, rule: Rule, context: RuleContext, storage_url: str, timeout_s: float) -> IsolatedCall:
    """Start `rule.evaluate(context)` in a child process; `finish_calls` collects it."""
    try:
        payload = pickle.dumps((rule, replace(context, history=_no_history)))
    except Exception as exc:  # noqa: BLE001 - a rule holding a lambda or a lock cannot travel
        return IsolatedCall(None, None, 0.0, timeout_s, "error",
                            error=f"cannot be sent to its process: {type(exc).__name__}: {exc}")
    ours, theirs = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(target=_child, args=(theirs, list(sys.path), payload, storage_url, context.model.name),
                               name=f"perfguard-rule-{label}", daemon=True)
    process.start()
    theirs.close()
    # The time limit counts from the call, once the child runs it: the first call of a process
    # starts the forkserver, which may take seconds on a busy host.
    return IsolatedCall(process, ours, time.monotonic() + STARTUP_LIMIT_S + timeout_s, timeout_s)


def finish_calls(calls: Sequence[IsolatedCall]) -> None:
    """Wait for each call until it answers, dies or passes its deadline; kill what is left."""
    pending = {call.conn: call for call in calls if call.conn is not None}
    while pending:
        now = time.monotonic()
        for conn, call in [(k, c) for k, c in pending.items() if c.deadline <= now]:
            _kill(call)
            call.outcome = "timeout"
            call.error = f"no answer within its time limit of {call.timeout_s:g} s; its process was killed"
            del pending[conn]
        if not pending:
            break
        ready = wait(list(pending), timeout=max(0.0, min(c.deadline for c in pending.values()) - now))
        for ready_conn in cast(list[Connection], ready):  # wait() returns what it was given
            call = pending[ready_conn]
            if _receive(call):
                del pending[ready_conn]
    for call in calls:
        if call.conn is not None and call.process is not None:
            call.conn.close()
            call.process.join(timeout=5)


def _receive(call: IsolatedCall) -> bool:
    """Read one message of the child; True when the call is settled."""
    assert call.conn is not None and call.process is not None
    try:
        status, value = call.conn.recv()
    except (EOFError, OSError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
        call.process.join(timeout=5)
        code = call.process.exitcode
        _kill(call)
        call.outcome = "error"
        if isinstance(exc, EOFError):
            how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
            call.error = f"the rule ended its process ({how}) without answering"
        else:
            call.error = f"its answer could not be read: {type(exc).__name__}: {exc}"
        return True
    if status == "started":
        call.deadline = time.monotonic() + call.timeout_s
        return False
    _kill(call)  # done: whatever it started is not left running
    if status == "ok":
        call.outcome, call.result = "ok", value
    else:
        call.outcome, call.error = "error", value
    return True


def _kill(call: IsolatedCall) -> None:
    pid = call.process.pid if call.process is not None else None
    if call.process is None or pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own group: its children go with it
    except (ProcessLookupError, PermissionError):
        pass
    if call.process.is_alive():
        call.process.kill()


def _no_history(limit: int, batch_size: int | None = None) -> Sequence[RunRecord]:
    return ()


def _child(conn: Connection, sys_path: list[str], payload: bytes, storage_url: str, model: str) -> None:
    """In the child: become a process group (killed as one), die with the forkserver (so with the
    service), then call the rule and send back ("ok", result) or ("error", text)."""
    os.setpgrp()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the parent still kills it at its deadline
    sys.path[:] = sys_path  # where the plugin was found, as in the service
    conn.send(("started", None))
    database: list[Database] = []

    def history(limit: int, batch_size: int | None = None) -> Sequence[RunRecord]:
        if not database:
            database.append(Database.open(storage_url, upgrade=False))
        return tuple(queries.history(database[0], model, limit=min(max(1, limit), MAX_HISTORY_RUNS),
                                     batch_size=batch_size, mode="infer"))

    answer: tuple[str, Any]
    try:
        rule, context = pickle.loads(payload)
        answer = ("ok", rule.evaluate(replace(context, history=history)))
    except BaseException as exc:  # noqa: BLE001 - a plugin's bug is reported, never raised
        answer = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-8)}")
    try:
        conn.send(answer)
    except Exception as exc:  # noqa: BLE001 - a result that does not pickle is the rule's error
        conn.send(("error", f"returned {type(answer[1]).__name__}, which cannot be sent back: {exc}"))
    finally:
        for db in database:
            db.close()
