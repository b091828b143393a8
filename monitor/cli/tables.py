"""What the commands print as text: aligned tables of runs, findings and candidates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from monitor.core import catalog
from monitor.core.actions import ActionRecord, CandidateNumbers
from monitor.core.runs import RunRecord
from monitor.core.series import FindingRecord, SampleCheck
from monitor.optimize.train_amp import StepVerdict

if TYPE_CHECKING:  # the follow-up's machinery loads with `check`, not with every command
    from monitor.service.followup import FollowUp


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns: numbers right, text left."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(is_number(row[i]) for row in rows if row[i] is not None) and rows for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


RUN_COLUMNS: list[tuple[str, Callable[[RunRecord], Any]]] = [
    ("run", lambda r: r.run_id),
    ("started (UTC)", lambda r: r.started_at.strftime("%Y-%m-%d %H:%M:%S")),
    ("model", lambda r: r.model),
    ("variant", lambda r: r.variant),
    ("batch", lambda r: _batch(r)),
    ("status", lambda r: r.status),
    ("p50 ms", lambda r: r.metrics.latency_ms_p50),
    ("p99 ms", lambda r: r.metrics.latency_ms_p99),
    ("±ci %", lambda r: None if r.metrics.ci95_rel is None else r.metrics.ci95_rel * 100),
    ("vs ref", lambda r: r.metrics.rel_to_reference),
    ("samples", lambda r: r.metrics.samples),
    ("items/s", lambda r: r.metrics.throughput_per_s),
    ("rss MB", lambda r: r.metrics.peak_rss_mb),
    ("acc", lambda r: r.metrics.accuracy),
    ("flags / error", lambda r: _note(r)),
]


def _batch(record: RunRecord) -> int | str:
    """The batch size, and what the run timed when it was not one inference call: "32/train", "32/load×4"."""
    if record.mode == "train":
        return f"{record.batch_size}/train"
    if record.mode == "load":
        return f"{record.batch_size}/load×{record.concurrency}"
    return record.batch_size


def _note(record: RunRecord) -> str:
    return record.error_summary[:80] if record.error else ",".join(record.flags)


def runs_table(records: Sequence[RunRecord]) -> str:
    return format_table([h for h, _ in RUN_COLUMNS], [[f(r) for _, f in RUN_COLUMNS] for r in records])


def findings_table(findings: Sequence[FindingRecord]) -> str:
    """One line per finding: what changed, by how much, since when, and why if known."""
    rows = []
    for f in findings:
        before, after = f.before, f.after
        rows.append(
            [
                f.id,
                f.model,
                f.key.label(),
                f.metric,
                f.verdict if f.drift is None else f"{f.verdict}, drift {100 * f.drift.slope_per_run:+.2f}%/run",
                f"{100 * f.rel_change:+.1f}%",
                f"{cell(before.median)} [{cell(before.low)}-{cell(before.high)}]",
                f"{cell(after.median)} [{cell(after.low)}-{cell(after.high)}]",
                f.change_run_id,
                f.p_value,
                _samples_note(f.samples),
                f.reading,
                f.cause or "-",
                _env_note(f.env_diff),
                f.state,
            ]
        )
    headers = [
        "id",
        "model",
        "series",
        "metric",
        "verdict",
        "change",
        "before [95% CI]",
        "after [95% CI]",
        "since run",
        "p",
        "samples",
        "reading",
        "cause",
        "environment",
        "state",
    ]
    return format_table(headers, rows)


def _samples_note(samples: SampleCheck | None) -> str:
    """Whether the raw samples confirm the change, with their 95 % interval of it."""
    if samples is None:
        return "-"
    low, high = samples.interval
    return f"{'yes' if samples.confirmed else 'no'} [{100 * low:+.0f}%..{100 * high:+.0f}%]"


def _env_note(diff: dict[str, Any] | None) -> str:
    if not diff:
        return "-"
    return ", ".join(f"{name} {old}->{new}" for name, (old, new) in diff.items())[:60]


def candidates_table(action: ActionRecord) -> str:
    """The before/after table of an optimisation: the current variant, then each candidate."""
    first = action.candidates[0].numbers if action.candidates else CandidateNumbers(label="-", recipe="-")
    rows = [[action.from_variant, "(current)", "-", first.current_p50_ms, first.current_p99_ms, 1.0,
             first.current_size_mb, first.current_forward_peak_mb, first.current_accuracy, "-", "current"]]
    for c in action.candidates:
        n, fidelity = c.numbers, c.numbers.fidelity
        quality = "-"
        if fidelity is not None and fidelity.kind == "top1" and fidelity.agreement is not None:
            quality = f"top1 {fidelity.agreement:.4f}"
        elif fidelity is not None and fidelity.value is not None:
            quality = f"rel.err {fidelity.value:.2e}"
        verdict = "accepted" if c.accepted else "rejected: " + "; ".join(c.reasons)
        rows.append([n.label, n.recipe, catalog.runtime_of(n.recipe) or "torch", n.p50_ms, n.p99_ms, n.speedup,
                     n.size_mb, n.forward_peak_mb, n.accuracy, quality, verdict[:110]])
    headers = ["variant", "recipe", "runtime", "p50 ms", "p99 ms", "speed-up", "size MiB", "call MiB", "accuracy",
               "fidelity", "decision"]
    return format_table(headers, rows)


def action_report(record: ActionRecord) -> str:
    """An optimisation as text: where the time went, the candidates against the current variant,
    how the chosen one fared at the other batch sizes, and the decision."""
    lines = []
    if record.diagnosis:
        lines.append(f"diagnosis: {record.diagnosis.summary or '-'}")
    if record.candidates:
        lines.append(candidates_table(record))
    for c in record.candidates:
        for other in c.numbers.details.get("other_batch_sizes", []):
            ratio = other["ratio_p50"]
            lines.append(f"{c.numbers.label} at batch {other['batch_size']}: "
                         + (f"{1 / ratio:.2f}x" if ratio else f"not measured ({other['error']})"))
    lines.append(f"\naction {record.id}: {record.status}: {record.reason}")
    return "\n".join(lines)


def step_verdicts_table(verdicts: Sequence[StepVerdict]) -> str:
    """`optimize --train`: each autocast candidate of the training step against the configured step."""
    rows = []
    for v in verdicts:
        ci = f"{1 / v.ratio_ci95[1]:.2f}-{1 / v.ratio_ci95[0]:.2f}x" if v.ratio_ci95 else None
        speed = None if v.ratio_p50 is None else f"{1 / v.ratio_p50:.2f}x"
        verdict = "worth it: set train.amp = " + repr(v.amp) if v.accepted else "; ".join(v.reasons)
        rows.append([v.label, v.current_step_ms, v.step_ms, speed, ci, v.loss_rel_diff, verdict])
    return format_table(["candidate", "step ms now", "step ms", "speed-up", "95 % CI", "loss diff", "verdict"], rows)


def recipe_rows() -> list[dict[str, Any]]:
    """The recipe catalog as `optimize --list --json` prints it."""
    return [{"name": s.name, "action": s.action, "runtime": s.runtime or "torch", "devices": list(s.devices),
             "suits": list(s.suits) or ["any"], "exact": s.exact, "default": s.by_default,
             "description": s.description} for s in catalog.CATALOG]


def recipes_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["recipe", "action", "runtime", "devices", "suits", "exact", "default", "description"]
    return format_table(headers, [[r["name"], r["action"], r["runtime"], ",".join(r["devices"]), ",".join(r["suits"]),
                                   r["exact"], r["default"], r["description"]] for r in rows])


def follow_up_json(done: FollowUp, shown: Sequence[FindingRecord]) -> dict[str, Any]:
    """`check --json`: the findings shown, the new ones, the host's events, and what the rules did."""
    assert done.check is not None
    return {
        "findings": [f.to_json() for f in shown],
        "new": [f.id for f in done.check.new],
        "host_events": [e.to_json() for e in done.check.host_events],
        "decisions": [d.to_json() for d in done.fired],
        "rule_failures": [x.to_json() for x in done.failures],
        "actions": [a.to_json() for a in done.actions],
    }


def follow_up_text(done: FollowUp, shown: Sequence[FindingRecord]) -> tuple[list[str], list[str]]:
    """`check` as text: the lines for stdout (findings, host events, decisions, actions) and for
    stderr (no findings, rules that failed)."""
    assert done.check is not None
    out: list[str] = []
    err: list[str] = []
    if shown:
        out.append(findings_table(shown))
        out += [f"finding {f.id} ({f.model} {f.metric}): where the time went: {f.diagnosis.summary or '-'}"
                for f in shown if f.diagnosis]
    else:
        err.append("no open findings")
    out += [f"host event on {e.host}: {e.signal} {100 * e.rel_change:+.1f}% since run {e.change_run_id} "
            f"(the host, not a model: no finding)" for e in done.check.host_events]
    out += [f"rule {d.rule}: {d.decision.action} {d.model}: {d.decision.reason}" for d in done.fired]
    err += [f"rule {x.rule} on {x.model}: {x.outcome}: {x.reason}" for x in done.failures]
    out += [f"action {a.id} ({a.kind} {a.model}): {a.status}: {a.reason}" for a in done.actions]
    return out, err
