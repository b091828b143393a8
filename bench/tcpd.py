"""Change detection on real, externally annotated series: the Turing Change Point Detection benchmark.

    .venv/bin/python bench/tcpd.py                          # every detector, the table, the checks
    .venv/bin/python bench/tcpd.py --detectors zero,perfguard --json /tmp/tcpd.json
    .venv/bin/python bench/tcpd.py --data /path/to/tcpd     # default: ../shared/data/tcpd

Data: the 32 univariate series of the aggregate table of G. J. J. van den Burg and C. K. I. Williams,
"An Evaluation of Change Point Detection Algorithms" (arXiv 2003.06222), with every annotator's
change points and the paper's per-series F1 of each method with its default settings (the folder's
README says what and from where). A series is `series[0].raw` of its TCPD JSON file.

Score: the benchmark's own F1 (TCPDBench, analysis/scripts/metrics.py, transcribed below): location 0
is added to the predictions and to every annotator's set; each annotated point, in Python set order,
takes its nearest still-unused prediction within a margin of 5 points; precision is the share of
predictions matched by the union of the annotators' points, recall the mean over annotators of the
share of their points matched; F1 their harmonic mean. The script first checks the scorer: the "zero"
method (no change point) must reproduce the published F1 of every series (mean 0.645), else it exits 1.

Detectors, each with its defaults (no per-series tuning):
* ``zero``: no change point.
* ``perfguard``: the steps the service reports, with ``DetectionOptions()``: those of
  ``monitor.detection.changepoints.detect_changes`` left by ``monitor.detection.drift.fold_drift``. A
  step's index is the first point of the new level, the benchmark's convention. A drift is a finding
  of another kind; ``perfguard+drift`` counts where it began as a change point too.
* ``binseg`` / ``pelt``: ruptures (``pip install ruptures``; skipped when it is missing), cost ``l2``,
  ``min_size=2``, penalty ``3 * var(y) * log(n)`` (a BIC-like penalty on the standardised series).

Printed: per series the F1 and the number of change points each detector reported, against the most
any annotator marked (``!``: more than twice that, with a floor of one, the issue's limit); then the
mean F1, the published means of the paper's defaults, and how many series each detector over-reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.detection.changepoints import DetectionOptions, detect_changes  # noqa: E402
from monitor.detection.drift import fold_drift  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tcpd"
MARGIN = 5
PUBLISHED_METHODS = ("binseg", "pelt", "bocpd", "amoc", "zero", "segneigh", "ecp")


# TCPDBench's metrics.py, transcribed (same set operations, hence the same matching order).


def true_positives(annotated: set[int], predicted: set[int], margin: int = MARGIN) -> set[int]:
    """The annotated points that find a prediction within `margin`: each, in set order, takes the
    nearest one still unused."""
    unused = set(list(predicted))
    found = set()
    for tau in annotated:
        close = [(abs(tau - x), x) for x in unused if abs(tau - x) <= margin]
        close.sort()
        if not close:
            continue
        found.add(tau)
        unused.remove(close[0][1])
    return found


def f_measure(annotations: dict[str, list[int]], predictions: Sequence[int], margin: int = MARGIN) -> float:
    """F1 against every annotator at once (location 0 counts as a change point for all). The sets are
    built exactly as the original builds them: their iteration order decides the greedy matching."""
    per_annotator = [set(points) for points in annotations.values()]
    for points in per_annotator:
        points.add(0)
    predicted = set(predictions)
    predicted.add(0)
    union: set[int] = set()
    for points in per_annotator:
        for tau in points:
            union.add(tau)
    precision = len(true_positives(union, predicted, margin)) / len(predicted)
    recall = sum(len(true_positives(t, predicted, margin)) / len(t) for t in per_annotator) / len(per_annotator)
    return precision * recall / (0.5 * recall + 0.5 * precision)


def load_series(data: Path, name: str) -> np.ndarray:
    raw = json.loads((data / f"{name}.json").read_text())["series"][0]["raw"]
    return np.array([np.nan if v is None else float(v) for v in raw], dtype=float)


def count_limit(annotations: dict[str, list[int]]) -> int:
    """The most change points a detector may report: twice what the busiest annotator marked (one
    at least, so that a series nobody marked allows two)."""
    return 2 * max(1, max(len(points) for points in annotations.values()))


Detector = Callable[[np.ndarray], Sequence[int]]


def perfguard(values: np.ndarray) -> list[int]:
    """The steps the service reports in a series (a drift is a finding of another kind, not a change
    point, and is left out)."""
    options = DetectionOptions()
    steps, _ = fold_drift(values, detect_changes(values, options=options), options)
    return [c.index for c in steps]


def perfguard_with_drift(values: np.ndarray) -> list[int]:
    """The steps, and where a drift began, counted as a change point too."""
    options = DetectionOptions()
    steps, drift = fold_drift(values, detect_changes(values, options=options), options)
    return [c.index for c in steps] + ([drift.index] if drift is not None else [])


def ruptures_detector(algorithm: str) -> Detector:
    """ruptures' Binseg or Pelt on the finite points, l2 cost, penalty 3 var(y) log n."""
    import ruptures  # noqa: PLC0415 - optional: only this detector needs it

    def run(values: np.ndarray) -> list[int]:
        keep = np.flatnonzero(np.isfinite(values))
        y = values[keep]
        penalty = 3.0 * max(float(np.var(y)), 1e-12) * np.log(y.size)
        kind = ruptures.Binseg if algorithm == "binseg" else ruptures.Pelt
        ends = kind(model="l2", min_size=2, jump=1).fit(y).predict(pen=penalty)
        return [int(keep[e]) for e in ends[:-1]]

    return run


def detectors(names: Sequence[str]) -> dict[str, Detector]:
    made: dict[str, Detector] = {}
    for name in names:
        if name == "zero":
            made[name] = lambda values: []
        elif name == "perfguard":
            made[name] = perfguard
        elif name == "perfguard+drift":
            made[name] = perfguard_with_drift
        elif name in ("binseg", "pelt"):
            try:
                made[name] = ruptures_detector(name)
            except ImportError:
                print(f"skipping {name}: ruptures is not installed (.venv/bin/pip install ruptures)")
        else:
            raise SystemExit(f"unknown detector {name!r}; known: zero, perfguard, perfguard+drift, binseg, pelt")
    return made


def score(detector: Detector, data: Path, annotations: dict[str, dict[str, list[int]]]) -> dict[str, Any]:
    """Per series: F1, the change points reported, and the over-report limit."""
    scored = {}
    for name, marked in annotations.items():
        values = load_series(data, name)
        found = sorted({int(i) for i in detector(values) if 0 < int(i) < values.size})
        scored[name] = {"f1": f_measure(marked, found), "points": found, "limit": count_limit(marked),
                        "most_marked": max(len(p) for p in marked.values())}
    return scored


def check_scorer(annotations: dict[str, dict[str, list[int]]], published: dict[str, dict[str, float]]) -> bool:
    """The "zero" method scores exactly the published F1 on every series."""
    wrong = [n for n, marked in annotations.items() if round(f_measure(marked, []), 4) != published[n]["zero"]]
    mean = statistics.fmean(f_measure(marked, []) for marked in annotations.values())
    print(f"scorer check: zero F1 reproduced on {len(annotations) - len(wrong)} of {len(annotations)} series, "
          f"mean {mean:.4f} (published 0.645)" + (f"; differs on {', '.join(wrong)}" if wrong else ""))
    return not wrong


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    series = list(next(iter(results.values())))
    lines = ["| series | most marked | " + " | ".join(f"{n} F1 (points)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for s in series:
        first = results[names[0]][s]
        cells = [f"{r[s]['f1']:.3f} ({len(r[s]['points'])}{'!' if len(r[s]['points']) > r[s]['limit'] else ''})"
                 for r in results.values()]
        lines.append(f"| {s} | {first['most_marked']} | " + " | ".join(cells) + " |")
    lines.append("| **mean F1** | | " + " | ".join(f"**{statistics.fmean(v['f1'] for v in r.values()):.3f}**"
                                              for r in results.values()) + " |")
    lines.append("| series over the limit | | " + " | ".join(
        str(sum(len(v["points"]) > v["limit"] for v in r.values())) for r in results.values()) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"the TCPD folder (default {DEFAULT_DATA})")
    parser.add_argument("--detectors", default="zero,perfguard,perfguard+drift,binseg,pelt")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every series' points and F1 as JSON")
    args = parser.parse_args(argv)
    if not (args.data / "annotations.json").is_file():
        print(f"no TCPD data in {args.data} (annotations.json missing); give --data")
        return 2
    annotations = json.loads((args.data / "annotations.json").read_text())
    published = json.loads((args.data / "published_default_f1.json").read_text())
    if not check_scorer(annotations, published):
        return 1
    results = {}
    for name, detector in detectors(args.detectors.split(",")).items():
        started = time.perf_counter()
        results[name] = score(detector, args.data, annotations)
        print(f"{name}: {time.perf_counter() - started:.2f} s for {len(annotations)} series")
    print()
    print(table(results))
    print("\npublished means of the defaults: " + ", ".join(
        f"{m} {statistics.fmean(published[n][m] for n in annotations):.3f}" for m in PUBLISHED_METHODS))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
