"""Host events: the host-speed probe of every run on a host, read as series of its own.

The probe (monitor/harness/host_probe.py) does the same fixed work in every run, whatever the model,
so the probe figures of all runs on one host, in time order, say how fast the host itself was. So does
how much CPU other processes used while each run sampled: a busy neighbour takes a core from a model
that wants two, while the one-thread probe may run on the other core untouched. A lasting rise of
either is a host event (a host getting faster again ends one): shown in the report and on /metrics,
never a model's finding (the models' relative readings cancel it, and their contended runs are left
out). Contended runs count here: they are what a busy host looks like.
"""

from __future__ import annotations

import numpy as np

from monitor.config import LoadedConfig
from monitor.core.hosts import HostEventRecord, ProbeRun
from monitor.core.series import SeriesState
from monitor.detection.changepoints import DetectionOptions, detect_changes, in_effect
from monitor.detection.series import level
from storage import host_events as store
from storage.db import Database
from storage.host_events import BUSY, PROBE_FIGURES

# A host is worth a look when its probe moved this much; smaller moves are the host's usual drift.
HOST_MIN_EFFECT = 0.10
# Others' CPU use is read with the contention threshold added (a quiet host's 1 % and 3 % are then
# about the same thing, and the series never sits at 0) and counts once it moved by half: from under
# the threshold to a busy neighbour, or back (a move down can never be more than -100 %).
BUSY_MIN_EFFECT = 0.5


def check_hosts(db: Database, loaded: LoadedConfig, hosts: list[str]) -> list[HostEventRecord]:
    """Detect probe changes on each host; the hosts' open events, as stored."""
    events: list[HostEventRecord] = []
    for host in hosts:
        events += check_host(db, loaded, host)
    return events


def check_host(db: Database, loaded: LoadedConfig, host: str) -> list[HostEventRecord]:
    """Detect changes of each probe figure over the host's newest runs and store them as events."""
    runs = store.probe_runs(db, host, loaded.config.detection.history)
    alpha = loaded.config.detection.alpha
    detected: list[HostEventRecord] = []
    checked: dict[str, SeriesState] = {}
    for figure in (*PROBE_FIGURES, BUSY):
        values = np.array([np.nan if r.figures[figure] is None else r.figures[figure] for r in runs], dtype=float)
        if not np.isfinite(values).any():
            continue
        if figure == BUSY:
            values = values + loaded.config.harness.contention_cpu_pct
        options = DetectionOptions(min_effect=BUSY_MIN_EFFECT if figure == BUSY else HOST_MIN_EFFECT, alpha=alpha)
        points = detect_changes(values, options=options)
        newest = values[points[-1].index :] if points else values
        current = float(np.median(newest[np.isfinite(newest)]))
        checked[figure] = SeriesState(current, options.min_effect)
        for i, change in enumerate(points):
            if change.direction == "down" or not in_effect(change, points, values, options):
                continue  # a host getting faster or quieter ends an event (or is no news); or it is over
            start = points[i - 1].index if i else 0
            stop = points[i + 1].index if i + 1 < len(points) else len(values)
            detected.append(_event(host, figure, runs, values, change.index, (start, stop), change.direction,
                                   change.rel_change, change.p_value))
    return store.sync_host_events(db, host, checked, detected)


def _event(
    host: str, figure: str, runs: list[ProbeRun], values: np.ndarray, at: int, segment: tuple[int, int],
    direction: str, rel_change: float, p_value: float,
) -> HostEventRecord:
    run = runs[at]
    return HostEventRecord(
        host=host, signal=figure, change=direction, change_run_id=run.run_id, change_at=run.started_at,
        before=level(values[segment[0] : at]), after=level(values[at : segment[1]]),
        rel_change=rel_change, p_value=p_value,
    )
