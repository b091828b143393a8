"""What `perfguard status` shows, read without starting anything: whether a daemon holds this database,
and per model its last stored run and its next one (from the running daemon, else from the schedule).
Apart from the daemon's module, so that answering costs no import of what a daemon runs."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from typing import Any

from monitor.config import LoadedConfig
from monitor.service.lock import daemon_holder
from monitor.service.scheduler import next_due
from storage import queries
from storage.db import Database


def daemon_report(loaded: LoadedConfig, db: Database | None) -> dict[str, Any]:
    """What `perfguard status` shows: is a daemon running here, and per model its last and next run.

    The next run comes from the running daemon's /healthz when it answers, else from the schedule
    and the last stored run (what a daemon started now would do).
    """
    holder = daemon_holder(loaded.storage_url())
    listen = loaded.config.daemon.listen
    live_next: dict[str, str | None] = {}
    if holder is not None:
        try:
            with urllib.request.urlopen(f"http://{listen}/healthz", timeout=2) as reply:
                live_next = json.loads(reply.read())["next_runs"]
        except (OSError, ValueError, KeyError):
            live_next = {}
    now = datetime.now(UTC)
    models = []
    for model in loaded.config.models:
        newest = queries.history(db, model.name, limit=1) if db is not None else []
        last = newest[0] if newest else None
        if model.name in live_next:
            next_run, source = live_next[model.name], "daemon"
        elif last is None:
            next_run, source = now.isoformat(), "schedule"
        else:
            next_run, source = max(now, next_due(model.schedule, last.started_at)).isoformat(), "schedule"
        models.append(
            {
                "model": model.name,
                "last_run": None
                if last is None
                else {
                    "run_id": last.run_id,
                    "started_at": last.started_at.isoformat(),
                    "batch_size": last.batch_size,
                    "status": last.status,
                    "error": last.error_summary or None,
                },
                "next_run": next_run,
                "next_run_source": source,
            }
        )
    return {
        "daemon": {
            "running": holder is not None,
            "holder": holder,
            "endpoint": f"http://{listen}" if holder is not None else None,
        },
        "database": db.display_location() if db is not None else f"{loaded.sqlite_path()} (not created yet)",
        "models": models,
    }
