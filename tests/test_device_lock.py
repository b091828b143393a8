"""One benchmark per device on a host: whoever starts second waits for the first, says so, and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from monitor.harness.device_lock import device_lock, lock_path
from monitor.harness.protocol import (
    BenchmarkJob,
    InputTensor,
    SamplingSettings,
    Subject,
)
from monitor.harness.runner import run_worker
from tests.cli_helpers import PERFGUARD, TESTS_DIR, tiny_model, write_config

HOLD = textwrap.dedent("""
    import sys
    from monitor.harness.device_lock import device_lock
    with device_lock(sys.argv[1], "the test's holder"):
        print("held", flush=True)
        sys.stdin.readline()
""")


def holder(device: str) -> subprocess.Popen[str]:
    """Another process holding `device`'s lock until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, device], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


def test_a_gpu_has_one_lock_whatever_it_is_called_and_the_cpu_another() -> None:
    assert lock_path("cuda") == lock_path("cuda:0") != lock_path("cuda:1")
    assert lock_path("cpu") != lock_path("cuda:0")


def test_the_second_taker_waits_for_the_first_to_let_go() -> None:
    proc = holder("cpu")
    got = threading.Event()
    waited: list[float] = []

    def take() -> None:
        with device_lock("cpu", "the second") as wait:
            waited.append(wait)
            got.set()

    taker = threading.Thread(target=take)
    taker.start()
    assert not got.wait(1.0)  # held by the other process
    with device_lock("cuda:0", "another device"):
        pass  # another device is free meanwhile
    release(proc)
    assert got.wait(10)
    taker.join()
    assert waited[0] >= 1.0


def test_a_cancelled_wait_ends_as_an_aborted_run() -> None:
    proc = holder("cpu")
    cancel = threading.Event()
    cancel.set()
    job = BenchmarkJob(model="m", subjects=[Subject("baseline", "workloads:tiny", [InputTensor([8, 16])])],
                       batch_size=8, sampling=SamplingSettings(max_time_s=0.3, min_samples=20))
    try:
        outcome = run_worker(job, timeout_s=60, cancel=cancel)
    finally:
        release(proc)
    assert outcome.status == "failed" and outcome.result is None
    assert "cancelled while waiting for the cpu benchmark lock" in (outcome.error or "")


def test_a_run_typed_beside_a_benchmark_waits_with_a_message_then_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m")])
    proc = holder("cpu")
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
    cli = subprocess.Popen([str(PERFGUARD), "run", "--json", "--config", str(config)], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert cli.stderr is not None
    try:
        said = ""
        while line := cli.stderr.readline():  # the command's start-up takes seconds on a busy host
            said += line
            if "waiting for the cpu benchmark lock" in line:
                break
        time.sleep(1.5)
        assert cli.poll() is None, cli.communicate()  # still waiting
    finally:
        release(proc)
    out, err = cli.communicate(timeout=120)
    err = said + err
    assert cli.returncode == 0, err
    assert "waiting for the cpu benchmark lock, held by pid" in err and "the test's holder" in err
    (run,) = json.loads(out)
    assert run["status"] == "ok" and run["details"]["lock_wait_s"] >= 1.5
