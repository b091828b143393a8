"""Drawing many charts into files: each named by its key and skipped when its file exists (the
bytes are deterministic), in a process pool when there are enough to pay for one (`render_many`);
the daemon keeps one pool for its life (`ChartDrawer`)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from reports.charts.render import render_chart
from reports.charts.spec import ChartSpec, Line

# render_many draws in a process pool only when there are more charts than this to draw: a spawned
# worker costs ~0.5 s of start-up (interpreter, numpy, matplotlib, fonts) against ~13 ms a chart,
# so on 2 cores the pool wins from about 40 charts in a fresh process and 75 in the daemon.
_POOL_THRESHOLD = 64
_CHUNK = 8  # charts per task handed to a drawing process


def render_many(specs: Mapping[str, ChartSpec], out_dir: Path, *, workers: int = 1) -> dict[str, str]:
    """Render every spec to `out_dir/<key>.png` unless that file exists; returns {name: file name}.

    Files are written atomically (a temporary name in `out_dir`, then `os.replace`), so the daemon's
    HTTP server never serves half a PNG.
    """
    with ChartDrawer(workers) as drawer:
        names = drawer.start(specs, out_dir)
        drawer.finish()
    return names


class ChartDrawer:
    """Draws charts into a folder: in this process and, when many are to be drawn, in `workers - 1`
    spawned processes too (spawn, not fork: the caller may be a multi-threaded daemon).

    `start` hands every chart to the other processes and returns at once, so the caller can write
    its pages meanwhile; `finish` then takes back the chunks nobody has begun, from the back of the
    queue (a pending future can be cancelled), draws them here, and waits for the rest. A spawned
    process needs about a second to start (interpreter, numpy, matplotlib, fonts): `warm_up()`
    starts them early, e.g. while the report's data is read, when many charts will be drawn.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.drawn = 0
        self._pool: ProcessPoolExecutor | None = None
        self._jobs: list[tuple[list[tuple[str, ChartSpec]], Future[int] | None]] = []
        self._queued: set[str] = set()
        self._out_dir = ""

    def __enter__(self) -> ChartDrawer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def warm_up(self) -> None:
        """Start the drawing processes now (each draws one tiny chart to load what it needs); once."""
        if self._pool is not None:
            return
        pool = self._ensure_pool()
        if pool is not None:
            for _ in range(self.workers - 1):
                pool.submit(_warm)

    def start(self, specs: Mapping[str, ChartSpec], out_dir: Path) -> dict[str, str]:
        """Queue the charts whose files are missing (after any queued before, into the same folder);
        {name: file name} for every spec. The other processes begin at once."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        names: dict[str, str] = {}
        todo: dict[str, ChartSpec] = {}  # by key: equal charts are drawn once
        for name, spec in specs.items():
            key = spec.key()
            file_name = f"{key}.png"
            names[name] = file_name
            if key not in todo and not _cached(out_dir / file_name):
                todo[key] = spec
        items = [(key, spec) for key, spec in todo.items() if key not in self._queued]
        self._queued.update(key for key, _ in items)
        self.drawn += len(items)
        if self._out_dir and self._out_dir != str(out_dir):
            raise ValueError(f"one ChartDrawer draws into one folder, {self._out_dir}, not {out_dir}")
        self._out_dir = str(out_dir)
        chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
        pool = self._ensure_pool() if len(items) > _POOL_THRESHOLD or self._pool is not None else None
        self._jobs += [(chunk, pool.submit(_render_chunk, chunk, self._out_dir) if pool else None) for chunk in chunks]
        return names

    def finish(self) -> None:
        """Draw here every chunk no other process has begun (from the back), then wait for the rest."""
        jobs, self._jobs = self._jobs, []
        taken = 0
        for chunk, future in reversed(jobs):
            if future is not None and not future.cancel():
                break  # this one and all before it are another process's
            _render_chunk(chunk, self._out_dir)
            taken += 1
        for _chunk, future in jobs[: len(jobs) - taken]:
            if future is not None:
                future.result()

    def _ensure_pool(self) -> ProcessPoolExecutor | None:
        if self.workers > 1 and self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers - 1, mp_context=context,
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))
        return self._pool


def _exit_with_parent(parent: int) -> None:
    """In a drawing process: exit once the process that started it is gone. A daemon killed with
    SIGKILL (or by the OOM killer) never shuts its pool down, and idle pool processes would
    otherwise wait for work forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="perfguard-parent-watch", daemon=True).start()


def _warm() -> int:
    render_chart(ChartSpec("", "", [datetime(2026, 1, 1, tzinfo=UTC)] * 2, [Line("", [0.0, 1.0])]))
    return 0


def _cached(path: Path) -> bool:
    # An empty file is what a crash between rename and writeback can leave on some file systems.
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _render_chunk(items: list[tuple[str, ChartSpec]], out_dir: str) -> int:
    for key, spec in items:
        write_atomic(Path(out_dir) / f"{key}.png", render_chart(spec))
    return len(items)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would force 0600 on a file the web server reads).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
