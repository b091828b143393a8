"""Sampling rules on plain Python callables: warm-up, stopping, contention, A/B interleaving."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time

import pytest

from monitor.core.runs import FLAG_CONTENDED, FLAG_UNSTABLE
from monitor.harness.collectors import CpuContentionProbe
from monitor.harness.protocol import SamplingSettings
from monitor.harness.sampling import (
    MIN_SAMPLES_FLOOR,
    NoProbe,
    StopRule,
    adaptive_sample,
    block_runner,
    ci_rel,
    interleaved_sample,
    latency_metrics,
    median_ci,
    warm_up,
)
from tests.window_helpers import RecordingWindow

# Real spins against the wall clock, and CPU hogs that would slow a parallel test process's benchmarks.
pytestmark = pytest.mark.timing


def spin(seconds: float):
    def fn() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return fn


def test_median_ci_brackets_the_median_with_order_statistics():
    values = list(range(1, 101))  # median 50.5
    lo, hi = median_ci(values)
    # Exact binomial 95 % interval for n=100 is the 40th..61st order statistics.
    assert 38 <= lo <= 41 and 60 <= hi <= 63
    assert lo < statistics.median(values) < hi


def test_ci_rel_shrinks_as_samples_grow():
    import random

    rng = random.Random(0)
    small = [1 + rng.gauss(0, 0.05) for _ in range(50)]
    large = [1 + rng.gauss(0, 0.05) for _ in range(5000)]
    assert ci_rel(large) < ci_rel(small) / 5


def test_latency_metrics_percentiles_and_throughput():
    samples_ns = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    m = latency_metrics(samples_ns, batch_size=10)
    assert m.latency_ms_p50 == pytest.approx(50.5)
    assert m.latency_ms_p90 == pytest.approx(90.1)
    assert m.latency_ms_p99 == pytest.approx(99.01)
    assert m.latency_ms_min == 1 and m.latency_ms_max == 100
    assert m.samples == 100
    assert m.throughput_per_s == pytest.approx(10 / 0.0505)


def test_warm_up_runs_until_a_slow_start_has_settled():
    import math

    calls = {"n": 0}

    def warming() -> None:  # 11x slower at first, within 2 % of steady after ~190 calls
        calls["n"] += 1
        spin(0.0002 * (1 + 10 * math.exp(-calls["n"] / 30)))()

    warm = warm_up(block_runner(warming), max_s=5)
    assert warm.settled
    assert warm.iterations > 150
    assert warm.estimate_ns == pytest.approx(200_000, rel=0.05)


def test_a_first_call_longer_than_the_cap_is_not_the_warm_up():
    """Like a TorchScript copy, which compiles in its first call: 150 ms, then 100 us a call."""
    calls = {"n": 0}

    def compiling() -> None:
        calls["n"] += 1
        spin(0.15 if calls["n"] == 1 else 0.0001)()

    warm = warm_up(block_runner(compiling), max_s=0.05)
    assert warm.iterations > 100  # warmed for its cap after the first call, not stopped by it
    assert warm.estimate_ns == pytest.approx(100_000, rel=0.3)  # blocks are sized from warm calls


def test_warm_up_gives_up_at_its_cap_and_says_so():
    began = time.perf_counter()

    def ever_slower() -> None:
        # Slower with time: e-fold every 100 ms from 30 us, so calls stay under a millisecond and the
        # windows long (200 calls, 6 ms, at first; 40 calls, 25 ms, at the cap): each window's median
        # 6-25 % above the one before, three times the 2 % tolerance and five to ten times the noise
        # its median allows, whatever a busy host adds. (With calls of many milliseconds the windows
        # shrink to 5, whose spread lets any trend pass for noise.)
        # Capped at 2 ms (reached 0.42 s in, past the cap), so a process starved for seconds does
        # not plan a call of hours.
        spin(min(0.002, 0.00003 * math.exp((time.perf_counter() - began) / 0.1)))()

    warm = warm_up(block_runner(ever_slower), max_s=0.3)
    assert not warm.settled
    assert warm.seconds < 2.0  # stopped near its cap, not run on (wide: a starved process runs late)


def test_adaptive_sampling_stops_once_the_median_is_known_to_one_percent():
    settings = SamplingSettings(max_time_s=10, target_ci_rel=0.01, min_samples=50)
    start = time.perf_counter()
    result = adaptive_sample(block_runner(spin(0.0002)), settings, NoProbe())
    assert result.stop_reason == "ci"
    assert result.ci_rel <= 0.01
    assert len(result.samples_ns) >= 50
    assert time.perf_counter() - start < 5
    assert statistics.median(result.samples_ns) == pytest.approx(200_000, rel=0.1)
    assert result.flags == []


def test_adaptive_sampling_respects_the_budget_and_flags_an_unreached_target():
    import random

    rng = random.Random(1)

    def noisy() -> None:
        spin(rng.choice([0.0001, 0.001]))()

    settings = SamplingSettings(max_time_s=0.5, target_ci_rel=0.0001, min_samples=10)
    start = time.perf_counter()
    result = adaptive_sample(block_runner(noisy), settings, NoProbe())
    assert time.perf_counter() - start < 1.0
    assert result.stop_reason == "budget"
    assert FLAG_UNSTABLE in result.flags


def test_progress_reports_phases_and_growing_sample_counts():
    seen: list[tuple[str, int]] = []
    settings = SamplingSettings(max_time_s=1, min_samples=20)
    adaptive_sample(block_runner(spin(0.0001)), settings, NoProbe(), lambda p, n: seen.append((p, n)))
    assert seen[0] == ("warmup", 0)
    counts = [n for p, n in seen if p == "sampling"]
    assert counts and counts == sorted(counts) and counts[-1] >= 20


@pytest.fixture
def cpu_hogs():
    """More busy processes than cores: every window of the sampler is contended."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    time.sleep(0.3)
    yield
    for p in procs:
        p.kill()
        p.wait()


def test_contended_blocks_are_discarded_and_the_run_flagged(cpu_hogs):
    probe = CpuContentionProbe()
    settings = SamplingSettings(max_time_s=1.0, min_samples=100000, contention_cpu_pct=15)
    result = adaptive_sample(block_runner(spin(0.0002)), settings, probe)
    assert result.contended_blocks > 0
    assert result.contended_blocks >= result.blocks // 2
    assert FLAG_CONTENDED in result.flags
    assert result.samples_ns  # what ran is still reported


def test_probe_reads_little_contention_on_a_quiet_window():
    probe = CpuContentionProbe()
    token = probe.begin()
    time.sleep(0.2)
    quiet = probe.end(token)
    assert 0.0 <= quiet < 15.0  # below the default threshold: a quiet window is never called contended


def test_probe_sees_busy_neighbours(cpu_hogs):
    probe = CpuContentionProbe()
    token = probe.begin()
    spin(0.3)()
    assert probe.end(token) > 15


def test_interleaved_sampling_measures_the_ratio_of_two_known_costs():
    calls: list[str] = []

    def recorded(label: str, fn):
        run = block_runner(fn)

        def wrapped(n: int) -> list[int]:
            calls.append(label)
            return run(n)

        return wrapped

    settings = SamplingSettings(max_time_s=3, target_ci_rel=0.01, min_samples=50)
    result = interleaved_sample(
        [("a", recorded("a", spin(0.0001))), ("b", recorded("b", spin(0.0003)))], settings, NoProbe()
    )
    a, b = result.subjects
    assert statistics.median(a.samples_ns) == pytest.approx(100_000, rel=0.15)
    assert statistics.median(b.samples_ns) == pytest.approx(300_000, rel=0.15)
    ratio = result.comparison["b"]
    assert ratio["ratio_p50"] == pytest.approx(3.0, rel=0.1)
    lo, hi = ratio["ratio_ci95"]
    assert lo <= ratio["ratio_p50"] <= hi
    assert ratio["ratio_pooled"] == pytest.approx(3.0, rel=0.1)
    assert ratio["rounds"] >= 10
    # The last calls are the rounds, after each subject's warm-up: in ABBA order, a b | b a | a b | ...
    sampling_calls = calls[-2 * result.rounds :]
    rounds = [sampling_calls[i : i + 2] for i in range(0, len(sampling_calls), 2)]
    assert calls[: -2 * result.rounds] == sorted(calls[: -2 * result.rounds])  # all of a's, then b's
    assert all(r == (["a", "b"] if i % 2 == 0 else ["b", "a"]) for i, r in enumerate(rounds))


def test_the_measured_window_brackets_sampling_only():
    window = RecordingWindow()
    begun = time.perf_counter()
    result = adaptive_sample(block_runner(spin(0.0002)), SamplingSettings(max_time_s=1, min_samples=20),
                             NoProbe(), window=window)
    assert window.started - begun >= result.warmup.seconds * 0.9
    assert result.window["window_s"] == pytest.approx(result.sampling_s, rel=0.05, abs=0.005)


def test_interleaved_subjects_share_the_window_by_time_spent():
    window = RecordingWindow()
    result = interleaved_sample(
        [("a", block_runner(spin(0.0001))), ("b", block_runner(spin(0.0003)))],
        SamplingSettings(max_time_s=1, min_samples=20), NoProbe(), window=window,
    )
    a, b = result.subjects
    assert a.window["energy_j"] + b.window["energy_j"] == pytest.approx(10.0)
    # Blocks are sized to equal time, so each subject spent about half of it.
    assert a.window["energy_j"] == pytest.approx(5.0, rel=0.2)


def test_sampling_never_stops_before_min_samples_while_the_budget_allows():
    settings = SamplingSettings(max_time_s=5, target_ci_rel=0.5, min_samples=300)
    result = adaptive_sample(block_runner(spin(0.004)), settings, NoProbe())  # ~12 per 50 ms block
    assert len(result.samples_ns) >= 300  # 10 blocks alone would give ~120
    assert result.stop_reason == "ci"
    assert result.blocks >= 4


def test_a_lone_stretch_of_blocks_is_not_enough_to_stop():
    settings = SamplingSettings(max_time_s=5, target_ci_rel=0.5, min_samples=5)
    result = adaptive_sample(block_runner(spin(0.0001)), settings, NoProbe())
    assert result.blocks >= 10  # MIN_BLOCKS: drift cannot be judged from fewer


def test_a_model_slower_than_its_budget_stays_in_budget_with_json_safe_details():
    import json

    settings = SamplingSettings(max_time_s=0.3, min_samples=100)
    start = time.perf_counter()
    result = adaptive_sample(block_runner(spin(0.03)), settings, NoProbe())
    took = time.perf_counter() - start
    assert took < 0.3 + 2 * 0.03 + 0.05  # at most one call past the budget in each phase
    assert result.warmup.seconds < settings.max_time_s * settings.warmup_fraction + 0.03 + 0.02
    assert FLAG_UNSTABLE in result.flags  # far fewer than 10 blocks: precision unknown
    assert result.details()["ci95_rel"] is None
    json.dumps(result.details(), allow_nan=False)  # PostgreSQL's JSON type rejects NaN/Infinity


def test_shares_size_each_subjects_block_and_the_stop_rule_steers_by_the_ratio():
    """A relative run: the model and its reference split the round, a probe rides along in a small
    share, and sampling stops once the model/reference ratio is known, whatever the probe does."""
    import random

    rng = random.Random(3)

    def erratic() -> None:  # a rider far too noisy to ever reach the target itself
        spin(rng.choice([0.00005, 0.0005]))()

    settings = SamplingSettings(max_time_s=5, target_ci_rel=0.02, min_samples=30)
    result = interleaved_sample(
        [("model", block_runner(spin(0.0002))), ("reference", block_runner(spin(0.0001))),
         ("probe", block_runner(erratic))],
        settings, NoProbe(), shares=[0.45, 0.45, 0.1], stop=StopRule(absolute=(), ratios=(1,)),
    )
    model, reference, probe = result.subjects
    assert model.stop_reason == "ci" and FLAG_UNSTABLE not in model.flags
    assert result.rounds >= 10
    # Equal time for the two: the cheaper reference gets about twice the calls.
    assert len(reference.samples_ns) / len(model.samples_ns) == pytest.approx(2.0, rel=0.25)
    ratio = result.ratio(0, 1)
    assert ratio["ratio_p50"] == pytest.approx(2.0, rel=0.1)
    lo, hi = ratio["ratio_ci95"]
    assert (hi - lo) / 2 / ratio["ratio_p50"] <= 0.02 * 1.5  # the stopping target (order statistics)
    assert list(result.comparison) == ["reference"]  # the rider is not compared


def test_shares_must_be_one_positive_share_per_subject():
    runs = [("a", block_runner(spin(0.0001))), ("b", block_runner(spin(0.0001)))]
    with pytest.raises(ValueError, match="one positive share per subject"):
        interleaved_sample(runs, SamplingSettings(max_time_s=0.2), NoProbe(), shares=[1.0])
    with pytest.raises(ValueError, match="one positive share per subject"):
        interleaved_sample(runs, SamplingSettings(max_time_s=0.2), NoProbe(), shares=[1.0, 0.0])


class AlwaysBusy:
    """A host reading where every block is contended (others used 130 % of a core throughout)."""

    def begin(self) -> None:
        return None

    def end(self, token: None) -> float:
        return 130.0


def test_a_run_with_every_block_contended_reports_the_contention_it_saw():
    settings = SamplingSettings(max_time_s=0.3, min_samples=100000, contention_cpu_pct=15)
    result = adaptive_sample(block_runner(spin(0.0002)), settings, AlwaysBusy())
    assert result.contended_blocks == result.blocks > 0
    assert result.contention_pct == pytest.approx(130.0)  # not 0.0: no clean block to average over
    assert FLAG_CONTENDED in result.flags


def test_a_comparison_with_no_clean_round_reads_every_round_and_says_so():
    """A neighbour busy throughout slows both subjects of a round: their ratio still holds, flagged,
    where their absolute times do not; with clean rounds, only those count."""
    runs = [("a", block_runner(spin(0.0001))), ("b", block_runner(spin(0.0003)))]
    busy = interleaved_sample(runs, SamplingSettings(max_time_s=0.6, min_samples=100000, contention_cpu_pct=15),
                              AlwaysBusy())
    assert busy.contended_rounds == busy.rounds >= MIN_SAMPLES_FLOOR
    ratio = busy.comparison["b"]
    assert ratio["contended"] and ratio["rounds"] == busy.rounds
    assert ratio["ratio_p50"] == pytest.approx(3.0, rel=0.2) and ratio["ratio_ci95"] is not None
    assert all(FLAG_CONTENDED in s.flags for s in busy.subjects)
    quiet = interleaved_sample(runs, SamplingSettings(max_time_s=0.6, min_samples=100000), NoProbe())
    assert not quiet.comparison["b"]["contended"] and quiet.comparison["b"]["rounds"] == quiet.rounds
