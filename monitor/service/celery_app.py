"""The fleet's Celery app at module level, so that Celery's own tools find it the usual way:

    PERFGUARD_CONFIG=/etc/perfguard/perfguard.toml celery -A monitor.service.celery_app inspect active
    PERFGUARD_CONFIG=... celery -A monitor.service.celery_app purge

It is built from the config that $PERFGUARD_CONFIG names (default: ./perfguard.toml), exactly as the
daemon and `perfguard worker` build theirs (`fleet.make_app`). With $PERFGUARD_QUEUE set, the benchmark
task of that hardware class is registered too, so `celery -A ... worker -Q "$PERFGUARD_QUEUE"` works;
`perfguard worker --queue CLASS` remains the way to run one (it sets the options a benchmark needs).
"""

from __future__ import annotations

import os

from monitor.config import DEFAULT_CONFIG_NAME, ConfigError
from monitor.service.fleet import make_app, register_task
from monitor.service.loading import load_service_config

try:
    loaded = load_service_config(os.environ.get("PERFGUARD_CONFIG", DEFAULT_CONFIG_NAME))
except ConfigError as exc:
    raise SystemExit("perfguard: " + "; ".join(exc.lines)) from None
if loaded.config.executor.kind != "celery":
    raise SystemExit(f'perfguard: {loaded.path}: [executor] kind = "celery" and a broker are needed for a Celery app')

app = make_app(loaded.config.executor)
if os.environ.get("PERFGUARD_QUEUE"):
    register_task(app, loaded, os.environ["PERFGUARD_QUEUE"])
