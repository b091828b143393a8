"""The TCPD benchmark's F1 as bench/tcpd.py scores it: the examples TCPDBench's own metrics.py gives,
and the rules that decide them (location 0 everywhere, one prediction per match, a margin of 5)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("tcpd", Path(__file__).resolve().parents[1] / "bench" / "tcpd.py")
assert SPEC is not None and SPEC.loader is not None
tcpd = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tcpd)


@pytest.mark.parametrize(
    ("annotations", "predictions", "f1"),
    [
        ({"1": [10, 20], "2": [11, 20], "3": [10], "4": [0, 5]}, [10, 20], 1.0),
        ({"1": [], "2": [10], "3": [50]}, [10], 10 / 11),  # recall (1 + 1 + 1/2) / 3, precision 1
        ({"1": [], "2": [10], "3": [50]}, [], 0.8),  # "zero": precision 1 (location 0), recall 2/3
    ],
)
def test_the_examples_of_the_benchmark_score_as_published(annotations, predictions, f1):
    assert tcpd.f_measure(annotations, predictions) == pytest.approx(f1, abs=1e-12)


def test_one_prediction_answers_one_annotated_point_within_the_margin():
    # Two annotated points 2 apart, one prediction between them: one match, not two.
    assert len(tcpd.true_positives({40, 42}, {41, 0})) == 1
    assert tcpd.true_positives({30}, {35}) == {30} and tcpd.true_positives({30}, {36}) == set()
    # An extra prediction far from every annotation costs precision only.
    assert tcpd.f_measure({"1": [30]}, [30, 90]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


def test_a_detector_may_report_twice_what_the_busiest_annotator_marked():
    assert tcpd.count_limit({"1": [], "2": []}) == 2
    assert tcpd.count_limit({"1": [5, 9, 40], "2": [6]}) == 6
