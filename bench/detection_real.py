"""Detection on a real series: scheduled runs of a real model, one change halfway, found and explained?

    .venv/bin/python bench/detection_real.py                       # both scenarios, 40 runs each
    .venv/bin/python bench/detection_real.py --runs 12             # quick check (change at run 6)
    .venv/bin/python bench/detection_real.py --scenario model --workdir /tmp/dr --json /tmp/dr.json

Each scenario gets its own folder (a temporary one, or ``--workdir/SCENARIO``) holding a perfguard
config, its SQLite database and the frozen references. The config has one model, ``real-mlp``:
``bench.real_models:mlp`` (an MLP 512 -> 1024 -> 1024 -> 512, fixed weights) on a ``[64, 512]``
float32 input, ``threads = 2``, ``max_time_s = 1.0``, ``[harness] min_samples = 50`` and
``[detection] confirm = true``; everything else is perfguard's default (detection: ``alpha =
0.001``, minimum effect 5 % for p50, 10 % for p99; contended runs excluded).

A scheduled run is simulated exactly as the daemon handles one (``Daemon.run_model`` and
``follow_up``), with the library calls it makes, in this order: ``benchmark_models(loaded, db,
[MODEL])`` (a fresh worker process, the run stored), then, if that run succeeded,
``result = check_models(db, loaded, [MODEL])``, and with ``confirm = true``
``ensure_references(db, loaded, [MODEL])`` (the first call freezes the reference copy of the series:
the baseline; later calls find it and do nothing) and ``confirm_pending(db, loaded, result.findings)`` (the
A/B of the current model against its frozen copy, which sets each new p50 regression's cause). Runs
follow each other with no pause.

At run ``--change-at`` (default ``runs // 2``, i.e. 20 of 0..39), before that run is benchmarked:

* ``environment``: the config's ``threads`` goes from 2 to 1 (the file is rewritten and reloaded with
  ``load_config``, as the daemon reloads an edited config). The run's environment fingerprint records
  the thread count, so detection sees an environment change there.
* ``model``: the model's factory becomes ``bench.real_models:wide_mlp`` (hidden layers 1024 -> 1536,
  about 1.9x the multiply-adds). Name, variant, device and batch size stay the same, so it is the same
  series; the frozen reference (a ``torch.export`` graph with its weights) is unaffected.

Expectations, per scenario (the script exits 1 if any is not met, after printing everything):

* a ``latency_ms_p50`` regression whose change run is the change run +- 1 (``--tolerance``);
* its cause: ``environment`` for the thread change, ``model`` for the widened layers;
* its recorded environment difference names ``threads`` (environment), or is empty (model);
* no false finding: any finding, of any metric, whose change run is outside change run +- 1. Findings
  at the change of other metrics (p99, throughput, peak RSS, model size, ...) are the same event seen
  in another metric and are listed as such.

Reported per scenario: the p50 series, every finding ever stored (resolved ones included) with its
change run as an index 0..runs-1, how often it was resolved and reopened, relative change, p-value,
samples confirmation, cause and the A/B
numbers (baseline ratio r0 = reference/live at freeze time, ratio now r1 = reference/current, model
change r0/r1 - 1, environment change), the run at which the expected finding first appeared and the
detection delay (that run minus the change run), and the wall time of each step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from monitor.config import STORAGE_URL_ENV, LoadedConfig, load_config  # noqa: E402
from monitor.core.series import FindingRecord  # noqa: E402
from monitor.detection.attribution import confirm_pending, ensure_references  # noqa: E402
from monitor.detection.changepoints import DetectionOptions  # noqa: E402
from monitor.detection.check import CheckResult, check_models  # noqa: E402
from monitor.service.benchmark import BenchmarkProgress, benchmark_models  # noqa: E402
from storage import findings as finding_store  # noqa: E402
from storage.db import Database  # noqa: E402
from tests.cli_helpers import toml_value  # noqa: E402  (the test configs' TOML writer)

MODEL = "real-mlp"
FACTORY = "bench.real_models:mlp"
WIDE_FACTORY = "bench.real_models:wide_mlp"
INPUT_SHAPE = [64, 512]
THREADS_BEFORE, THREADS_AFTER = 2, 1
SCENARIOS = ("environment", "model")
EXPECTED_CAUSE = {"environment": "environment", "model": "model"}
PRIMARY_METRIC = "latency_ms_p50"
MIN_BEFORE, MIN_AFTER = DetectionOptions().min_baseline, DetectionOptions().min_segment

log = logging.getLogger("detection_real")


# ================================================================================================
# Config
# ================================================================================================


@dataclass(frozen=True, slots=True)
class Settings:
    runs: int
    change_at: int
    tolerance: int
    max_time_s: float
    min_samples: int


def config_text(settings: Settings, factory: str, threads: int) -> str:
    tables: list[tuple[str, dict[str, Any]]] = [
        ("[storage]", {"url": "sqlite:///perfguard.db"}),
        ("[harness]", {"min_samples": settings.min_samples}),
        ("[detection]", {"confirm": True}),
        ("[[models]]", {
            "name": MODEL,
            "factory": factory,
            "inputs": [{"shape": INPUT_SHAPE, "dtype": "float32"}],
            "device": "cpu",
            "schedule": {"every": "10m"},
            "max_time_s": settings.max_time_s,
            "threads": threads,
        }),
    ]
    lines = ["# written by bench/detection_real.py"]
    for header, values in tables:
        lines += ["", header, *(f"{k} = {toml_value(v)}" for k, v in values.items())]
    return "\n".join(lines) + "\n"


def write_config(path: Path, settings: Settings, factory: str, threads: int) -> LoadedConfig:
    """Write the config atomically and load it as the daemon would on a reload."""
    temp = path.with_suffix(".tmp")
    temp.write_text(config_text(settings, factory, threads), encoding="utf-8")
    os.replace(temp, path)
    return load_config(path)


# ================================================================================================
# One scenario
# ================================================================================================


@dataclass(slots=True)
class RunInfo:
    index: int
    run_id: int | None
    status: str
    flags: list[str]
    p50_ms: float | None
    p99_ms: float | None
    threads: int | None
    factory: str
    new_findings: list[int]
    open_findings: list[int]
    causes_set: list[int]
    froze_reference: bool
    seconds: dict[str, float]
    loadavg_1m: float | None = None
    contended_blocks: int = 0
    error: str | None = None


@dataclass(slots=True)
class ScenarioResult:
    name: str
    folder: str
    settings: Settings
    runs: list[RunInfo] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] | None = None
    expectations: list[dict[str, Any]] = field(default_factory=list)
    primary: dict[str, Any] | None = None
    error: str | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.expectations) and all(e["met"] for e in self.expectations)


def run_scenario(name: str, folder: Path, settings: Settings) -> ScenarioResult:
    result = ScenarioResult(name=name, folder=str(folder), settings=settings)
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=False)
    config_path = folder / "perfguard.toml"
    factory, threads = FACTORY, THREADS_BEFORE
    loaded = write_config(config_path, settings, factory, threads)
    db = Database.open(loaded.storage_url())
    first_seen: dict[int, int] = {}  # finding id -> run index at which it first appeared
    try:
        for i in range(settings.runs):
            if i == settings.change_at:
                if name == "environment":
                    threads = THREADS_AFTER
                else:
                    factory = WIDE_FACTORY
                loaded = write_config(config_path, settings, factory, threads)
                log.info("%s: run %d: changed the config (factory %s, threads %d)", name, i, factory, threads)
            info = scheduled_run(db, loaded, i, factory)
            for fid in info.new_findings:
                first_seen.setdefault(fid, i)
            result.runs.append(info)
            log.info(
                "%s: run %2d/%d id %s %s p50 %s ms threads %s flags %s new findings %s (%.1f s)",
                name, i, settings.runs - 1, info.run_id, info.status, _fmt(info.p50_ms), info.threads,
                ",".join(info.flags) or "-", info.new_findings or "-", sum(info.seconds.values()),
            )
    except Exception:  # noqa: BLE001 - a crash in perfguard is a result of this bench: report it
        result.error = traceback.format_exc()
        log.error("%s: crashed at run %d:\n%s", name, len(result.runs), result.error)
    try:
        reference = finding_store.latest_reference(db, MODEL, _series_key(db))
        if reference is not None:
            result.reference = {
                "id": reference.id,
                "kind": reference.artifact.get("kind"),
                "fallbacks": reference.artifact.get("fallbacks"),
                "baseline_ratio": reference.measured.get("ratio"),
                "live_p50_ms": reference.measured.get("live_p50_ms"),
                "reference_p50_ms": reference.measured.get("reference_p50_ms"),
            }
        stored = finding_store.findings(db, MODEL)
    except Exception:  # noqa: BLE001
        result.error = (result.error or "") + traceback.format_exc()
        stored = []
    finally:
        db.close()
    index_of = {r.run_id: r.index for r in result.runs if r.run_id is not None}
    result.findings = [describe(f, index_of, first_seen, settings) for f in stored]
    for f in result.findings:
        f["reopened"] = reopenings(f["id"], result.runs)
    result.findings.sort(key=lambda f: (f["change_index"] if f["change_index"] is not None else 10**9, f["metric"]))
    judge(result)
    result.wall_s = time.perf_counter() - started
    return result


def scheduled_run(db: Database, loaded: LoadedConfig, index: int, factory: str) -> RunInfo:
    """One scheduled run, handled as the daemon handles it."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    records = benchmark_models(loaded, db, [MODEL], BenchmarkProgress())
    seconds["benchmark"] = time.perf_counter() - t
    frozen: list[Any] = []
    checked = CheckResult()
    caused: list[FindingRecord] = []
    # As follow_up (monitor/service/followup.py): detection only after a stored successful run.
    if any(r.status == "ok" and r.run_id is not None for r in records):
        t = time.perf_counter()
        checked = check_models(db, loaded, [MODEL])
        seconds["check"] = time.perf_counter() - t
        if loaded.config.detection.confirm:
            t = time.perf_counter()
            frozen = ensure_references(db, loaded, [MODEL])
            seconds["references"] = time.perf_counter() - t
            t = time.perf_counter()
            caused = confirm_pending(db, loaded, checked.findings)
            seconds["confirm"] = time.perf_counter() - t
    record = records[0] if records else None
    metrics = record.metrics if record is not None else None
    return RunInfo(
        index=index,
        run_id=record.run_id if record is not None else None,
        status=record.status if record is not None else "missing",
        flags=list(record.flags) if record is not None else [],
        p50_ms=metrics.latency_ms_p50 if metrics is not None else None,
        p99_ms=metrics.latency_ms_p99 if metrics is not None else None,
        threads=record.env.threads if record is not None else None,
        factory=factory,
        new_findings=[f.id for f in checked.new if f.id is not None],
        open_findings=[f.id for f in checked.findings if f.id is not None and f.state == "open"],
        causes_set=[f.id for f in caused if f.id is not None],
        froze_reference=bool(frozen),
        seconds={k: round(v, 2) for k, v in seconds.items()},
        loadavg_1m=record.host.loadavg_1m if record is not None else None,
        contended_blocks=record.host.contended_blocks if record is not None else 0,
        error=record.error_summary if record is not None and record.status != "ok" else None,
    )


def _series_key(db: Database) -> Any:
    from monitor.core.series import SeriesKey
    from storage.queries import active_variant

    with db.session(readonly=True) as session:
        variant = active_variant(session, MODEL)
    return SeriesKey(variant, "cpu", INPUT_SHAPE[0])


def reopenings(finding_id: int | None, runs: list[RunInfo]) -> int:
    """How often a finding went from open to not open (resolved) and back to open, check by check."""
    count, was_open, closed_since = 0, False, False
    for run in runs:
        is_open = finding_id in run.open_findings
        if was_open and not is_open:
            closed_since = True
        if is_open and closed_since:
            count, closed_since = count + 1, False
        was_open = is_open
    return count


def describe(
    f: FindingRecord, index_of: dict[int, int], first_seen: dict[int, int], settings: Settings
) -> dict[str, Any]:
    conf = f.confirmation or {}
    change_index = index_of.get(f.change_run_id)
    at_change = change_index is not None and abs(change_index - settings.change_at) <= settings.tolerance
    return {
        "id": f.id,
        "metric": f.metric,
        "verdict": f.verdict,
        "change": f.change,
        "state": f.state,
        "resolution": f.resolution,
        "change_run_id": f.change_run_id,
        "change_index": change_index,
        "expected_index": settings.change_at,
        "at_change": at_change,
        "first_seen_index": first_seen.get(f.id) if f.id is not None else None,
        "rel_change": f.rel_change,
        "p_value": f.p_value,
        "before_median": f.before.get("median"),
        "after_median": f.after.get("median"),
        "samples": f.samples,
        "env_diff": f.env_diff,
        "cause": f.cause,
        "confirmation": {
            "baseline_ratio": conf.get("baseline_ratio"),
            "ratio": conf.get("ratio"),
            "ratio_ci95": conf.get("ratio_ci95"),
            "model_change": conf.get("model_change"),
            "model_change_ci95": conf.get("model_change_ci95"),
            "environment_change": conf.get("environment_change"),
            "current_p50_ms": conf.get("current_p50_ms"),
            "reference_p50_ms": conf.get("reference_p50_ms"),
            "why": conf.get("why"),
            "error": conf.get("error"),
        } if f.confirmation is not None else None,
    }


def judge(result: ScenarioResult) -> None:
    """Fill in the primary finding and the expectations."""
    s = result.settings
    candidates = [
        f for f in result.findings
        if f["metric"] == PRIMARY_METRIC and f["verdict"] == "regression" and f["at_change"]
    ]
    primary = min(candidates, key=lambda f: (f["first_seen_index"] if f["first_seen_index"] is not None else 10**9))\
        if candidates else None
    result.primary = primary
    if primary is not None and primary["first_seen_index"] is not None:
        primary["delay_runs"] = primary["first_seen_index"] - s.change_at
    expect = result.expectations

    def add(what: str, met: bool, got: Any) -> None:
        expect.append({"what": what, "met": bool(met), "got": got})

    lo, hi = s.change_at - s.tolerance, s.change_at + s.tolerance
    add(f"{PRIMARY_METRIC} regression with change run in {lo}..{hi}", primary is not None,
        None if primary is None else primary["change_index"])
    want = EXPECTED_CAUSE[result.name]
    add(f"its cause is {want}", primary is not None and primary["cause"] == want,
        None if primary is None else primary["cause"])
    if result.name == "environment":
        diff = (primary or {}).get("env_diff") or {}
        add(f"its environment difference names threads {THREADS_BEFORE}->{THREADS_AFTER}",
            diff.get("threads") == [THREADS_BEFORE, THREADS_AFTER], diff or None)
    else:
        add("no environment difference recorded at the change", primary is not None and not primary["env_diff"],
            None if primary is None else primary["env_diff"])
    false = [f for f in result.findings if not f["at_change"]]
    add("no false finding (change run outside the window)", not false,
        [f"{f['metric']} {f['verdict']} at run {f['change_index']}" for f in false] or None)
    if result.error is not None:
        add("no crash", False, result.error.strip().splitlines()[-1])


# ================================================================================================
# Output
# ================================================================================================


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} %"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def series_line(result: ScenarioResult) -> str:
    """The p50 series in ms, `|` before the change run; `*` marks a contended run (detection skips it)."""
    parts = []
    for r in result.runs:
        text = _fmt(r.p50_ms, 2) if r.status == "ok" else r.status
        if "contended" in r.flags:
            text += "*"
        if r.index == result.settings.change_at:
            parts.append("|")
        parts.append(text)
    return " ".join(parts)


def level(result: ScenarioResult, after: bool) -> float | None:
    c = result.settings.change_at
    values = [r.p50_ms for r in result.runs if r.p50_ms is not None and (r.index >= c) == after]
    return statistics.median(values) if values else None


def spread(result: ScenarioResult, after: bool) -> float | None:
    """Coefficient of variation of p50 on one side of the change."""
    c = result.settings.change_at
    values = [r.p50_ms for r in result.runs if r.p50_ms is not None and (r.index >= c) == after]
    if len(values) < 2:
        return None
    return statistics.stdev(values) / statistics.mean(values)


def markdown(results: list[ScenarioResult], command: str, total_s: float) -> str:
    s = results[0].settings
    out = [
        "## Detection on a real series (change halfway, cause attributed)",
        "",
        f"`{command}` ({s.runs} scheduled runs per scenario of `real-mlp` = `bench.real_models:mlp`, "
        f"an MLP 512-1024-1024-512 at batch {INPUT_SHAPE[0]}, `max_time_s = {s.max_time_s}`, "
        f"`min_samples = {s.min_samples}`, detection defaults, `confirm = true`; each run is "
        "`benchmark_models` -> `check_models` -> `ensure_references` -> `confirm_pending`, as the daemon does; "
        f"the change is made before run {s.change_at} of 0..{s.runs - 1}; total wall time {total_s / 60:.1f} min)",
        "",
        "| scenario | change at run | p50 before -> after (median) | CV of p50 before / after | finding | "
        "change run | first seen at run (delay) | rel. change | p | cause | r0 (baseline ratio) | r1 (now) | "
        "model change | environment change | expectations |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        change = "threads 2 -> 1" if r.name == "environment" else "hidden 1024 -> 1536"
        p = r.primary
        conf = (p or {}).get("confirmation") or {}
        seen = "-"
        if p is not None and p.get("first_seen_index") is not None:
            seen = f"{p['first_seen_index']} (+{p['delay_runs']})"
        out.append(" | ".join([
            f"| {r.name} ({change})", str(s.change_at),
            f"{_fmt(level(r, False))} -> {_fmt(level(r, True))} ms",
            f"{_pct(spread(r, False)).lstrip('+')} / {_pct(spread(r, True)).lstrip('+')}",
            f"{PRIMARY_METRIC} {p['verdict']}" if p else "**not detected**",
            str(p["change_index"]) if p else "-",
            seen,
            _pct(p["rel_change"]) if p else "-",
            _p(p["p_value"]) if p else "-",
            f"**{p['cause']}**" if p and p["cause"] else "-",
            _fmt(conf.get("baseline_ratio")), _fmt(conf.get("ratio")),
            _pct(conf.get("model_change")), _pct(conf.get("environment_change")),
            ("met" if r.ok else "**NOT met**") + " |",
        ]))
    out.append("")
    for r in results:
        out.append(f"**{r.name}**: p50 ms by run (`|` = the change, `*` = contended, skipped by detection):")
        out.append("")
        out.append(f"    {series_line(r)}")
        out.append("")
        if r.reference:
            ref = r.reference
            out.append(
                f"Reference: {ref['kind']} (fallbacks: {', '.join(ref['fallbacks'] or []) or 'none'}), frozen at run 0, "
                f"r0 = {_fmt(ref['baseline_ratio'])} (live {_fmt(ref['live_p50_ms'])} ms, copy "
                f"{_fmt(ref['reference_p50_ms'])} ms)."
            )
            if ref["baseline_ratio"] is None:
                out.append(
                    "**The reference has no baseline ratio** (its freeze A/B kept no uncontended round): "
                    "every attribution of this series can only say `unknown` (\"no usable ratio\")."
                )
            out.append("")
        contended = [x.index for x in r.runs if "contended" in x.flags]
        failed = [x.index for x in r.runs if x.status != "ok"]
        loads = [x.loadavg_1m for x in r.runs if x.loadavg_1m is not None]
        out.append(
            f"Host: {len(contended)} of {len(r.runs)} runs flagged contended (skipped by detection)"
            + (f": runs {', '.join(map(str, contended))}" if contended else "")
            + (f"; failed runs: {', '.join(map(str, failed))}" if failed else "")
            + (f"; load average (1 min) median {statistics.median(loads):.2f}, max {max(loads):.2f}" if loads else "")
            + "."
        )
        out.append("")
        out.append("| id | metric | verdict | state (reopened) | change run | first seen | rel. change | p "
                   "| samples 95 % CI | cause | r0 | r1 | model change | env change | env diff | at the change? |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for f in r.findings:
            conf = f["confirmation"] or {}
            samples = f["samples"] or {}
            interval = samples.get("interval")
            ci = f"{_pct(interval[0])} .. {_pct(interval[1])}" if interval else "-"
            env = ", ".join(f"{k} {v[0]}->{v[1]}" for k, v in (f["env_diff"] or {}).items()) or "-"
            out.append(" | ".join([
                f"| {f['id']}", f["metric"], f["verdict"],
                f["state"] + (f" ({f['reopened']}x)" if f.get("reopened") else ""), str(f["change_index"]),
                str(f["first_seen_index"]) if f["first_seen_index"] is not None else "-",
                _pct(f["rel_change"]), _p(f["p_value"]), ci, f["cause"] or "-",
                _fmt(conf.get("baseline_ratio")), _fmt(conf.get("ratio")),
                _pct(conf.get("model_change")), _pct(conf.get("environment_change")), env,
                ("yes" if f["at_change"] else "**no (false)**") + " |",
            ]))
        if not r.findings:
            out.append("| - | (no findings) | | | | | | | | | | | | | | |")
        out.append("")
        for e in r.expectations:
            mark = "met" if e["met"] else "**NOT met**"
            out.append(f"- {mark}: {e['what']} (got: {e['got']})")
        times = _step_times(r)
        out.append(
            f"- wall time {r.wall_s:.0f} s; per run, median: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        )
        if r.error:
            out.append("")
            out.append("Crash:")
            out.append("")
            out.extend("    " + line for line in r.error.rstrip().splitlines())
        out.append("")
    return "\n".join(out)


def _step_times(result: ScenarioResult) -> dict[str, float]:
    keys = ("benchmark", "check", "references", "confirm")
    return {
        k: statistics.median([r.seconds.get(k, 0.0) for r in result.runs]) if result.runs else 0.0
        for k in keys
    } | {"max confirm": max((r.seconds.get("confirm", 0.0) for r in result.runs), default=0.0),
         "freeze (run 0)": result.runs[0].seconds.get("references", 0.0) if result.runs else 0.0}


def to_json(results: list[ScenarioResult], command: str, total_s: float) -> dict[str, Any]:
    return {
        "command": command,
        "total_wall_s": total_s,
        "ok": all(r.ok for r in results),
        "scenarios": [
            {
                "name": r.name,
                "folder": r.folder,
                "settings": {"runs": r.settings.runs, "change_at": r.settings.change_at,
                             "tolerance": r.settings.tolerance, "max_time_s": r.settings.max_time_s,
                             "min_samples": r.settings.min_samples},
                "ok": r.ok,
                "wall_s": r.wall_s,
                "p50_ms": [x.p50_ms for x in r.runs],
                "runs": [
                    {"index": x.index, "run_id": x.run_id, "status": x.status, "flags": x.flags,
                     "p50_ms": x.p50_ms, "p99_ms": x.p99_ms, "threads": x.threads, "factory": x.factory,
                     "new_findings": x.new_findings, "open_findings": x.open_findings,
                     "causes_set": x.causes_set,
                     "froze_reference": x.froze_reference, "seconds": x.seconds,
                     "loadavg_1m": x.loadavg_1m, "contended_blocks": x.contended_blocks, "error": x.error}
                    for x in r.runs
                ],
                "reference": r.reference,
                "primary": r.primary,
                "findings": r.findings,
                "expectations": r.expectations,
                "error": r.error,
            }
            for r in results
        ],
    }


# ================================================================================================
# Main
# ================================================================================================


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="scheduled runs per scenario (default 40)")
    parser.add_argument("--change-at", type=int, default=None, help="run index of the change (default runs // 2)")
    parser.add_argument("--tolerance", type=int, default=1, help="allowed distance of the change run (default 1)")
    parser.add_argument("--scenario", choices=(*SCENARIOS, "both"), default="both")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="put each scenario in WORKDIR/SCENARIO (must not exist) and keep it; "
                             "default: a temporary folder, removed at the end")
    parser.add_argument("--max-time-s", type=float, default=1.0, help="sampling budget per run (default 1.0)")
    parser.add_argument("--min-samples", type=int, default=50, help="[harness] min_samples (default 50)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log perfguard's own INFO messages too")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    change_at = args.change_at if args.change_at is not None else args.runs // 2
    if not 1 <= change_at <= args.runs - 1:
        parser.error(f"--change-at must be in 1..{args.runs - 1}")
    if change_at < MIN_BEFORE or args.runs - change_at < MIN_AFTER:
        print(f"warning: detection needs {MIN_BEFORE} runs before a change and {MIN_AFTER} from it on "
              f"(DetectionOptions min_baseline, min_segment): a change at run {change_at} of {args.runs} cannot be "
              "found, so this only exercises the plumbing and the expectations will not be met", file=sys.stderr)
    settings = Settings(args.runs, change_at, args.tolerance, args.max_time_s, args.min_samples)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    # The workers must import bench.real_models; they inherit this environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # Never let an inherited URL point the bench at a real database.
    os.environ.pop(STORAGE_URL_ENV, None)

    command = ".venv/bin/python bench/detection_real.py" + (" " + " ".join(sys.argv[1:]) if argv is None and
                                                            sys.argv[1:] else "")
    names = SCENARIOS if args.scenario == "both" else (args.scenario,)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="perfguard-detection-real-") as temp:
        base = args.workdir.resolve() if args.workdir is not None else Path(temp)
        for name in names:
            results.append(run_scenario(name, base / name, settings))
    total = time.perf_counter() - started
    print(markdown(results, command, total))
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results, command, total), indent=2, default=str), encoding="utf-8")
        print(f"JSON written to {args.json}", file=sys.stderr)
    ok = all(r.ok for r in results)
    print(f"{'all expectations met' if ok else 'EXPECTATIONS NOT MET'} (total {total:.0f} s)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
