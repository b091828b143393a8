"""The daemon as a real process: runs on schedule, stops gracefully, catches up once, runs alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from cli_helpers import PERFGUARD, free_port

from monitor.config import load_config
from monitor.core.series import SeriesKey
from monitor.service.benchmark import STORE_ATTEMPTS
from monitor.service.http import MAX_CONNECTIONS, RunMetricsExporter, serve
from storage import queries
from storage.db import Database
from storage.lease import DatabaseLease
from tests.net_helpers import TcpProxy

TESTS = Path(__file__).resolve().parent


def write_config(folder: Path, models: str, stop_timeout_s: float = 5, port: int | None = None,
                 confirm: bool = False) -> Path:
    """A daemon config; `confirm` off by default: no references (neither the A/B nor relative runs):
    freezing a reference after the first run takes the device for a few seconds, which would shift
    the schedules these tests time. No run counts as contended: these tests are about the daemon's
    wiring, which must hold on a busy host too (contention has its own tests)."""
    (folder / "workloads.py").unlink(missing_ok=True)
    (folder / "workloads.py").symlink_to(TESTS / "workloads.py")
    path = folder / "perfguard.toml"
    path.write_text(
        '[storage]\nurl = "sqlite:///runs.db"\n[harness]\nmin_samples = 20\ncontention_cpu_pct = 10000\n'
        f'relative = {"true" if confirm else "false"}\n'
        f'[daemon]\nstop_timeout_s = {stop_timeout_s}\nlisten = "127.0.0.1:{port or free_port()}"\n'
        f'[detection]\nconfirm = {"true" if confirm else "false"}\n'
        + textwrap.dedent(models)
    )
    return path


QUICK_MODEL = """
[[models]]
name = "{name}"
factory = "workloads:tiny"
inputs = [{{ shape = [4, 16] }}]
max_time_s = 0.2
schedule = {{ every = "{every}" }}
"""


def start(config: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PERFGUARD, *options, "daemon", "--config", str(config)], cwd=config.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def runs(config: Path, model: str) -> list:
    with Database.open(load_config(config).storage_url()) as db:
        return list(reversed(queries.history(db, model, limit=1000, with_samples=True)))


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(predicate, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_models_run_on_their_schedule_and_sigterm_exits_cleanly(tmp_path):
    # The interval must leave room for one run: a worker's start (importing torch) alone takes 3 s on
    # a slow day of these 2-vCPU hosts, and a run still going when the next is due makes it skip one.
    every = 6.0
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every=f"{every:g}s")
                          + QUICK_MODEL.format(name="slow", every="1h"))
    proc = start(config, "--log-format", "json")
    try:
        assert wait_for(lambda: (tmp_path / "runs.db").exists() and len(runs(config, "fast")) >= 5, 90)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    fast, slow = runs(config, "fast"), runs(config, "slow")
    assert all(r.status == "ok" for r in fast + slow), err
    assert len(slow) == 1  # never ran before: runs once at start, then hourly
    assert all(b.started_at >= a.finished_at for a, b in zip(fast, fast[1:]))  # never two at once
    # When the schedule fired, from the log: a worker's start-up (seconds, and more on a busy host)
    # is in the runs' own start times, not in these. The first two are left out: both models were
    # due at start, so the second "fast" run waited behind the first "slow" one. A run that outlasts
    # the interval makes the next one skip (a gap of twice the interval), never start early.
    events = [json.loads(line) for line in err.splitlines()]
    due = [datetime.fromisoformat(e["time"]) for e in events if e["message"] == "run of fast due"]
    assert len(due) >= len(fast), err
    gaps = [(b - a).total_seconds() for a, b in zip(due[2:], due[3:])]
    assert gaps and all(round(gap / every) >= 1 and abs(gap - every * round(gap / every)) <= 0.5
                        for gap in gaps), gaps
    assert sum(round(gap / every) == 1 for gap in gaps) >= len(gaps) / 2, gaps
    assert any("stored: model=fast" in e["message"] for e in events)


def test_the_daemon_never_imports_torch_and_can_log_json_lines(tmp_path):
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every="1h"))
    proc = start(config, "--log-format", "json")
    try:
        assert wait_for(lambda: (tmp_path / "runs.db").exists() and runs(config, "fast"), 40)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        code, err = stop(proc)
    assert "libtorch" not in maps
    events = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    [stored] = [e for e in events if "stored: model=fast" in e["message"]]
    assert stored["level"] == "info" and stored["logger"] == "monitor.service.daemon" and stored["time"]


def test_sigterm_during_a_benchmark_aborts_it_after_the_stop_timeout_and_stores_it(tmp_path):
    config = write_config(tmp_path, """
        [[models]]
        name = "long"
        factory = "workloads:hang"
        inputs = [{ shape = [4, 16] }]
        timeout_s = 120
        schedule = { every = "1h" }
    """, stop_timeout_s=0.5)
    proc = start(config)
    try:
        time.sleep(4)  # the worker is in its (endless) first call by now
    finally:
        started = time.monotonic()
        code, err = stop(proc)
    assert code == 0, err
    assert time.monotonic() - started < 10
    [run] = runs(config, "long")
    assert run.status == "failed" and run.error.startswith("aborted")
    assert run.samples_ms == [] and run.metrics.samples is None  # nothing half-written


def test_after_sigterm_the_series_in_flight_finishes_and_no_other_starts(tmp_path):
    config = write_config(tmp_path, """
        [[models]]
        name = "four"
        factory = "workloads:busy_200us"
        inputs = [{ shape = [4, 16] }]
        batch_sizes = [1, 2, 4, 8]
        max_time_s = 1.0
        schedule = { every = "1h" }
    """, stop_timeout_s=60)
    proc = start(config)

    def benchmarking() -> bool:  # the first series' worker is running (forked from the daemon's pool)
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
            return any(c.name() == "perfguard-work" for c in children)
        except psutil.Error:
            return False

    try:
        assert wait_for(benchmarking, 60, step=0.05)
    finally:
        code, err = stop(proc, timeout=90)
    assert code == 0, err
    stored = runs(config, "four")
    # The running series may finish (the stop timeout allows it); the three queued behind it do not start.
    assert len(stored) <= 1, [r.batch_size for r in stored]
    assert "not started" in err or not stored


def test_a_second_daemon_is_refused_and_status_tells_who_runs(tmp_path):
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every="1h"))
    first = start(config)
    try:
        assert wait_for(lambda: (tmp_path / "runs.db").exists(), 20)
        time.sleep(1)
        second = subprocess.run([PERFGUARD, "daemon", "--config", str(config)], capture_output=True,
                                text=True, timeout=60)
        assert wait_for(lambda: runs(config, "fast"), 40)
        running = subprocess.run([PERFGUARD, "status", "--json", "--config", str(config)],
                                 capture_output=True, text=True, timeout=60)
    finally:
        stop(first)
    assert second.returncode == 1
    assert "already running" in second.stderr and str(first.pid) in second.stderr
    stopped = subprocess.run([PERFGUARD, "status", "--json", "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
    live, after = json.loads(running.stdout), json.loads(stopped.stdout)
    assert live["daemon"]["running"] and live["daemon"]["holder"] == f"pid {first.pid}"
    [model] = live["models"]
    assert model["next_run_source"] == "daemon" and model["last_run"]["status"] == "ok"
    assert not after["daemon"]["running"] and after["models"][0]["next_run_source"] == "schedule"


def test_after_kill_9_a_restart_runs_each_missed_model_once(tmp_path):
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every="2s"))
    proc = start(config)
    assert wait_for(lambda: (tmp_path / "runs.db").exists() and runs(config, "fast"), 40)
    family = psutil.Process(proc.pid).children(recursive=True)  # workers, report drawing processes
    proc.kill()  # no chance to clean up; the kernel drops its lock
    proc.wait()
    assert wait_for(lambda: not any(alive(p) for p in family), 10), [p.cmdline() for p in family if alive(p)]
    before = runs(config, "fast")
    time.sleep(7)  # three runs missed
    restart = start(config)
    try:
        assert wait_for(lambda: len(runs(config, "fast")) > len(before), 30)
        time.sleep(1.0)  # a duplicate catch-up would land right after the first
        after = runs(config, "fast")
    finally:
        code, err = stop(restart)
    assert code == 0, err
    new = after[len(before):]
    assert [r.run_id for r in after[: len(before)]] == [r.run_id for r in before]
    # One catch-up run at restart, not three; the next one only an interval later.
    assert len(new) == 1 or (new[1].started_at - new[0].started_at) >= timedelta(seconds=1.5)
    assert new[0].started_at - before[-1].started_at > timedelta(seconds=6)


def test_a_changed_config_file_is_reloaded_and_a_bad_one_refused(tmp_path):
    port = free_port()
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every="1h"), port=port)
    good = config.read_text()

    def problems() -> list[str]:
        return json.loads(http_get(port, "/healthz")[1]).get("problems", [])

    proc = start(config)
    try:
        assert wait_for(lambda: (tmp_path / "runs.db").exists() and runs(config, "fast"), 40)
        config.write_text(good + '\n[[models]]\nname = "broken"\nfactory = 1\n')
        # Refused, and said so on /healthz until a reload succeeds (the file is polled every 2 s).
        assert wait_for(lambda: any("models[1].factory" in p for p in problems()), 40), (problems(), http_get(port, "/healthz"))
        config.write_text(good + textwrap.dedent(QUICK_MODEL.format(name="added", every="1h")))
        assert wait_for(lambda: runs(config, "added"), 40)
        assert not any("config reload refused" in p for p in problems())
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "config reload refused" in err
    assert "config reloaded" in err


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (TimeoutError, urllib.error.URLError):
        return 0, "{}"  # not answering (yet): the caller waits and asks again


def test_healthz_and_prometheus_metrics(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every="1h"), port=port)
    proc = start(config)
    try:
        assert wait_for(lambda: (tmp_path / "runs.db").exists() and runs(config, "fast"), 40)
        time.sleep(0.5)
        health_code, health = http_get(port, "/healthz")
        live_code, live = http_get(port, "/livez")
        metrics_code, metrics = http_get(port, "/metrics")
        missing_code, _ = http_get(port, "/nope")
    finally:
        stop(proc)
    assert health_code == 200
    report = json.loads(health)
    assert report["healthy"] and report["scheduler_running"] and report["database_reachable"]
    assert report["last_successful_run"] is not None and "fast" in report["next_runs"]
    assert live_code == 200 and json.loads(live) == {"alive": True}
    assert metrics_code == 200 and missing_code == 404
    families = list(text_string_to_metric_families(metrics))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}
    # promtool's rule: only summaries carry a `quantile` label.
    assert not [f.name for f in families if f.type != "summary" and any("quantile" in s.labels for s in f.samples)]
    [run] = runs(config, "fast")
    series = (("batch_size", "4"), ("concurrency", "1"), ("device", "cpu"), ("mode", "infer"), ("model", "fast"),
              ("variant", "baseline"))
    p50 = samples[("perfguard_latency_seconds", tuple(sorted((*series, ("percentile", "50")))))]
    assert p50 == pytest.approx(run.metrics.latency_ms_p50 / 1000)
    assert samples[("perfguard_runs_total", (("model", "fast"), ("status", "ok")))] == 1
    # Every status counter exists from the start, at 0: increase() then sees the first failure.
    assert samples[("perfguard_runs_total", (("model", "fast"), ("status", "failed")))] == 0
    assert samples[("perfguard_last_run_timestamp_seconds", (("model", "fast"),))] == pytest.approx(
        run.started_at.timestamp())
    assert samples[("perfguard_peak_rss_bytes", series)] > 50 * 2**20


def behind_proxy(tmp_path: Path, pg_schema_url: str, every: str) -> tuple[TcpProxy, Path, int]:
    """A daemon config whose PostgreSQL is reached through a proxy (not started yet), and its port."""
    from sqlalchemy import make_url

    proxy = TcpProxy(make_url(pg_schema_url).port or 5432)
    url = proxy.url_for(pg_schema_url)
    port = free_port()
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every=every), port=port)
    config.write_text(config.read_text().replace('url = "sqlite:///runs.db"', f'url = "{url}"'))
    return proxy, config, port


def stored_runs(url: str, model: str) -> int:
    with Database.open(url) as db:
        return len(queries.history(db, model, limit=1000))


@pytest.mark.postgres
def test_a_daemon_started_while_its_database_is_down_serves_waits_and_then_runs(tmp_path, pg_schema_url):
    proxy, config, port = behind_proxy(tmp_path, pg_schema_url, every="1h")  # proxy not started: down

    def count() -> int:
        return stored_runs(pg_schema_url, "fast")

    proc = start(config)
    try:
        assert wait_for(lambda: http_get(port, "/healthz")[0] == 503, 30)
        report = json.loads(http_get(port, "/healthz")[1])
        assert report["problems"][0] == "starting: waiting for the database" and not report["database_reachable"]
        assert http_get(port, "/livez")[0] == 200  # alive: a supervisor must not restart it
        assert proc.poll() is None
        proxy.start()
        assert wait_for(lambda: count() >= 1, 60)
        assert wait_for(lambda: http_get(port, "/healthz")[0] == 200, 20)
    finally:
        code, err = stop(proc)
        proxy.stop()
    assert code == 0, err
    assert "waiting for it" in err and "the database answers again" in err
    assert "Traceback" not in err


@pytest.mark.postgres
def test_a_second_daemon_on_one_postgresql_database_is_refused_from_any_host(tmp_path, pg_schema_url):
    """The lease lives in the server: another host (its own lock folder), another spelling of the URL
    (through a proxy port), and still one daemon per database."""
    proxy, config, port = behind_proxy(tmp_path, pg_schema_url, every="1h")
    proxy.start()
    env = {**os.environ, "PERFGUARD_LOCK_DIR": str(tmp_path / "other-host-locks")}
    with Database.open(pg_schema_url) as db:
        elsewhere = DatabaseLease(db, "perfguard daemon pid 4242 on host-a")
        assert elsewhere.acquire() is None
        try:
            refused = subprocess.run([PERFGUARD, "daemon", "--config", str(config)], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, timeout=60)
        finally:
            elsewhere.release()
        assert refused.returncode == 1, refused.stderr
        assert "another perfguard daemon holds" in refused.stderr and "pid 4242 on host-a" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert stored_runs(pg_schema_url, "fast") == 0
        proc = subprocess.Popen([PERFGUARD, "daemon", "--config", str(config)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: stored_runs(pg_schema_url, "fast") >= 1, 60)
            held = DatabaseLease(db, "a latecomer").acquire()
            assert held is not None and f"pid {proc.pid}" in held
        finally:
            code, err = stop(proc)
            proxy.stop()
    assert code == 0, err


def test_a_database_outage_turns_health_red_and_loses_no_run(tmp_path, pg_schema_url):
    proxy, config, port = behind_proxy(tmp_path, pg_schema_url, every="2s")
    proxy.start()

    def count() -> int:
        return stored_runs(pg_schema_url, "fast")

    proc = start(config)
    try:
        assert wait_for(lambda: count() >= 1, 40)
        proxy.stop()
        outage_start = time.time()
        assert wait_for(lambda: http_get(port, "/healthz")[0] == 503, 20)
        report = json.loads(http_get(port, "/healthz")[1])
        assert report["database_reachable"] is False and report["database_error"]
        assert http_get(port, "/livez")[0] == 200  # not ready, but alive: no restart, the spool is kept
        assert wait_for(lambda: json.loads(http_get(port, "/healthz")[1]).get("spooled_runs", 0) >= 2, 30)
        outage_end = time.time()
        proxy.start()
        assert wait_for(lambda: http_get(port, "/healthz")[0] == 200, 20)
        assert wait_for(lambda: json.loads(http_get(port, "/healthz")[1]).get("spooled_runs") == 0, 20)
    finally:
        code, err = stop(proc)
        proxy.stop()
    assert code == 0, err
    with Database.open(pg_schema_url) as db:
        stored = list(reversed(queries.history(db, "fast", limit=1000)))
    during = [r for r in stored if outage_start <= r.started_at.timestamp() <= outage_end]
    assert len(during) >= 2, "runs made during the outage were not stored afterwards"
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in zip(stored, stored[1:])]
    # No run went missing: runs follow each other every 2 s, except the one whose store met the outage,
    # which waits out store_with_retries' back-off before it is spooled (a fixed 8 s failed on a slow host).
    back_off = sum(0.5 * 2**attempt for attempt in range(1, STORE_ATTEMPTS))
    longest = max((r.finished_at - r.started_at).total_seconds() for r in stored if r.finished_at)
    assert max(gaps) < 2 + longest + back_off + 2, gaps
    assert "stored from the spool" in err
    assert not list((tmp_path / "perfguard-spool").glob("*.json"))


def test_after_each_run_the_daemon_detects_changes_and_freezes_a_reference(tmp_path):
    import dataclasses

    from storage_helpers import full_record

    from storage import findings as store

    port = free_port()
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every="2s"), port=port, confirm=True)
    # 30 runs of history at 5 ms; the tiny model really takes microseconds: a large improvement.
    start_at = datetime.now(UTC) - timedelta(hours=6)
    history = []
    for i in range(30):
        record = full_record("fast", minute=i, batch_size=4)
        metrics = dataclasses.replace(record.metrics, latency_ms_p50=5.0 * (1 + 0.01 * ((i * 7) % 5 - 2)))
        history.append(dataclasses.replace(record, flags=[], metrics=metrics, started_at=start_at + timedelta(minutes=i),
                                           finished_at=start_at + timedelta(minutes=i, seconds=1)))
    with Database.open(load_config(config).storage_url()) as db:
        queries.save_runs(db, history)

    def latency_finding():
        with Database.open(load_config(config).storage_url()) as db:
            return [f for f in store.findings(db, "fast") if f.metric == "latency_ms_p50"]

    gauge = 'perfguard_open_findings{metric="latency_ms_p50",model="fast",verdict="improvement"} 1.0'
    proc = start(config)
    try:
        assert wait_for(lambda: (tmp_path / "runs.db").exists() and gauge in http_get(port, "/metrics")[1], 90, 1.0)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    [finding] = latency_finding()
    assert (finding.verdict, finding.change, finding.state) == ("improvement", "down", "open")
    assert finding.change_run_id == len(history) + 1  # the daemon's first run
    assert finding.cause is None  # only regressions are attributed
    with Database.open(load_config(config).storage_url()) as db:
        reference = store.latest_reference(db, "fast", SeriesKey("baseline", "cpu", 4))
    assert reference is not None and reference.artifact["kind"] == "torchscript"


def test_after_its_runs_the_daemon_evaluates_the_rules_and_records_what_fired(tmp_path):
    from storage import rule_events

    port = free_port()
    model = QUICK_MODEL.format(name="fast", every="1h") + "slo = { latency_ms_p50 = 0.000001 }\n"
    rules = '\n[[rules]]\nuse = "slo_breach"\nparams = { last = 1 }\n'
    config = write_config(tmp_path, model + rules, port=port)

    def events():
        if not (tmp_path / "runs.db").exists():
            return []
        with Database.open(load_config(config).storage_url()) as db:
            return rule_events.events(db, "fast")

    proc = start(config)
    try:
        assert wait_for(lambda: events(), 90, 1.0)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    [event] = events()
    assert (event.rule, event.outcome) == ("slo_breach", "alert")
    assert "latency_ms_p50" in event.reason and event.key.startswith("slo:latency_ms_p50:b4:")


def test_idle_connections_hold_a_bounded_number_of_threads_and_the_rest_are_told_busy():
    port = free_port()
    server = serve(f"127.0.0.1:{port}", RunMetricsExporter(), lambda: {"healthy": True})
    idle = []
    try:
        before = threading.active_count()
        # Paced: connecting in a tight loop fills the listen backlog (5) before the accepting thread gets
        # the GIL, and every sixth connect then waits out a 1 s SYN retry (11 s in all). The pause only
        # lets the server accept; the connections stay open and idle all the same.
        for _ in range(3 * MAX_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.005)
        assert wait_for(lambda: threading.active_count() - before >= MAX_CONNECTIONS, 10)
        time.sleep(0.3)
        assert threading.active_count() - before <= MAX_CONNECTIONS
        assert http_get(port, "/livez")[0] == 503  # answered at once, not queued behind the idle ones
        for conn in idle:
            conn.close()
        assert wait_for(lambda: http_get(port, "/livez")[0] == 200, 10)
    finally:
        for conn in idle:
            conn.close()
        server.shutdown()
        server.server_close()


def test_the_daemon_writes_the_report_after_runs_and_serves_it_read_only(tmp_path):
    port = free_port()
    config = write_config(tmp_path, QUICK_MODEL.format(name="fast", every="1h"), port=port)
    (tmp_path / "secret.html").write_text("not part of the report")
    proc = start(config)
    try:
        assert wait_for(lambda: (tmp_path / "runs.db").exists() and runs(config, "fast"), 40)
        site = tmp_path / "perfguard-reports"
        # The index is written once the charts it leads to are on disk.
        assert wait_for(lambda: (site / "index.html").exists() and "no runs yet" not in
                        (site / "index.html").read_text(), 20)
        index_code, index = http_get(port, "/")
        [page] = (site / "models").glob("*.html")
        page_code, page_html = http_get(port, f"/models/{page.name}")
        [image] = [p for p in (site / "img").glob("*.png") if not p.name.startswith("spark-")][:1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/img/{image.name}", timeout=5) as reply:
            image_type, image_bytes = reply.headers["Content-Type"], reply.read()
        escapes = [http_get(port, path)[0] for path in
                   ("/../secret.html", "/%2e%2e/secret.html", "/models/..%2f..%2fsecret.html", "/runs.db",
                    "/perfguard.toml", "/.tmp-x.html", "/index.html%00.png")]
        # A client that connects and says nothing holds no thread forever, and the server still answers.
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        still_code, _ = http_get(port, "/livez")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/index.html", data=b"x", method="POST")
        try:
            urllib.request.urlopen(request, timeout=5)
            post_code = 200
        except urllib.error.HTTPError as exc:
            post_code = exc.code
    finally:
        code, err = stop(proc)
    idle.close()
    assert code == 0, err
    assert still_code == 200
    assert "Traceback" not in err and "embedded null byte" not in err
    assert f"report on http://127.0.0.1:{port}/" in err
    assert index_code == 200 and "<b>fast</b></a>" in index and "pill-ok" in index
    assert index.count("<main>") == 1 and "<footer" in index  # landmarks for screen readers (axe)
    assert page_code == 200 and "Latency, baseline on cpu, batch 4" in page_html
    assert image_type == "image/png" and image_bytes.startswith(b"\x89PNG")
    assert escapes == [404] * len(escapes)
    assert post_code in (405, 501)  # read-only
