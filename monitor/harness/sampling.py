"""Warm-up, adaptive sampling and A/B interleaving: how many timings to take, and which to keep.

Torch-free on purpose: it times any zero-argument callable, so its rules can be tested on plain
Python functions. The rules follow pyperf and torch.utils.benchmark, tightened for a monitor:
- warm-up is calibrated: it runs until the medians of the last two windows agree (pyperf compares
  halves of a sample), capped at a fraction of the budget, not a fixed count;
- sampling goes in blocks of ~50 ms and stops once the 95 % confidence interval of the median is
  within `target_ci_rel` of it, with a minimum count and at least 10 blocks, or the budget is spent;
  the interval is drift-aware (see `block_ci_rel`): timings on a shared host are not independent;
- a block during which other processes used the CPU is discarded and re-sampled: on a 2-core host
  one busy neighbour inflates a 50 us model hundreds of times;
- A/B mode runs the subjects in alternating blocks (ABBA order) so slow host drift hits each alike.
  A comparison reads the clean rounds; when fewer than MIN_SAMPLES_FLOOR are clean (a neighbour busy
  throughout) it reads every round, flagged: a busy neighbour slows both subjects of a round, so
  their ratio still holds where their absolute times do not.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitor.core.runs import (
    FLAG_CONTENDED,
    FLAG_UNSTABLE,
    FLAG_WARMUP_UNSETTLED,
    RunMetrics,
)
from monitor.harness.protocol import SamplingSettings

Z95 = 1.959963984540054
BLOCK_TARGET_NS = 50_000_000  # one sampling block: long enough to amortise checks, short to re-take
MIN_BLOCKS = 10  # the median's CI counts blocks too: never stop on one lucky stretch of the host
MIN_SAMPLES_FLOOR = 3


class ContentionProbe(Protocol):
    """Measures other processes' CPU use over a window (see collectors.CpuContentionProbe)."""

    def begin(self) -> Any: ...

    def end(self, token: Any) -> float:
        """Other processes' CPU use since `begin`, in % of one core."""
        ...


class MeasuredWindow(Protocol):
    """Something to run around the sampling phase only (after warm-up), e.g. the NVML energy meter."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, Any]: ...


class NoProbe:
    """For callers that accept every block (tests of the stopping rule, the bare bench loop)."""

    def begin(self) -> None:
        return None

    def end(self, token: None) -> float:
        return 0.0


def block_runner(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> Callable[[int], list[int]]:
    """A function timing `n` consecutive calls of `fn`, one perf_counter_ns reading pair each.

    With `sync` (e.g. torch.cuda.synchronize) each call is bracketed by it, so the time is the
    call's full latency rather than its asynchronous launch.
    """
    clock = time.perf_counter_ns

    if sync is None:

        def run(n: int) -> list[int]:
            out = [0] * n
            for i in range(n):
                t0 = clock()
                fn()
                out[i] = clock() - t0
            return out

    else:

        def run(n: int) -> list[int]:
            out = [0] * n
            for i in range(n):
                sync()
                t0 = clock()
                fn()
                sync()
                out[i] = clock() - t0
            return out

    return run


def median_ci(sorted_values: Sequence[float]) -> tuple[float, float]:
    """Distribution-free 95 % confidence interval of the median (order statistics, normal approx.)."""
    n = len(sorted_values)
    if n < 3:
        return sorted_values[0], sorted_values[-1]
    half = Z95 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half) - 1)
    hi = min(n - 1, math.ceil(n / 2 + half))
    return sorted_values[lo], sorted_values[hi]


def ci_rel(values: Sequence[float]) -> float:
    """Half-width of the median's 95 % CI relative to the median."""
    ordered = sorted(values)
    lo, hi = median_ci(ordered)
    med = statistics.median(ordered)
    return (hi - lo) / 2 / med if med > 0 else math.inf


def block_ci_rel(samples: Sequence[float], block_medians: Sequence[float]) -> float:
    """CI of the median that holds when the host drifts: the wider of two intervals.

    Timings on a shared or virtualised host are autocorrelated: the same model runs 30 % slower for a
    second, then fast again. The order-statistic CI of all samples assumes independence and is far
    too narrow then; the CI of the median of per-block medians (the batch-means idea) sees the drift.
    Before MIN_BLOCKS blocks the drift cannot be judged, so the interval is unbounded.
    """
    if len(block_medians) < MIN_BLOCKS or len(samples) < MIN_SAMPLES_FLOOR:
        return math.inf
    return max(ci_rel(samples), ci_rel(block_medians))


def _median_se(values: Sequence[float]) -> float:
    """Standard error of the median from the MAD (robust to the outliers warm-up produces)."""
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    return 1.2533 * 1.4826 * mad / math.sqrt(len(values))


@dataclass(slots=True)
class Warmup:
    iterations: int
    seconds: float
    settled: bool
    estimate_ns: float  # median of the last window: sizes the sampling blocks


def warm_up(run: Callable[[int], list[int]], max_s: float, settle_rel: float = 0.02) -> Warmup:
    """Run until the medians of the last two windows agree (within `settle_rel` or their noise).

    The first call (lazy initialisation, often 10-1000x slower: a TorchScript copy compiles in it)
    is not warm-up: the cap `max_s` counts from its end, and it never sizes the estimate once another
    call ran. Otherwise a copy whose first call outlasts the cap would be sampled one call per block,
    never warm, and read many times slower than it is. Never plans past the cap: each window is cut
    to the calls that fit in the time left, so a model slower than its cap costs one call after the
    first, not a window of them.
    """
    start = time.perf_counter()
    timings = run(1)
    warm_start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - warm_start
        estimate = statistics.median((timings[1:] or timings)[-5:])
        if elapsed >= max_s and len(timings) > 1:
            return Warmup(len(timings), time.perf_counter() - start, False, estimate)
        fits = max(1, int((max_s - elapsed) * 1e9 / max(estimate, 1)))
        k = min(200, fits, max(5, math.ceil(25_000_000 / max(estimate, 1))))
        timings += run(k)
        if len(timings) > 2 * k and k >= 5:
            before, last = timings[-2 * k : -k], timings[-k:]
            m0, m1 = statistics.median(before), statistics.median(last)
            noise = 2 * math.hypot(_median_se(before), _median_se(last))
            if abs(m0 - m1) <= max(settle_rel * m1, noise):
                return Warmup(len(timings), time.perf_counter() - start, True, m1)


@dataclass(slots=True)
class Sampled:
    """Kept per-iteration timings of one subject and how the sampling went."""

    samples_ns: list[int]
    warmup: Warmup
    stop_reason: str  # "ci" | "budget"
    ci_rel: float
    blocks: int = 0
    contended_blocks: int = 0
    executed: int = 0  # calls made while sampling, kept or not (energy per inference divides by it)
    sampling_s: float = 0.0  # wall time after warm-up
    window: dict[str, Any] | None = None  # what the MeasuredWindow reported over the sampling phase
    # Mean probe reading (PSI stall % or others' CPU %) over the kept blocks; all of them when none was kept.
    contention_pct: float = 0.0
    flags: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        return {
            "warmup_iterations": self.warmup.iterations,
            "warmup_s": round(self.warmup.seconds, 4),
            "warmup_settled": self.warmup.settled,
            "sampling_s": round(self.sampling_s, 4),
            "stop_reason": self.stop_reason,
            "ci95_rel": _finite(self.ci_rel),
            "blocks": self.blocks,
            "contended_blocks": self.contended_blocks,
            "executed": self.executed,
        }


def _flags(warmup: Warmup, reason: str, ci: float, target: float, contended: bool) -> list[str]:
    flags = []
    if not warmup.settled:
        flags.append(FLAG_WARMUP_UNSETTLED)
    if contended:
        flags.append(FLAG_CONTENDED)
    if reason == "budget" and not ci <= target:
        flags.append(FLAG_UNSTABLE)
    return flags


def adaptive_sample(
    run: Callable[[int], list[int]],
    settings: SamplingSettings,
    probe: ContentionProbe,
    progress: Callable[[str, int], None] = lambda phase, n: None,
    window: MeasuredWindow | None = None,
) -> Sampled:
    """Warm up, then sample in blocks until the median is known to ±target or the budget is spent."""
    return interleaved_sample([("only", run)], settings, probe, progress, window).subjects[0]


@dataclass(frozen=True, slots=True)
class StopRule:
    """What must be known to ±target before interleaved sampling may stop.

    `absolute`: subjects whose own median must be that precise (default: all of them). `ratios`:
    subjects whose per-round ratio to the first must be that precise too (a relative reading, where
    the ratio is what detection reads). Subjects in neither (a frozen reference whose ratio steers, a
    host-speed probe) ride along; their medians get the interval they reached.
    """

    absolute: tuple[int, ...] | None = None
    ratios: tuple[int, ...] = ()

    def watched(self, count: int) -> tuple[int, ...]:
        """The subjects compared or required precise: all but the riders."""
        absolute = tuple(range(count)) if self.absolute is None else self.absolute
        return tuple(sorted({*absolute, *self.ratios, 0}))

    def counted(self, count: int) -> tuple[int, ...]:
        """The subjects that must keep `min_samples` timings: those whose own median is stored as
        precise, and the first (its timings make the run's percentiles); a reference whose ratio
        steers needs rounds, not a count of its own."""
        absolute = tuple(range(count)) if self.absolute is None else self.absolute
        return tuple(sorted({*absolute, 0}))


@dataclass(slots=True)
class Interleaved:
    """A/B result: each subject's samples and the comparison of each with the first.

    `round_medians` holds each subject's block median of every kept round (aligned across subjects),
    `every_round_medians` those of every round, contended or not; from them `ratio` estimates any
    pair's ratio with drift cancelled.
    """

    subjects: list[Sampled]
    rounds: int
    contended_rounds: int
    comparison: dict[str, Any]
    round_medians: list[list[float]] = field(default_factory=list)
    every_round_medians: list[list[float]] = field(default_factory=list)

    def ratio(self, numerator: int, denominator: int) -> dict[str, Any]:
        """Subject `numerator`'s median over `denominator`'s, per round, with its 95 % CI."""
        return _paired_ratio(
            (self.round_medians[numerator], self.round_medians[denominator]),
            (self.every_round_medians[numerator], self.every_round_medians[denominator]),
        )


def interleaved_sample(
    runs: Sequence[tuple[str, Callable[[int], list[int]]]],
    settings: SamplingSettings,
    probe: ContentionProbe,
    progress: Callable[[str, int], None] = lambda phase, n: None,
    window: MeasuredWindow | None = None,
    *,
    shares: Sequence[float] | None = None,
    stop: StopRule = StopRule(),
) -> Interleaved:
    """Time one or more subjects in alternating blocks (ABBA...) within one budget.

    Each round runs one block of every subject (~50 ms in all, split by `shares`, equal by default),
    in reversed order every other round, so a linear drift of the host costs each subject the same.
    A round during which other processes used the CPU is discarded whole, keeping the pairing fair.
    Sampling stops once what `stop` names is known to ±target (drift-aware, see `block_ci_rel`) with
    `min_samples` kept, or at the budget. The comparison gives, for each subject after the first, the
    ratio of its median to the first's and a 95 % CI from the per-round ratios.
    """
    watched = stop.watched(len(runs))
    counted = stop.counted(len(runs))
    absolute = watched if stop.absolute is None else stop.absolute
    deadline = time.perf_counter() + settings.max_time_s
    progress("warmup", 0)
    warmups, sizes = _warm_up_all(runs, settings, shares)
    if window is not None:
        window.start()
    sampling_start = time.perf_counter()
    state = _Rounds.of(len(runs))
    reason = "budget"
    next_check = settings.min_samples
    while True:
        order = list(range(len(runs)))
        if state.rounds % 2:
            order.reverse()
        token = probe.begin()
        t0 = time.perf_counter()
        timings = {i: runs[i][1](sizes[i]) for i in order}
        wall = time.perf_counter() - t0
        state.add(timings, probe.end(token), wall, settings.contention_cpu_pct)
        least = min(len(state.kept[i]) for i in counted)
        progress("sampling", least)
        if least >= next_check:
            next_check = max(least + 1, int(least * 1.1))
            if state.precise(settings.target_ci_rel, absolute, stop.ratios):
                reason = "ci"
                break
        if time.perf_counter() >= deadline:
            break
    sampling_s = time.perf_counter() - sampling_start
    measured = window.stop() if window is not None else None
    executed = state.executed()
    subjects = [state.sampled(i, warmups[i], reason, settings, stop, absolute, sampling_s, measured, executed)
                for i in range(len(runs))]
    result = Interleaved(subjects, state.rounds, state.contended, {}, state.medians, state.every)
    result.comparison = {runs[i][0]: result.ratio(i, 0) for i in range(1, len(runs)) if i in watched}
    return result


def _warm_up_all(
    runs: Sequence[tuple[str, Callable[[int], list[int]]]], settings: SamplingSettings, shares: Sequence[float] | None
) -> tuple[list[Warmup], list[int]]:
    """Each subject warmed up within its share of the warm-up budget, and its block size: the calls
    that fill its share of a round."""
    weights = [1.0] * len(runs) if shares is None else [float(s) for s in shares]
    if len(weights) != len(runs) or min(weights) <= 0:
        raise ValueError("one positive share per subject")
    weights = [w / sum(weights) for w in weights]
    warm_total = settings.max_time_s * settings.warmup_fraction
    warmups = [warm_up(run, warm_total * w) for (_, run), w in zip(runs, weights, strict=True)]
    sizes = [min(100_000, max(1, round(BLOCK_TARGET_NS * w / max(warm.estimate_ns, 1))))
             for warm, w in zip(warmups, weights, strict=True)]
    return warmups, sizes


@dataclass(slots=True)
class _Rounds:
    """What the rounds of an interleaved sample gave so far: each subject's kept and discarded timings
    and block medians, and how busy the rest of the host was while they ran."""

    kept: list[list[int]]
    discarded: list[list[int]]
    medians: list[list[float]]  # the kept rounds' block medians
    every: list[list[float]]  # every round's block medians, contended or not
    rounds: int = 0
    contended: int = 0
    others_weighted: float = 0.0  # others' CPU % x wall time, over the kept rounds
    kept_wall: float = 0.0
    all_weighted: float = 0.0  # ...and over every round: what a run with no clean block reports
    all_wall: float = 0.0

    @classmethod
    def of(cls, count: int) -> _Rounds:
        return cls([[] for _ in range(count)], [[] for _ in range(count)], [[] for _ in range(count)],
                   [[] for _ in range(count)])

    def add(self, timings: dict[int, list[int]], others: float, wall: float, contention_cpu_pct: float) -> None:
        """One round: kept, or discarded whole when others used more CPU than allowed meanwhile."""
        self.rounds += 1
        self.all_weighted += others * wall
        self.all_wall += wall
        for i, block in timings.items():
            self.every[i].append(statistics.median(block))
        if others > contention_cpu_pct:
            self.contended += 1
            for i, block in timings.items():
                self.discarded[i] += block
            return
        self.others_weighted += others * wall
        self.kept_wall += wall
        for i, block in timings.items():
            self.kept[i] += block
            self.medians[i].append(statistics.median(block))

    def precise(self, target: float, absolute: Sequence[int], ratios: Sequence[int]) -> bool:
        """Whether what steers the stop is known to ±target: the `absolute` subjects' medians and the
        `ratios` subjects' ratios to the first."""
        return all(block_ci_rel(self.kept[i], self.medians[i]) <= target for i in absolute) and all(
            _ratio_ci_rel(self.medians[i], self.medians[0]) <= target for i in ratios
        )

    def contention_pct(self) -> float:
        if self.kept_wall:
            return self.others_weighted / self.kept_wall
        return self.all_weighted / self.all_wall if self.all_wall else 0.0

    def executed(self) -> list[int]:
        """Each subject's calls while sampling, kept or not."""
        return [len(k) + len(d) for k, d in zip(self.kept, self.discarded, strict=True)]

    def sampled(
        self, i: int, warmup: Warmup, reason: str, settings: SamplingSettings, stop: StopRule,
        absolute: Sequence[int], sampling_s: float, measured: dict[str, Any] | None, executed: list[int],
    ) -> Sampled:
        """Subject `i`'s samples and their precision, flagged as the rounds went; `executed`: every
        subject's calls (`executed()`), which the measured window is shared by."""
        samples = self.kept[i]
        short_of_clean = self.contended > 0 and len(samples) < settings.min_samples
        if len(samples) < MIN_SAMPLES_FLOOR:
            samples = samples + self.discarded[i]  # nothing clean enough to keep: report what ran, flagged
            ci = ci_rel(samples) if len(samples) >= MIN_SAMPLES_FLOOR else math.inf
        else:
            # Fewer than MIN_BLOCKS blocks: the drift is unknown, so is the precision (inf: unstable).
            ci = block_ci_rel(samples, self.medians[i])
        ci_for_flag = ci
        if i == 0 and stop.ratios:  # a relative reading is as precise as its ratios (and median, if asked)
            steering = [ci] if 0 in absolute else []
            ci_for_flag = max(steering + [_ratio_ci_rel(self.medians[j], self.medians[0]) for j in stop.ratios])
        return Sampled(
            samples_ns=samples,
            warmup=warmup,
            stop_reason=reason,
            ci_rel=ci,
            blocks=self.rounds,
            contended_blocks=self.contended,
            executed=executed[i],
            sampling_s=sampling_s,
            window=_share(measured, executed, self.kept, i),
            contention_pct=self.contention_pct(),
            flags=_flags(warmup, reason, ci_for_flag, settings.target_ci_rel, short_of_clean),
        )


def _ratio_ci_rel(medians: list[float], ref_medians: list[float]) -> float:
    """Half-width of the 95 % CI of the median per-round ratio, relative to it (inf before MIN_BLOCKS)."""
    per_round = [m / r for m, r in zip(medians, ref_medians, strict=True) if r > 0]
    return ci_rel(per_round) if len(per_round) >= MIN_BLOCKS else math.inf


def _share(
    measured: dict[str, Any] | None, executed: list[int], kept: list[list[int]], i: int
) -> dict[str, Any] | None:
    """A subject's part of a window shared by all subjects: energy split by time spent running."""
    if measured is None or measured.get("energy_j") is None:
        return measured
    spent = [n * statistics.fmean(k) if k else 0.0 for n, k in zip(executed, kept, strict=True)]
    total = sum(spent)
    share = spent[i] / total if total else 1 / len(spent)
    return {**measured, "energy_j": measured["energy_j"] * share}


RoundPair = tuple[list[float], list[float]]  # a subject's and its reference's block medians, round by round


def _paired_ratio(clean: RoundPair, every: RoundPair) -> dict[str, Any]:
    """The subject's median over the reference's, estimated per round so that drift cancels.

    From the clean rounds; from every round (`contended: true`) when fewer than MIN_SAMPLES_FLOOR
    are clean and more ran. `ratio_pooled` is the ratio of the two medians of round medians, which
    drift does not cancel in.
    """
    busy = len(clean[0]) < MIN_SAMPLES_FLOOR and len(every[0]) > len(clean[0])
    subject, reference = every if busy else clean
    pairs = [(m, r) for m, r in zip(subject, reference, strict=True) if r > 0]
    if not pairs:
        return {"ratio_p50": None, "ratio_ci95": None, "ratio_pooled": None, "rounds": 0, "contended": busy}
    per_round = sorted(m / r for m, r in pairs)
    return {
        "ratio_p50": statistics.median(per_round),
        "ratio_ci95": list(median_ci(per_round)) if len(per_round) >= MIN_SAMPLES_FLOOR else None,
        "ratio_pooled": statistics.median(m for m, _ in pairs) / statistics.median(r for _, r in pairs),
        "rounds": len(per_round),
        "contended": busy,
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON (and PostgreSQL's json type) has no inf


def latency_metrics(samples_ns: Sequence[int], batch_size: int) -> RunMetrics:
    """Percentiles, spread and throughput of kept timings (percentiles interpolate like numpy)."""
    ms = [s / 1e6 for s in samples_ns]
    if not ms:
        return RunMetrics(samples=0)
    p50 = statistics.median(ms)
    if len(ms) >= 2:
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        p90, p99, std = cuts[89], cuts[98], statistics.stdev(ms)
    else:
        p90 = p99 = ms[0]
        std = 0.0
    return RunMetrics(
        latency_ms_p50=p50,
        latency_ms_p90=p90,
        latency_ms_p99=p99,
        latency_ms_mean=statistics.fmean(ms),
        latency_ms_std=std,
        latency_ms_min=min(ms),
        latency_ms_max=max(ms),
        ci95_rel=_finite(ci_rel(ms)) if len(ms) >= MIN_SAMPLES_FLOOR else None,
        samples=len(ms),
        throughput_per_s=batch_size / (p50 / 1e3) if p50 > 0 else None,
    )
