"""The fault matrix, replayed end to end against real daemons, databases and servers.

Each fault is injected into a real `perfguard daemon` (tiny models from tests/workloads.py, SQLite or
the local PostgreSQL through a TCP proxy that can be cut), then what the daemon did is read back from
its database, its log, /healthz and the process table. Faults whose end-to-end replay needs a Celery
fleet or a crash at one exact instruction are replayed by the suite's own end-to-end test for them,
run here by node id. Prints one table row per fault: what was injected, what was observed, how many
runs were lost, and the verdict.

    .venv/bin/python bench/fault_matrix.py            # all faults (about 10 minutes on 2 cores)
    .venv/bin/python bench/fault_matrix.py disk pg    # those whose name contains a word given

The disk-full fault mounts a 2 MiB tmpfs and so needs root; without it, that row says "not run".
Needs PERFGUARD_TEST_PG_URL (or the default postgresql+psycopg://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from monitor.service.http import MAX_CONNECTIONS  # noqa: E402
from tests.cli_helpers import free_port, toml_value  # noqa: E402 - the suite's helpers, after the path is set
from tests.net_helpers import TcpProxy, black_hole  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
PERFGUARD = str(Path(sys.executable).parent / "perfguard")
PG_URL = os.environ.get("PERFGUARD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass
class Row:
    fault: str
    observed: str
    lost: str
    verdict: str


# helpers ------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - not ready yet (a file or a table that does not exist yet)
            pass
        time.sleep(step)
    return False


def model_toml(name: str, every: str, factory: str = "workloads:tiny", **extra: object) -> str:
    fields = {"name": name, "factory": factory, "inputs": [{"shape": [4, 16]}], "max_time_s": 0.2,
              "schedule": {"every": every}, **extra}
    return "\n[[models]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items())


def write_config(folder: Path, models: str, url: str | None = None, extra: str = "", stop_timeout_s: float = 10,
                 daemon_extra: str = "") -> tuple[Path, int]:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "workloads.py").exists():
        (folder / "workloads.py").symlink_to(TESTS / "workloads.py")
    port = free_port()
    path = folder / "perfguard.toml"
    path.write_text(
        f'[storage]\nurl = "{url or "sqlite:///runs.db"}"\n'
        "[harness]\nmin_samples = 20\ncontention_cpu_pct = 10000\nrelative = false\n"
        f'[daemon]\nstop_timeout_s = {stop_timeout_s}\nlisten = "127.0.0.1:{port}"\n{daemon_extra}'
        "[detection]\nconfirm = false\n" + extra + models)
    return path, port


class Daemon:
    """A `perfguard daemon` subprocess with its JSON log kept."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None):
        self.config, self.port = config, port
        self.log_path = config.parent / f"daemon-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([PERFGUARD, "--log-format", "json", "daemon", "--config", str(config)],
                                     cwd=config.parent, stdout=self._log, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, "{}"

    def health(self) -> dict:
        return json.loads(self.get("/healthz")[1] or "{}")

    def messages(self) -> list[str]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line)["message"])
            except (ValueError, KeyError):
                out.append(line)
        return out

    def stop(self, timeout: float = 60) -> tuple[int | None, float]:
        began = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode, time.monotonic() - began


def stored(url: str, model: str | None = None) -> list[tuple]:
    """(model, started_at, idempotency_key) of every stored run."""
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return []  # not created yet (and not to be created here: the daemon makes it)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT m.name, r.started_at, r.idempotency_key FROM runs r JOIN models m ON m.id = r.model_id"
            rows = [tuple(r) for r in conn.execute(text(query))]
    finally:
        engine.dispose()
    return [r for r in rows if model is None or r[0] == model]


def due_count(daemon: Daemon, model: str) -> int:
    return sum(m == f"run of {model} due" for m in daemon.messages())


def loss(due: int, runs: list[tuple]) -> str:
    starts = [r[1] for r in runs]
    twice = len(starts) - len(set(starts))
    text_ = f"{max(0, due - len(runs))} of {due}"
    return text_ + (f", {twice} twice" if twice else "")


def pg_schema() -> tuple[str, Callable[[], None]]:
    schema = f"perfguard_faults_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


def cpu_percent(process: psutil.Process) -> float:
    """Its CPU use over one second; 0 when it ends meanwhile."""
    try:
        return process.cpu_percent(interval=1.0)
    except psutil.Error:
        return 0.0


def descendants_alive(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


# faults -------------------------------------------------------------------------------------------

FAULTS: list[tuple[str, Callable[[Path], Row]]] = []


def fault(name: str) -> Callable[[Callable[[Path], Row]], Callable[[Path], Row]]:
    def register(fn: Callable[[Path], Row]) -> Callable[[Path], Row]:
        FAULTS.append((name, fn))
        return fn
    return register


@fault("sigterm mid-run")
def sigterm_mid_run(work: Path) -> Row:
    """A model that never finishes its run: the stop waits stop_timeout_s, then aborts it and stores it."""
    config, port = write_config(work, model_toml("stuck", "1h", factory="workloads:hang"), stop_timeout_s=5)
    daemon = Daemon(config, port)
    wait_for(lambda: "run of stuck due" in daemon.messages(), 60)
    time.sleep(4)  # inside its run
    code, took = daemon.stop()
    runs = stored(f"sqlite:///{work / 'runs.db'}", "stuck")
    left = descendants_alive(daemon.proc.pid)
    engine = create_engine(f"sqlite:///{work / 'runs.db'}")
    with engine.connect() as conn:
        errors = [e for (e,) in conn.execute(text("SELECT error FROM runs"))]
    engine.dispose()
    aborted = bool(errors) and "aborted" in (errors[0] or "")
    ok = code == 0 and len(runs) == 1 and aborted and not left and took < 5 + 10
    return Row("SIGTERM mid-run (a run that would never end; stop_timeout_s 5)",
               f"exit {code} after {took:.1f} s; the run in flight stored as aborted: {'yes' if aborted else 'NO'}; "
               f"{len(left)} process(es) left", loss(1, runs), "survived" if ok else "FAILED")


@fault("pg outage")
def pg_outage(work: Path) -> Row:
    url, drop = pg_schema()
    proxy = TcpProxy(make_url(url).port or 5432)
    try:
        proxy.start()
        config, port = write_config(work, model_toml("fast", "2s"), url=proxy.url_for(url))
        daemon = Daemon(config, port)
        wait_for(lambda: len(stored(url, "fast")) >= 2, 60)
        proxy.stop()
        red = wait_for(lambda: daemon.get("/healthz")[0] == 503, 30)
        live = daemon.get("/livez")[0]
        time.sleep(30)
        spooled = daemon.health().get("spooled_runs", 0)
        proxy.start()
        back = wait_for(lambda: daemon.health().get("spooled_runs") == 0 and daemon.get("/healthz")[0] == 200, 60)
        code, _ = daemon.stop()
        runs = stored(url, "fast")
        due = due_count(daemon, "fast")
        keys = [r[2] for r in runs]
        ok = red and live == 200 and back and code == 0 and len(runs) >= due - 1 and len(set(keys)) == len(keys)
        return Row("PostgreSQL cut for 30 s mid-schedule (every 2 s)",
                   f"/healthz 503 {'yes' if red else 'NO'}, /livez {live}; {spooled} run(s) spooled, flushed once "
                   f"({'yes' if back else 'NO'}); every run has its own idempotency key",
                   loss(due, runs) + " (the last may still run at the stop)", "survived" if ok else "FAILED")
    finally:
        proxy.stop()
        drop()


@fault("pg down at start")
def pg_down_at_start(work: Path) -> Row:
    url, drop = pg_schema()
    proxy = TcpProxy(make_url(url).port or 5432)
    try:
        config, port = write_config(work, model_toml("fast", "1h"), url=proxy.url_for(url))
        daemon = Daemon(config, port)
        waiting = wait_for(lambda: daemon.get("/healthz")[0] == 503, 30)
        problems = daemon.health().get("problems", [])
        live = daemon.get("/livez")[0]
        time.sleep(5)
        alive = daemon.proc.poll() is None
        proxy.start()
        ran = wait_for(lambda: len(stored(url, "fast")) >= 1, 90)
        code, _ = daemon.stop()
        trace = any("Traceback" in m for m in daemon.messages())
        ok = waiting and live == 200 and alive and ran and code == 0 and not trace
        return Row("Daemon started while PostgreSQL is down", f"serves: /healthz 503 ({'; '.join(problems)[:60]}), "
                   f"/livez {live}; ran once it answered: {'yes' if ran else 'NO'}; traceback: {'YES' if trace else 'no'}",
                   "0 of 1" if ran else "1 of 1", "survived" if ok else "FAILED")
    finally:
        proxy.stop()
        drop()


@fault("disk full")
def disk_full(work: Path) -> Row:
    """The database and the spool on a 100 MiB tmpfs, filled by another file: first freed while the
    daemon runs, then filled again and the daemon stopped while runs are held, and started again."""
    disk = work / "disk"
    disk.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        return Row("Disk full (database and spool on a tmpfs)", "not run: mounting a tmpfs needs root", "-", "not run")
    filler = disk / "filler"

    def fill() -> None:
        with filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass

    def held(d: Daemon) -> int:
        return sum(int(p.split()[0]) for p in d.health().get("problems", []) if "held in memory" in p)

    try:
        url = f"sqlite:///{disk / 'runs.db'}"
        config, port = write_config(work, model_toml("fast", "2s"), url=url,
                                    daemon_extra=f'spool_dir = "{disk / "spool"}"\n')
        daemon = Daemon(config, port)
        wait_for(lambda: len(stored(url, "fast")) >= 1, 60)
        fill()
        red = wait_for(lambda: held(daemon) >= 2, 60)
        problems = daemon.health().get("problems", [])
        filler.unlink()
        back = wait_for(lambda: daemon.get("/healthz")[0] == 200 and held(daemon) == 0, 60)
        fill()
        wait_for(lambda: held(daemon) >= 2, 60)
        at_stop = held(daemon)
        code, _ = daemon.stop()
        due = due_count(daemon, "fast")
        rescued = "kept in" in " ".join(daemon.messages())
        filler.unlink()
        again = Daemon(config, port)
        wait_for(lambda: len(stored(url, "fast")) >= due, 60)
        again.stop()
        runs = stored(url, "fast")
        due += due_count(again, "fast")
        leftovers = list((disk / "spool").glob(".*.tmp"))
        ok = red and back and rescued and code == 0 and len(runs) >= due - 1 and not leftovers
        return Row("Disk full (database and spool on a 100 MiB tmpfs, filled by another file)",
                   f"runs held in memory, /healthz: {'; '.join(problems)[:90]}; stored once freed: "
                   f"{'yes' if back else 'NO'}; filled again and stopped with {at_stop} held: rescued to the temp "
                   f"folder {'yes' if rescued else 'NO'}, stored at the next start; {len(leftovers)} temporary "
                   "file(s) left", loss(due, runs) + " (the last may still run at a stop)",
                   "survived" if ok else "FAILED")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@fault("second daemon")
def second_daemon(work: Path) -> Row:
    config, port = write_config(work / "a", model_toml("fast", "1h"))
    first = Daemon(config, port)
    wait_for(lambda: first.get("/healthz")[0] == 200, 60)
    refused = []
    spellings = {
        "a path with ..": str(work / "a" / ".." / "a" / "runs.db"),
        "another XDG_RUNTIME_DIR": str(work / "a" / "runs.db"),
    }
    for what, path in spellings.items():
        other, other_port = write_config(work / f"b{len(refused)}", model_toml("fast", "1h"), url=f"sqlite:///{path}")
        env = {**os.environ, "XDG_RUNTIME_DIR": str(work / "elsewhere")}
        done = subprocess.run([PERFGUARD, "daemon", "--config", str(other)], capture_output=True, text=True,
                              timeout=60, env=env)
        refused.append((what, done.returncode == 1 and "already running" in done.stderr))
    url, drop = pg_schema()
    try:
        pg_config, pg_port = write_config(work / "pg1", model_toml("fast", "1h"), url=url)
        pg_first = Daemon(pg_config, pg_port)
        wait_for(lambda: pg_first.get("/healthz")[0] == 200, 60)
        other_host = make_url(url).set(host="localhost").render_as_string(hide_password=False)
        pg_other, _ = write_config(work / "pg2", model_toml("fast", "1h"), url=other_host)
        env = {**os.environ, "PERFGUARD_LOCK_DIR": str(work / "another-host")}
        done = subprocess.run([PERFGUARD, "daemon", "--config", str(pg_other)], capture_output=True, text=True,
                              timeout=60, env=env)
        refused.append(("PostgreSQL as localhost, from another host's lock folder",
                        done.returncode == 1 and "another perfguard daemon holds" in done.stderr))
        pg_first.stop()
    finally:
        drop()
    first.stop()
    ok = all(r for _, r in refused)
    return Row("A second daemon on the same database", "; ".join(f"{w}: {'refused' if r else 'STARTED'}" for w, r in refused),
               "-", "survived" if ok else "FAILED")


@fault("smtp black hole")
def smtp_black_hole(work: Path) -> Row:
    server, held = black_hole()
    try:
        email = textwrap.dedent(f"""
            [email]
            smtp_host = "127.0.0.1"
            smtp_port = {server.getsockname()[1]}
            sender = "perfguard@example.com"
            recipients = ["team@example.com"]
            timeout_s = 30
            attempts = 3
            [[rules]]
            use = "slo_breach"
            params = {{ last = 1, actions = ["alert"] }}
            """)
        models = model_toml("fast", "3s", slo={"latency_ms_p50": 1e-6})
        config, port = write_config(work, models, extra=email, stop_timeout_s=10)
        daemon = Daemon(config, port)
        wait_for(lambda: bool(held), 90)
        began = time.monotonic()
        url = f"sqlite:///{work / 'runs.db'}"
        before = len(stored(url, "fast"))
        time.sleep(30)
        during = len(stored(url, "fast")) - before
        code, took = daemon.stop(timeout=120)
        ok = during >= 5 and code == 0 and took <= 10 + 5
        return Row("Mail server that accepts and never answers (timeout 30 s, 3 attempts)",
                   f"{during} runs in the {time.monotonic() - began - took:.0f} s after it hung (every 3 s); "
                   f"SIGTERM: exit {code} after {took:.1f} s (stop_timeout_s 10)",
                   "0 (the alert waits in the outbox)", "survived" if ok else "FAILED")
    finally:
        server.close()
        for conn in held:
            conn.close()


@fault("rule plugins")
def rule_plugins(work: Path) -> Row:
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--no-build-isolation", "--target", str(site), str(TESTS / "plugins" / "team_rules")],
                   check=True, capture_output=True, timeout=300)
    rules = "".join(f'\n[[rules]]\nuse = "{use}"\ntimeout_s = 2\n' for use in ("busy_loops", "exits", "hangs", "always_raises"))
    rules += '\n[[rules]]\nuse = "slo_breach"\nparams = { last = 1, actions = ["alert"] }\n'
    config, port = write_config(work, model_toml("fast", "3s", slo={"latency_ms_p50": 1e-6}), extra=rules)
    daemon = Daemon(config, port, env={"PYTHONPATH": str(site)})
    url = f"sqlite:///{work / 'runs.db'}"
    wait_for(lambda: len(stored(url, "fast")) >= 4, 120)
    alive = daemon.proc.poll() is None
    time.sleep(1)
    busy = [p for p in descendants_alive(daemon.proc.pid) if cpu_percent(p) > 50]
    daemon_cpu = cpu_percent(psutil.Process(daemon.proc.pid)) if alive else 0.0
    engine = create_engine(url)
    with engine.connect() as conn:
        outcomes = dict(conn.execute(text("SELECT rule, outcome FROM rule_events")).all())
    engine.dispose()
    code, _ = daemon.stop()
    ok = alive and not busy and code == 0 and outcomes.get("slo_breach") == "alert"
    return Row("Rule plugins that busy-loop, call os._exit, hang and raise",
               f"daemon alive: {'yes' if alive else 'NO'}, {len(stored(url, 'fast'))} runs; processes spinning "
               f"afterwards: {len(busy)}; daemon CPU {daemon_cpu:.0f} %; recorded: "
               + ", ".join(f"{r} {o}" for r, o in sorted(outcomes.items())), "-", "survived" if ok else "FAILED")


@fault("hostile http")
def hostile_http(work: Path) -> Row:
    config, port = write_config(work, model_toml("fast", "1h"))
    daemon = Daemon(config, port)
    wait_for(lambda: daemon.get("/healthz")[0] == 200, 60)
    null_byte = daemon.get("/index.html%00.png")[0]
    traversal = daemon.get("/../../etc/passwd")[0]
    idle = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", port))
        idle.append(s)
    time.sleep(1)
    threads = psutil.Process(daemon.proc.pid).num_threads()
    began = time.monotonic()
    status = daemon.get("/healthz")[0]  # 503 busy while every slot is held
    answer_ms = 1000 * (time.monotonic() - began)
    for s in idle:
        s.close()
    after = wait_for(lambda: daemon.get("/healthz")[0] == 200, 30)
    code, _ = daemon.stop()
    trace = any("Traceback" in m for m in daemon.messages())
    bounded = threads <= MAX_CONNECTIONS + 40  # the handlers, plus the daemon's own threads
    ok = null_byte in (400, 404) and traversal in (400, 404) and bounded and after and not trace and code == 0
    return Row("Hostile HTTP: a null byte, a traversal, 300 idle sockets",
               f"null byte {null_byte}, traversal {traversal}; with 300 idle sockets: {threads} threads, /healthz "
               f"{status} in {answer_ms:.0f} ms, 200 again once they closed: {'yes' if after else 'NO'}; "
               f"traceback in the log: {'YES' if trace else 'no'}", "-",
               "survived" if ok else "FAILED")


@fault("orphans")
def orphans(work: Path) -> Row:
    pid_file = work / "detached.pid"
    config, port = write_config(work, model_toml("detached", "1h", factory="workloads:spawns_detached"))
    daemon = Daemon(config, port, env={"PERFGUARD_TEST_CHILD_PID_FILE": str(pid_file)})
    url = f"sqlite:///{work / 'runs.db'}"
    wait_for(lambda: len(stored(url)) >= 1, 120)
    detached = int(pid_file.read_text()) if pid_file.exists() else None
    survived = detached is not None and wait_for(lambda: not psutil.pid_exists(detached), 5) is False
    alive = daemon.proc.poll() is None
    code, _ = daemon.stop()
    ok = detached is not None and not survived and alive and code == 0
    return Row("A factory that leaves a process in a session of its own",
               f"the detached process: {'LEFT RUNNING' if survived else 'killed with the worker'}; the daemon "
               f"alive: {'yes' if alive else 'NO'}", "-", "survived" if ok else "FAILED")


@fault("corrupt sqlite")
def corrupt_sqlite(work: Path) -> Row:
    config, _ = write_config(work, model_toml("fast", "1h"))
    db = work / "runs.db"
    db.write_bytes(b"this is not a database" * 100)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    done = subprocess.run([PERFGUARD, "daemon", "--config", str(config)], capture_output=True, text=True, timeout=60)
    untouched = hashlib.sha256(db.read_bytes()).hexdigest() == digest
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    ok = done.returncode == 2 and "Traceback" not in done.stderr and untouched
    return Row("Daemon on a corrupt SQLite file", f"exit {done.returncode}, {len(lines)} line(s): "
               f"{(lines[-1] if lines else '')[:90]}; file untouched: {'yes' if untouched else 'NO'}",
               "0 (nothing written)", "survived" if ok else "FAILED")


SUITE_REPLAYS = [
    ("Crash between storing a spooled run and deleting its file",
     "tests/test_spool_faults.py::test_a_flush_that_died_before_its_unlink_does_not_store_the_run_twice"),
    ("Spool files half-written by a crash", "tests/test_spool_faults.py::test_temporary_files_left_by_a_crash_are_removed_and_complete_runs_kept"),
    ("A Celery worker SIGKILLed mid-benchmark", "tests/test_fleet.py::test_a_worker_killed_mid_benchmark_has_its_job_redelivered_and_each_series_stored_once"),
    ("The broker away while the daemon enqueues", "tests/test_fleet.py::test_a_dead_broker_keeps_the_daemon_up_and_its_run_waits_until_the_broker_returns"),
    ("A config edit that is invalid, then a valid one", "tests/test_daemon.py::test_a_changed_config_file_is_reloaded_and_a_bad_one_refused"),
    ("Tampered weights of the active variant", "tests/test_actions_storage.py::test_damaged_weights_of_the_active_variant_roll_it_back_with_an_alertable_action"),
    ("A factory that allocates without bound (no memory_limit_mb)",
     "tests/test_harness.py::test_a_model_without_a_memory_limit_gets_the_hosts_default"),
    ("A tampered reference", "tests/test_attribution.py::test_a_damaged_reference_is_not_tried_again_and_is_frozen_anew_at_the_next_stable_point"),
    ("Mail server down, then back; a permanent refusal", "tests/test_report_email.py::test_an_undeliverable_alert_is_recorded_kept_on_disk_and_sent_on_a_later_pass tests/test_report_email.py::test_a_permanent_refusal_is_not_sent_again_on_later_passes"),
    ("SIGKILL of the daemon, then a restart", "tests/test_daemon.py::test_after_kill_9_a_restart_runs_each_missed_model_once"),
]


def replay_suite(name: str, nodes: str) -> Row:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nodes.split()], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PERFGUARD_TEST_PG_URL": PG_URL})
    summary = (done.stdout.strip().splitlines() or ["?"])[-1]
    return Row(name, f"replayed by {', '.join(n.split('::')[1] for n in nodes.split())}: {summary} "
               f"({time.monotonic() - began:.0f} s)", "0" if done.returncode == 0 else "see the test",
               "survived" if done.returncode == 0 else "FAILED")


def main(words: list[str]) -> int:
    rows = []
    selected = [(n, f) for n, f in FAULTS if not words or any(w in n for w in words)]
    for name, fn in selected:
        folder = Path(tempfile.mkdtemp(prefix="perfguard-fault-"))
        began = time.monotonic()
        try:
            row = fn(folder)
        except Exception as exc:  # noqa: BLE001 - a fault the script could not replay is a row, not a crash
            row = Row(name, f"the replay itself failed: {type(exc).__name__}: {exc}", "?", "FAILED")
        print(f"{name}: {row.verdict} ({time.monotonic() - began:.0f} s)", file=sys.stderr, flush=True)
        if row.verdict == "FAILED":
            print(f"  its folder (daemon logs, database) is kept: {folder}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        rows.append(row)
    for name, nodes in SUITE_REPLAYS:
        if not words or any(w in name.lower() for w in words):
            rows.append(replay_suite(name, nodes))
            print(f"{name}: {rows[-1].verdict}", file=sys.stderr, flush=True)
    print("| fault | observed | runs lost | verdict |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row.fault} | {row.observed} | {row.lost} | {row.verdict} |")
    return 0 if all(r.verdict in ("survived", "not run") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
