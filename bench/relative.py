"""End-to-end bench of relative readings on real models, through the real CLI, as users run it.

Every round is `perfguard run --json` over all models, then `perfguard check --json --no-rules`, in a
fresh SQLite database, with perfguard's defaults (relative runs against a frozen reference, frozen by
the first check; host-speed probe; alpha 0.001; contended runs excluded) and `max_time_s` per series.

Phase `steps` (8 models: a CNN, an MLP, a small transformer encoder and a GRU, each as `X-step` and an
unchanged twin `X-twin`):
- rounds 0 .. R-1 (`--rounds`, default 30): at round R//2 each step model's factory becomes its changed
  version (an extra layer or a wider layer; bench/relative_models.py), whose size is
  measured first by timing old and new interleaved in one worker (an "ab" job);
- then `--hog-rounds` rounds with a CPU hog (a busy Python process) started beside the runs: a host
  slowdown; then `--env-rounds` rounds with every model at one thread instead of two: an environment
  change (the fingerprint records it).
Phase `quiet`: `--quiet-rounds` (default 100) rounds of the four unchanged models: every latency finding
there is false. Phase `cost`: the four models, alternating rounds of today's absolute runs
(`[harness] relative = false`, `probe = false`) and relative runs, both at the same ±1 % target: wall
time per series (the worker's whole life) and the precision reached.

Each phase also replays the detection of perfguard before relative readings on the same runs: the
absolute p50/p99 series (contended runs excluded), `detect_changes` with its defaults (5 % / 10 %),
after every round, so both columns come from the same measurements.

    python bench/relative.py [--phase steps|quiet|cost|all] [--rounds 30] [--max-time 2.5] [--out DIR]

Prints the tables of bench/RESULTS.md §12 and writes every round's numbers to OUT/relative.json. Run it
alone on the machine: it is a timing benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.detection.changepoints import DetectionOptions, detect_changes, in_effect  # noqa: E402
from monitor.harness.protocol import (  # noqa: E402
    CompareJob,
    InputTensor,
    SamplingSettings,
    Subject,
)
from monitor.harness.runner import run_worker  # noqa: E402
from tests.cli_helpers import PERFGUARD, toml_value  # noqa: E402

FAMILIES = {
    # name: (inputs, original factory, changed factory, what changed)
    "cnn": ([32, 3, 32, 32], "cnn", "cnn_wider", "second conv 32 -> 34 channels"),
    "mlp": ([32, 1024], "mlp", "mlp_extra_layer", "an extra 1024 -> 256 layer"),
    "encoder": ([8, 64, 256], "encoder", "encoder_wider", "feed-forward 1024 -> 1408"),
    "gru": ([16, 32, 64], "gru", "gru_wider", "hidden state 128 -> 132"),
}
LATENCY = ("latency_ms_p50", "latency_ms_p99", "throughput_per_s")
ABSOLUTE_EFFECT = {"latency_ms_p50": 0.05, "latency_ms_p99": 0.10}


def factory(name: str) -> str:
    return f"bench.relative_models:{name}"


def model_table(name: str, family: str, changed: bool, max_time: float, threads: int) -> dict[str, Any]:
    inputs, original, new, _ = FAMILIES[family]
    return {"name": name, "factory": factory(new if changed else original), "inputs": [{"shape": inputs}],
            "max_time_s": max_time, "threads": threads, "timeout_s": 120}


def write_config(folder: Path, models: list[dict[str, Any]], harness: dict[str, Any] | None = None) -> Path:
    lines = ["[storage]", 'url = "sqlite:///perfguard.db"', "", "[harness]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in (harness or {}).items()]
    lines += ["", "[detection]", "confirm = false", ""]
    for model in models:
        lines += ["[[models]]", *(f"{k} = {toml_value(v)}" for k, v in model.items()), ""]
    path = folder / "perfguard.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def cli(*args: str, config: Path) -> Any:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([str(PERFGUARD), *args, "--json", "--config", str(config)], cwd=config.parent, env=env,
                          capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"perfguard {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


@dataclass
class Round:
    """One round: its runs (by model) and the latency findings open after its check."""

    index: int
    phase: str
    runs: dict[str, dict[str, Any]]
    findings: list[dict[str, Any]]
    host_events: list[dict[str, Any]]
    seconds: float


@dataclass
class Log:
    rounds: list[Round] = field(default_factory=list)

    def run_round(self, config: Path, phase: str) -> Round:
        started = time.monotonic()
        runs = {r["model"]: r for r in cli("run", config=config)}
        checked = cli("check", "--no-rules", config=config)
        latency = [f for f in checked["findings"] if f["metric"] in LATENCY]
        item = Round(len(self.rounds), phase, runs, latency, checked.get("host_events", []),
                     time.monotonic() - started)
        self.rounds.append(item)
        flags = ", ".join(f"{m}:{','.join(r['flags'])}" for m, r in runs.items() if r["flags"])
        print(f"  round {item.index:3d} [{phase}] {item.seconds:5.1f} s, {len(latency)} open latency findings, "
              f"{len(item.host_events)} host events{'; ' + flags if flags else ''}", file=sys.stderr, flush=True)
        return item


def interleaved_size(family: str, max_time: float, workers: int = 3) -> float:
    """How much slower the changed model is, timed interleaved with the original in one worker: the
    median over `workers` fresh workers (a process may land its weights in a faster or slower state)."""
    return float(np.median([_interleaved_once(family, max_time) for _ in range(workers)]))


def _interleaved_once(family: str, max_time: float) -> float:
    inputs, original, new, _ = FAMILIES[family]
    subjects = [Subject("old", factory(original), [InputTensor(inputs)]),
                Subject("new", factory(new), [InputTensor(inputs)])]
    job = CompareJob(model=family, subjects=subjects, batch_size=inputs[0], threads=2,
                     sampling=SamplingSettings(max_time_s=max_time), sys_path=[str(ROOT)])
    outcome = run_worker(job, timeout_s=600, cwd=ROOT)
    if outcome.result is None:
        raise RuntimeError(f"the A/B of {family} failed: {outcome.error}")
    return float(outcome.result.comparison["new"]["ratio_p50"]) - 1.0


def absolute_detection(rounds: list[Round], model: str, metric: str) -> list[tuple[int, dict[str, Any]]]:
    """perfguard's detection before relative readings, replayed after every round on the absolute
    series: (round, change) for each change in effect after that round, as (index, direction, size)."""
    values: list[float] = []
    at_round: list[int] = []
    seen: list[tuple[int, dict[str, Any]]] = []
    options = DetectionOptions(min_effect=ABSOLUTE_EFFECT[metric])
    for item in rounds:
        run = item.runs.get(model)
        if run and run["status"] == "ok" and "contended" not in run["flags"] and run["metrics"][metric]:
            values.append(run["metrics"][metric])
            at_round.append(item.index)
        series = np.array(values)
        points = detect_changes(series, options=options)
        for change in points:
            if in_effect(change, points, series, options):
                seen.append((item.index, {"round": at_round[change.index], "direction": change.direction,
                                          "size": change.rel_change}))
    return seen


def first_found(seen: list[tuple[int, dict[str, Any]]], near: int, direction: str = "up") -> tuple[int, float] | None:
    """The first round after which a change near round `near` (±1) is in effect, and its size then."""
    for found_at, change in seen:
        if abs(change["round"] - near) <= 1 and change["direction"] == direction:
            return found_at, change["size"]
    return None


def false_changes(seen: list[tuple[int, dict[str, Any]]], allowed: set[int] = frozenset()) -> set[tuple[int, str]]:
    """Distinct changes found away from the rounds where something really changed."""
    return {(c["round"], c["direction"]) for _, c in seen if all(abs(c["round"] - a) > 1 for a in allowed)}


def relative_found(rounds: list[Round], model: str, near_round: int) -> tuple[int, dict[str, Any]] | None:
    """The first round whose check shows a p50 regression of `model` beginning near `near_round`."""
    for item in rounds:
        for f in item.findings:
            if f["model"] == model and f["metric"] == "latency_ms_p50" and f["verdict"] == "regression":
                start = _round_of(rounds, f["change_run_id"])
                if start is not None and abs(start - near_round) <= 1:
                    return item.index, f
    return None


def _round_of(rounds: list[Round], run_id: int) -> int | None:
    for item in rounds:
        if any(r["run_id"] == run_id for r in item.runs.values()):
            return item.index
    return None


def findings_opened(rounds: list[Round], models: set[str]) -> dict[int, dict[str, Any]]:
    """Every latency finding of `models` seen open in these rounds, by id (with the round it began)."""
    opened: dict[int, dict[str, Any]] = {}
    for item in rounds:
        for f in item.findings:
            if f["model"] in models and f["id"] not in opened:
                opened[f["id"]] = {**f, "began_round": _round_of(rounds, f["change_run_id"]), "seen_round": item.index}
    return opened


def phase_steps(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    sizes = {family: interleaved_size(family, 10.0) for family in FAMILIES}
    for family, size in sizes.items():
        print(f"{family}: {FAMILIES[family][3]}: {100 * size:+.1f} % measured interleaved", file=sys.stderr)
    change_at = args.rounds // 2

    def models(changed: bool, threads: int) -> list[dict[str, Any]]:
        tables = []
        for family in FAMILIES:
            tables.append(model_table(f"{family}-step", family, changed, args.max_time, threads))
            tables.append(model_table(f"{family}-twin", family, False, args.max_time, threads))
        return tables

    log = Log()
    config = write_config(folder, models(False, 2))
    for r in range(args.rounds):
        if r == change_at:
            write_config(folder, models(True, 2))
        log.run_round(config, "steps")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(args.hog_rounds):
            log.run_round(config, "hog")
    finally:
        hog.kill()
        hog.wait()
    write_config(folder, models(True, 1))
    env_at = len(log.rounds)
    for _ in range(args.env_rounds):
        log.run_round(config, "env")
    return analyse_steps(log, sizes, change_at, env_at)


def analyse_steps(log: Log, sizes: dict[str, float], change_at: int, env_at: int) -> dict[str, Any]:
    steps = [r for r in log.rounds if r.phase == "steps"]
    hog = [r for r in log.rounds if r.phase == "hog"]
    env = [r for r in log.rounds if r.phase == "env"]
    rows = []
    for family in FAMILIES:
        model = f"{family}-step"
        rel = relative_found(steps, model, change_at)
        absolute = first_found(absolute_detection(steps, model, "latency_ms_p50"), change_at)
        rows.append({
            "model": family, "change": FAMILIES[family][3], "interleaved": sizes[family],
            "relative_rounds": None if rel is None else rel[0] - change_at + 1,
            "relative_size": None if rel is None else rel[1]["rel_change"],
            "relative_reading": None if rel is None else rel[1]["reading"],
            "relative_cause": None if rel is None else rel[1]["cause"],
            "absolute_rounds": None if absolute is None else absolute[0] - change_at + 1,
            "absolute_size": None if absolute is None else absolute[1],
        })
    twins = {f"{family}-twin" for family in FAMILIES}
    steps_false = {i: f for i, f in findings_opened(steps, twins).items()}
    absolute_false = {
        model: [[metric, *c] for metric in ABSOLUTE_EFFECT
                for c in sorted(false_changes(absolute_detection(steps, model, metric)))]
        for model in twins
    }
    everyone = {m for r in log.rounds for m in r.runs}
    hog_opened = {i: f for i, f in findings_opened(log.rounds[: env_at], everyone).items()
                  if f["seen_round"] >= hog[0].index} if hog else {}
    env_opened = {i: f for i, f in findings_opened(log.rounds, everyone).items()
                  if f["began_round"] is not None and f["began_round"] >= env_at}
    return {
        "rows": rows,
        "twin_false_findings": list(steps_false.values()),
        "twin_false_absolute": absolute_false,
        "hog": {"rounds": len(hog), "findings_opened": list(hog_opened.values()),
                "host_events": hog[-1].host_events if hog else [],
                "contended_runs": sum("contended" in r["flags"] for h in hog for r in h.runs.values()),
                "runs": sum(len(h.runs) for h in hog)},
        "env": {"rounds": len(env), "findings": [
            {k: f[k] for k in ("model", "metric", "reading", "cause", "rel_change", "env_diff", "began_round")}
            for f in env_opened.values()]},
        "round_seconds": float(np.median([r.seconds for r in log.rounds])),
        "log": [r.__dict__ for r in log.rounds],
    }


def phase_quiet(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    config = write_config(folder, [model_table(family, family, False, args.max_time, 2) for family in FAMILIES])
    log = Log()
    for _ in range(args.quiet_rounds):
        log.run_round(config, "quiet")
    opened = findings_opened(log.rounds, set(FAMILIES))
    absolute = {family: [[metric, *c] for metric in ABSOLUTE_EFFECT
                         for c in sorted(false_changes(absolute_detection(log.rounds, family, metric)))]
                for family in FAMILIES}
    return {"rounds": len(log.rounds), "false_findings": list(opened.values()), "absolute_false": absolute,
            "log": [r.__dict__ for r in log.rounds]}


def phase_cost(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    tables = [model_table(family, family, False, args.max_time, 2) for family in FAMILIES]
    relative = write_config(folder, tables)
    cli("run", config=relative)
    cli("check", "--no-rules", config=relative)  # freezes the references
    samples: dict[str, dict[str, list[dict[str, float]]]] = {f: {"absolute": [], "relative": []} for f in FAMILIES}
    for _ in range(args.cost_rounds):
        for mode, harness in (("absolute", {"relative": False, "probe": False}), ("relative", {})):
            config = write_config(folder, tables, harness)
            for run in cli("run", config=config):
                m, d = run["metrics"], run["details"]
                rel_ci = None
                if m.get("rel_to_reference") and m.get("rel_to_reference_low"):
                    rel_ci = (m["rel_to_reference_high"] - m["rel_to_reference_low"]) / 2 / m["rel_to_reference"]
                wall = _seconds(run["finished_at"]) - _seconds(run["started_at"])
                samples[run["model"]][mode].append({
                    "wall_s": wall, "timed_s": d["warmup_s"] + d["sampling_s"], "ci95_rel": m.get("ci95_rel"),
                    "rel_ci95": rel_ci, "stop_ci": d["stop_reason"] == "ci",
                    "relative": m.get("rel_to_reference") is not None,
                })
    summary = {}
    for family, modes in samples.items():
        row = {}
        for mode, items in modes.items():
            row[mode] = {
                "wall_s": float(np.median([i["wall_s"] for i in items])),
                "timed_s": float(np.median([i["timed_s"] for i in items])),
                "ci95_rel": float(np.median([i["ci95_rel"] for i in items if i["ci95_rel"] is not None] or [np.nan])),
                "rel_ci95": float(np.median([i["rel_ci95"] for i in items if i["rel_ci95"] is not None] or [np.nan])),
                "stopped_at_target": sum(i["stop_ci"] for i in items) / len(items),
                "relative_runs": sum(i["relative"] for i in items),
            }
        row["wall_ratio"] = row["relative"]["wall_s"] / row["absolute"]["wall_s"]
        summary[family] = row
    return {"rounds": args.cost_rounds, "summary": summary, "samples": samples}


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def twin_spread(log: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """For each twin, over the steps rounds' clean runs: CV and max/min of the absolute p50 and of the
    ratio to its reference (what the host's drift does to each reading)."""
    spread = {}
    for family in FAMILIES:
        runs = [r["runs"][f"{family}-twin"] for r in log if r["phase"] == "steps" and f"{family}-twin" in r["runs"]]
        clean = [r["metrics"] for r in runs if r["status"] == "ok" and "contended" not in r["flags"]]
        pairs = {}
        for name, metric in (("absolute", "latency_ms_p50"), ("relative", "rel_to_reference")):
            values = np.array([m[metric] for m in clean if m.get(metric)])
            pairs[name] = (float(values.std() / values.mean()), float(values.max() / values.min())) \
                if values.size else (float("nan"), float("nan"))
        spread[f"{family}-twin"] = pairs
    return spread


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} %"


def report(results: dict[str, Any]) -> None:
    print(f"CPU: {platform.processor() or platform.machine()}; {os.cpu_count()} cores")
    steps = results.get("steps")
    if steps:
        print("\n| model | change | size interleaved | relative: rounds / size / reading, cause | "
              "absolute (before): rounds / size |")
        print("|---|---|---|---|---|")
        for row in steps["rows"]:
            rel = (f"{row['relative_rounds']} / {pct(row['relative_size'])} / {row['relative_reading']}, "
                   f"{row['relative_cause']}" if row["relative_rounds"] is not None else "not found")
            absolute = (f"{row['absolute_rounds']} / {pct(row['absolute_size'])}"
                        if row["absolute_rounds"] is not None else "not found")
            print(f"| {row['model']} | {row['change']} | {pct(row['interleaved'])} | {rel} | {absolute} |")
        print(f"\nfalse latency findings on the twins (relative): {len(steps['twin_false_findings'])}; "
              f"absolute detection on the same runs: "
              f"{sum(len(v) for v in steps['twin_false_absolute'].values())} ({steps['twin_false_absolute']})")
        hog = steps["hog"]
        print(f"CPU hog, {hog['rounds']} rounds: {hog['contended_runs']}/{hog['runs']} runs contended; latency "
              f"findings opened: {len(hog['findings_opened'])}; host events after it: "
              f"{[(e['signal'], round(e['rel_change'], 3)) for e in hog['host_events']]}")
        env = [(f["model"], f["metric"], f["reading"], f["cause"], round(f["rel_change"], 3))
               for f in steps["env"]["findings"]]
        print(f"threads 2 -> 1, {steps['env']['rounds']} rounds: findings {env}")
        print(f"median round: {steps['round_seconds']:.1f} s")
        print("\nspread of the unchanged twins over the steps rounds (coefficient of variation, max/min):")
        for model, spread in twin_spread(steps["log"]).items():
            print(f"  {model}: absolute p50 CV {100 * spread['absolute'][0]:.1f} % (x{spread['absolute'][1]:.2f}), "
                  f"model/reference CV {100 * spread['relative'][0]:.1f} % (x{spread['relative'][1]:.2f})")
    quiet = results.get("quiet")
    if quiet:
        false = [(f["model"], f["metric"], f["reading"], round(f["rel_change"], 3)) for f in quiet["false_findings"]]
        print(f"\nno change, {quiet['rounds']} rounds x {len(FAMILIES)} models: relative false latency findings "
              f"{len(false)} {false}; "
              f"absolute (before): {sum(len(v) for v in quiet['absolute_false'].values())} {quiet['absolute_false']}")
    cost = results.get("cost")
    if cost:
        print(f"\ncost, {cost['rounds']} rounds each, medians per series:")
        print("| model | absolute: wall s / timed s / ±CI p50 / at target | relative: wall s / timed s / ±CI p50 / "
              "±CI ratio / at target | wall ratio |")
        print("|---|---|---|---|")
        for family, row in cost["summary"].items():
            a, r = row["absolute"], row["relative"]
            print(f"| {family} | {a['wall_s']:.2f} / {a['timed_s']:.2f} / {100 * a['ci95_rel']:.2f} % / "
                  f"{100 * a['stopped_at_target']:.0f} % | {r['wall_s']:.2f} / {r['timed_s']:.2f} / "
                  f"{100 * r['ci95_rel']:.2f} % / {100 * r['rel_ci95']:.2f} % / {100 * r['stopped_at_target']:.0f} % "
                  f"| {row['wall_ratio']:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["steps", "quiet", "cost", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--hog-rounds", type=int, default=6)
    parser.add_argument("--env-rounds", type=int, default=6)
    parser.add_argument("--quiet-rounds", type=int, default=100)
    parser.add_argument("--cost-rounds", type=int, default=8)
    parser.add_argument("--max-time", type=float, default=2.5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="print the tables of an earlier run's JSON")
    args = parser.parse_args()
    if args.from_json is not None:
        report(json.loads(args.from_json.read_text()))
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="perfguard-relative-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for phase, run in (("steps", phase_steps), ("quiet", phase_quiet), ("cost", phase_cost)):
        if args.phase in (phase, "all"):
            folder = out / phase
            folder.mkdir(exist_ok=True)
            print(f"phase {phase} in {folder}", file=sys.stderr, flush=True)
            results[phase] = run(args, folder)
            (out / "relative.json").write_text(json.dumps(results, default=str, indent=1))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
