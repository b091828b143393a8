"""Accept or reject a candidate: faster for real, as accurate, no bigger.

Pure functions over the numbers a candidates job measured, so the rule is easy to read and test:
- latency: the median of the per-round ratios (candidate / current, timed interleaved) must show at
  least `min_speedup`, and the upper end of its 95 % interval must be below 1 (noise cannot pass);
- accuracy: with eval data, the drop must stay within `accuracy_tolerance` (absolute, like Intel
  Neural Compressor's tolerable loss); without, the output must follow the current variant's:
  top-1 agreement within `top1_tolerance`, or relative error within `relative_error_tolerance`;
- memory: the saved model may not be bigger than the current one (1 % slack for container overhead),
  nor may one call take more memory beyond it (10 % + 1 MiB slack: page-granular measurement).
The best accepted candidate is the one with the lowest latency ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

from monitor.config import OptimizeConfig
from monitor.core.actions import CandidateNumbers, Verdict

SIZE_SLACK = 1.01
FORWARD_SLACK, FORWARD_SLACK_MB = 1.10, 1.0


def judge(numbers: CandidateNumbers, settings: OptimizeConfig) -> Verdict:
    """Whether one candidate is really better than the current variant, and why not if it is not."""
    if numbers.error is not None:
        return Verdict(numbers, False, [f"could not be built or measured: {numbers.error.splitlines()[-1]}"])
    reasons = [why for why in (_speed(numbers, settings), _quality(numbers, settings)) if why]
    reasons += _footprint(numbers)
    return Verdict(numbers, not reasons, reasons)


def _speed(numbers: CandidateNumbers, settings: OptimizeConfig) -> str | None:
    """Why the candidate is not measurably faster by `min_speedup`, or None if it is."""
    return speed_shortfall(numbers.ratio_p50, numbers.ratio_ci95, settings.min_speedup)


def speed_shortfall(
    ratio: float | None, ci: Sequence[float] | None, min_speedup: float, what: str = "latency"
) -> str | None:
    """Why a candidate/current ratio of `what` (timed interleaved, per round) is not a gain of at least
    `min_speedup` with its 95 % interval below 1; None when it is."""
    if ratio is None:
        return f"no interleaved rounds to compare {what}"
    if ratio > 1.0 / (1.0 + min_speedup):
        return f"{what} {1 / ratio:.2f}x, below the required {1 + min_speedup:.2f}x"
    if ci is None:
        return f"too few interleaved rounds for a 95 % interval of the {what} ratio"
    if ci[1] >= 1.0:
        return f"{what} gain not significant (ratio 95 % CI {ci[0]:.3f}-{ci[1]:.3f} includes 1)"
    return None


def _quality(numbers: CandidateNumbers, settings: OptimizeConfig) -> str | None:
    """Why the candidate's answers are not good enough: accuracy on eval data when both have it,
    else the fidelity of its outputs to the current variant's; None when they are."""
    if numbers.accuracy is not None and numbers.current_accuracy is not None:
        drop = numbers.current_accuracy - numbers.accuracy
        if drop <= settings.accuracy_tolerance:
            return None
        return (f"accuracy {numbers.accuracy:.4f} vs {numbers.current_accuracy:.4f}: "
                f"drop {drop:.4f} over the tolerance {settings.accuracy_tolerance:g}")
    fidelity = numbers.fidelity
    if fidelity is None:
        return "no accuracy or output fidelity measured"
    if fidelity.non_finite:
        return "the output has NaN or infinite values"
    if fidelity.kind == "top1" and fidelity.agreement is not None:
        disagreement = 1.0 - fidelity.agreement
        if disagreement <= settings.top1_tolerance:
            return None
        return (f"top-1 agreement with the current variant {fidelity.agreement:.4f}: "
                f"{disagreement:.4f} disagree, over the tolerance {settings.top1_tolerance:g}")
    if fidelity.value is None:
        return "no output fidelity measured"
    if fidelity.value <= settings.relative_error_tolerance:
        return None
    return f"output relative error {fidelity.value:.4f} over the tolerance {settings.relative_error_tolerance:g}"


def _footprint(numbers: CandidateNumbers) -> list[str]:
    """Why the candidate costs more memory than the current variant: on disk, or per call."""
    reasons = []
    size, current_size = numbers.size_mb, numbers.current_size_mb
    if size is not None and current_size is not None and size > current_size * SIZE_SLACK:
        reasons.append(f"model grows from {current_size:.2f} to {size:.2f} MiB")
    peak, current_peak = numbers.forward_peak_mb, numbers.current_forward_peak_mb
    if peak is not None and current_peak is not None and peak > current_peak * FORWARD_SLACK + FORWARD_SLACK_MB:
        reasons.append(f"one call takes {peak:.1f} MiB beyond the model, against {current_peak:.1f} MiB")
    return reasons


def best(verdicts: Sequence[Verdict]) -> Verdict | None:
    """The accepted candidate with the lowest latency ratio, if any was accepted."""
    accepted = [v for v in verdicts if v.accepted and v.numbers.ratio_p50 is not None]
    return min(accepted, key=lambda v: v.numbers.ratio_p50 or 1.0) if accepted else None
