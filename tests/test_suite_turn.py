"""The suite's own turns (tests/suite_turn.py): a timing test runs alone, and is not starved."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

from tests.suite_turn import suite_turn


def turnstile_taken(folder: Path) -> bool:
    with open(folder / "suite.turnstile", "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def test_tests_share_a_turn_and_a_timing_test_waits_for_them_and_goes_before_later_ones(tmp_path: Path) -> None:
    events: list[str] = []
    inside = threading.Barrier(3)  # two ordinary tests at once, and this test
    release = threading.Event()

    def ordinary(name: str, hold: bool) -> None:
        with suite_turn(tmp_path, alone=False):
            events.append(f"{name} in")
            if hold:
                inside.wait(10)
                release.wait(10)
            events.append(f"{name} out")

    def timing() -> None:
        with suite_turn(tmp_path, alone=True):
            events.append("timing in")
            time.sleep(0.1)
            events.append("timing out")

    threads = [threading.Thread(target=ordinary, args=(name, True)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    inside.wait(10)  # both ordinary tests are in at once: the turn is shared
    threads.append(threading.Thread(target=timing))
    threads[-1].start()
    deadline = time.monotonic() + 10
    while not turnstile_taken(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    threads.append(threading.Thread(target=ordinary, args=("c", False)))  # arrives while timing waits
    threads[-1].start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(events[:4]) == ["a in", "a out", "b in", "b out"], events
    assert events[4:] == ["timing in", "timing out", "c in", "c out"], events
