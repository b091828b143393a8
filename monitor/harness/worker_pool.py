"""Warm workers: a fork server per worker environment, so a run does not pay for importing torch.

A fresh worker interpreter spends most of its first seconds importing torch (2-3 s of CPU on the hosts
measured in bench/RESULTS.md), which on a two-core host is time taken from every other run. A
`WorkerPool` keeps one fork server per (environment, interpreter, installed packages): a
process started exactly as a worker would be (`worker_environment`, the allocator pins included, which
glibc reads once at start-up) that has imported torch and the worker code and then only forks. Each
run is still a process of its own, in a process group of its own, that runs the worker's `main` on the
runner's pipes and dies at its end; the fork server never runs a model, so no model's state reaches
another run.

The pool belongs to its caller (the daemon for its life, a CLI command for its own) and is closed by
it; a fork server exits, killing what it forked, when its pool closes or its owner dies. Installing
or upgrading a package changes a folder on sys.path, which retires the fork servers started before,
so an upgrade is measured as one at the next run, as with a fresh interpreter.

Only the parent side is here: it never imports torch (forkserver.py is the server's side).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

MAX_SERVERS = 4  # each holds an interpreter with torch imported (~250 MB resident)
START_TIMEOUT_S = 120.0  # importing torch on a loaded host
REPLY_TIMEOUT_S = 30.0
SPAWN_MESSAGE = b"spawn"
READY_MESSAGE = b"ready"
QUIT_MESSAGE = b"quit"


class ForkServerError(RuntimeError):
    """The fork server could not start or answer; the caller starts a fresh interpreter instead."""


@dataclass(frozen=True, slots=True)
class ServerKey:
    """What a fork server was started with: a worker forked from it starts as if spawned with these."""

    env: tuple[tuple[str, str], ...]
    cwd: str  # "" unless the environment names a path relative to it (see `server_folder`)
    executable: str
    packages: tuple[tuple[str, int], ...]  # (folder on sys.path, its mtime): an install changes one


def server_folder(env: dict[str, str], cwd: str) -> str:
    """The folder a server must start in: none in particular ("") as a worker moves to its own folder
    when forked, unless PYTHONPATH holds a relative entry, which the interpreter resolves once, at
    start-up, against the folder it started in."""
    entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]
    return cwd if any(not os.path.isabs(e) for e in entries) else ""


def packages_state(paths: list[str] | None = None) -> tuple[tuple[str, int], ...]:
    """The modification time of each folder on sys.path: pip adds and removes a `.dist-info` folder
    in site-packages for every install, upgrade or removal, so any of them changes this."""
    state = []
    for entry in paths if paths is not None else sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            continue
    return tuple(state)


class ForkedWorker:
    """A worker forked by a fork server, with the part of `subprocess.Popen`'s interface the runner
    uses: pid, stdin, stdout, poll(), wait(), returncode. Its exit status comes from the server, its
    parent, over a socket of its own."""

    def __init__(self, pid: int, status: socket.socket, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.stdout: IO[bytes] | None = stdout
        self.returncode: int | None = None
        self._status = status

    def poll(self) -> int | None:
        if self.returncode is None and _readable(self._status, 0):
            self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not _readable(self._status, timeout):
                raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout or 0.0)
            self._read_status()
        assert self.returncode is not None
        return self.returncode

    def _read_status(self) -> None:
        data = _read_line(self._status)
        self._status.close()
        # No status means the fork server died first; the worker follows it (it watches its parent).
        self.returncode = int(data) if data else -signal.SIGKILL


class _Server:
    """One fork server: its process and the socket it takes requests on (one message a request)."""

    def __init__(self, key: ServerKey) -> None:
        self.key = key
        self.lock = threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with tempfile.TemporaryFile() as stderr:
            try:
                self.process = subprocess.Popen(
                    [key.executable, "-m", "monitor.harness.forkserver", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    env=dict(key.env), cwd=key.cwd or None, pass_fds=[theirs.fileno()],
                    start_new_session=True,
                )
            finally:
                theirs.close()
            self.control = ours
            ready = _readable(ours, START_TIMEOUT_S) and ours.recv(64)
            if ready != READY_MESSAGE:
                self.close(wait_s=0)
                stderr.seek(0)
                tail = stderr.read().decode("utf-8", errors="replace").strip().splitlines()[-5:]
                raise ForkServerError("the fork server did not start: " + (" | ".join(tail) or "no output"))

    def fork(self, cwd: str, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> tuple[int, socket.socket]:
        """Have the server fork a worker in `cwd` on these descriptors: (its pid, the socket its exit
        status will arrive on)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.lock:
                socket.send_fds(self.control, [SPAWN_MESSAGE + b"\0" + os.fsencode(cwd)],
                                [theirs.fileno(), stdin_fd, stdout_fd, stderr_fd])
            pid = _read_line(ours) if _readable(ours, REPLY_TIMEOUT_S) else None
        except OSError as exc:
            ours.close()
            raise ForkServerError(f"the fork server is gone: {exc}") from exc
        finally:
            theirs.close()
        if not pid:
            ours.close()
            raise ForkServerError("the fork server did not answer" if pid is None else "the fork server is gone")
        return int(pid), ours

    def close(self, wait_s: float) -> None:
        """Ask the server to leave once its workers have ended; its socket closing without that
        request (its owner died) makes it kill them instead. Waits `wait_s` for it to exit."""
        try:
            with self.lock:
                self.control.send(QUIT_MESSAGE)
        except OSError:
            pass
        self.control.close()
        if wait_s:
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class WorkerPool:
    """Fork servers by what a worker starts with, at most MAX_SERVERS, the least recently used one
    retired first (its running workers finish first). Thread-safe; close it (or use it as a context
    manager) once no run is in flight."""

    def __init__(self, max_servers: int = MAX_SERVERS, watched_paths: list[str] | None = None) -> None:
        self.max_servers = max_servers
        self.watched_paths = watched_paths
        self.started = 0  # fork servers started, for logs and tests
        self.forked = 0
        self._servers: OrderedDict[ServerKey, _Server] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, env: dict[str, str], cwd: Path | None) -> tuple[ForkedWorker, IO[bytes]]:
        """Fork a worker for `env` and `cwd`: (the worker, the file its stderr goes to). Raises
        ForkServerError when no fork server can serve it (the caller spawns a fresh worker)."""
        folder = str(Path(cwd or ".").resolve())
        key = ServerKey(tuple(sorted(env.items())), server_folder(env, folder), sys.executable,
                        packages_state(self.watched_paths))
        server = self._server(key)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - returned with the worker, which closes it
        try:
            pid, status = server.fork(folder, stdin_r, stdout_w, stderr.fileno())
        except ForkServerError:
            for fd in (stdin_w, stdout_r):
                os.close(fd)
            stderr.close()
            self._retire(server)
            raise
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
        with self._lock:
            self.forked += 1
        return ForkedWorker(pid, status, os.fdopen(stdin_w, "wb"), os.fdopen(stdout_r, "rb")), stderr

    def _server(self, key: ServerKey) -> _Server:
        with self._lock:
            if self._closed:
                raise ForkServerError("the worker pool is closed")
            server = self._servers.get(key)
            if server is None:
                for other in [s for s in self._servers.values() if s.key.packages != key.packages]:
                    self._servers.pop(other.key).close(wait_s=0)  # started before an install
                while len(self._servers) >= self.max_servers:
                    self._servers.popitem(last=False)[1].close(wait_s=0)
                try:
                    server = _Server(key)  # under the lock: two threads never start the same server twice
                except OSError as exc:
                    raise ForkServerError(f"the fork server could not start: {exc}") from exc
                self._servers[key] = server
                self.started += 1
                log.debug("started a fork server (pid %d)", server.process.pid)
            self._servers.move_to_end(key)
            return server

    def _retire(self, server: _Server) -> None:
        with self._lock:
            if self._servers.get(server.key) is server:
                self._servers.pop(server.key)
        server.close(wait_s=0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            servers, self._servers = list(self._servers.values()), OrderedDict()
        for server in servers:
            server.close(wait_s=10)


def _readable(sock: socket.socket, timeout: float | None) -> bool:
    """Whether `sock` has data (or its end) within `timeout` seconds; poll(), unlike select(), takes
    any descriptor number, however many files a long-running daemon holds."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def _read_line(sock: socket.socket) -> str:
    """One short newline-ended message, read a byte at a time: a worker that dies at once has its exit
    status right behind its pid, which must stay for the next read. "" when the peer closed first."""
    data = b""
    while not data.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            return ""
        data += byte
    return data.decode().strip()
