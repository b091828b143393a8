"""The fork server's side of worker_pool.py: import torch and the worker once, then fork workers.

Started as `python -m monitor.harness.forkserver FD` with a worker's environment, it answers "ready"
on the control socket FD once torch is imported, then waits. Each request names a worker's folder and
carries four descriptors: a socket for the reply, and the worker's stdin, stdout and stderr. The
server forks; the child puts itself in a process group of its own, moves to that folder, takes those
descriptors as 0, 1 and 2, and runs the worker's `main` as `python -m monitor.harness.worker` started
there would. The server writes the child's pid on the reply socket, then its exit status (as
subprocess reports one: negative for a signal) once it has reaped it.

The server is single-threaded, so forking it is safe, and it never runs a model or a parallel torch
operation: a child starts with the state of a fresh worker that has just imported torch. Its memory
too: a forked child maps the shared libraries' pages lazily, so it would start ~60 MB below a fresh
worker's resident set and report a lower peak; it first touches every page the server has resident
(read once from /proc/self/pagemap), so a model's peak memory reads the same forked or spawned.

"quit" makes the server leave once its children have ended; its control socket closing without
"quit" means its owner died, and it kills its children's process groups and leaves at once.
"""

from __future__ import annotations

import ctypes
import os
import random
import selectors
import signal
import socket
import struct
import sys
import traceback

import torch  # noqa: F401 - imported once here, so that no forked worker imports it again

from monitor.harness import worker
from monitor.harness.worker_pool import QUIT_MESSAGE, READY_MESSAGE, SPAWN_MESSAGE

PAGE = os.sysconf("SC_PAGE_SIZE")
PR_SET_NAME = 15
WORKER_NAME = b"perfguard-work"  # what ps and top show for a forked worker (its command line is the server's)
SERVER_NAME = b"perfguard-fork"
PRESENT = 1 << 63  # a pagemap entry's "page present in RAM" bit, readable without privileges
TOUCH_CHUNK = 64 * 1024
MESSAGE_BYTES = 8192  # a request: its command and a folder path


def resident_ranges() -> list[tuple[int, int]]:
    """(start, length) of each run of this process's readable pages that are in RAM; [] where
    /proc/self/pagemap cannot be read."""
    ranges: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps", encoding="ascii") as maps, open("/proc/self/pagemap", "rb") as pagemap:
            for line in maps:
                fields = line.split()
                if not fields[1].startswith("r") or (len(fields) > 5 and fields[5].startswith("[v")):
                    continue  # unreadable, or the kernel's [vvar]/[vdso]/[vsyscall]
                low, high = (int(x, 16) for x in fields[0].split("-"))
                pagemap.seek(low // PAGE * 8)
                entries = pagemap.read((high - low) // PAGE * 8)
                run_start = None
                for index, (entry,) in enumerate(struct.iter_unpack("<Q", entries)):
                    address = low + index * PAGE
                    if entry & PRESENT and run_start is None:
                        run_start = address
                    elif not entry & PRESENT and run_start is not None:
                        ranges.append((run_start, address - run_start))
                        run_start = None
                if run_start is not None:
                    ranges.append((run_start, low + len(entries) // 8 * PAGE - run_start))
    except OSError:
        return []
    return ranges


def set_name(name: bytes) -> None:
    """The process name (15 bytes at most) that ps, top and psutil's name() show."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the name stays python's


def touch(ranges: list[tuple[int, int]]) -> None:
    """Read one chunk at a time of each range, so that each of its pages is mapped in this process."""
    scratch = ctypes.create_string_buffer(TOUCH_CHUNK)
    for start, length in ranges:
        for offset in range(0, length, TOUCH_CHUNK):
            ctypes.memmove(scratch, start + offset, min(TOUCH_CHUNK, length - offset))


def _child(control: socket.socket, wake: int, fds: list[int], cwd: str, resident: list[tuple[int, int]]) -> None:
    """In the forked child: become a worker on the runner's descriptors, never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        os.close(wake)
        reply, stdin, stdout, stderr = fds
        os.close(reply)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        random.seed()  # the server's generator state would repeat in every child
        os.chdir(cwd)
        sys.path[0] = cwd  # where `python -m` in that folder would look first
        set_name(WORKER_NAME)
        touch(resident)
        code = worker.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - before the worker's own handling: its stderr says why
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def serve(control: socket.socket) -> None:
    resident = resident_ranges()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    replies: dict[int, socket.socket] = {}
    quitting = False
    control.send(READY_MESSAGE)
    while not (quitting and not replies):
        for key, _ in selector.select():
            if key.fileobj is control:
                try:
                    message, fds, _flags, _addr = socket.recv_fds(control, MESSAGE_BYTES, 4)
                except OSError:
                    message, fds = b"", []
                command, _, argument = message.partition(b"\0")
                if command == SPAWN_MESSAGE and len(fds) == 4:
                    pid = os.fork()
                    if pid == 0:
                        selector.close()
                        for reply in replies.values():
                            reply.close()
                        _child(control, wake_r, fds, os.fsdecode(argument), resident)
                    try:
                        os.setpgid(pid, pid)  # also here: the runner may signal the group at once
                    except OSError:
                        pass  # the child did it first, or has already ended
                    reply = socket.socket(fileno=fds[0])
                    for fd in fds[1:]:
                        os.close(fd)
                    reply.sendall(f"{pid}\n".encode())
                    replies[pid] = reply
                elif command == QUIT_MESSAGE:
                    quitting = True
                    selector.unregister(control)
                elif not message:  # the owner is gone: nobody supervises the workers any more
                    for pid in replies:
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    return
            else:
                os.read(wake_r, 512)
                _reap(replies)


def _reap(replies: dict[int, socket.socket]) -> None:
    while replies:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = replies.pop(pid, None)
        if reply is not None:
            try:
                reply.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass  # the runner stopped listening; nothing else needs the status
            reply.close()


def main() -> None:
    set_name(SERVER_NAME)
    serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()
