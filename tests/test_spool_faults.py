"""A full disk takes no run: what neither the database nor the spool can take is held in memory, said
on /healthz, and stored once there is room; the spool leaves no temporary files; a run stored twice
(a crash between a flush's commit and its unlink) is stored once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from monitor.service.spool import RunSpool
from storage import queries
from storage.db import Database
from tests.storage_helpers import full_record

TESTS = Path(__file__).resolve().parent

# Runs in a process of its own: a file-size limit there makes every write past 64 KiB fail with EFBIG,
# as a full disk would (ENOSPC), without touching this process's own files.
FULL_DISK = textwrap.dedent("""
    import dataclasses, json, resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from monitor.service.spool import RunSpool
    from storage.db import Database
    from storage_helpers import full_record

    folder = sys.argv[1]
    db = Database.open(f"sqlite:///{folder}/runs.db")
    spool = RunSpool(__import__("pathlib").Path(folder) / "spool")
    record = dataclasses.replace(full_record("m", batch_size=8), samples_ms=[0.5] * 50_000)  # too large for the limit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    spool.store(db, record)
    held = [r.model for r in spool.held]
    leftovers = [p.name for p in spool.folder.iterdir()]
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
    stored = spool.flush(db)
    print(json.dumps({"held": held, "leftovers": leftovers,
                      "stored": [r.run_id for r in stored], "held_after": len(spool.held)}))
""")


def test_a_run_that_fits_nowhere_is_held_in_memory_and_stored_when_there_is_room(tmp_path: Path):
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path), str(TESTS)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["held"] == ["m"], done.stderr[-3000:]
    assert result["leftovers"] == [], "a failed spool write left a file behind"
    assert len(result["stored"]) == 1 and result["held_after"] == 0
    assert "held in memory" in done.stderr
    with Database.open(f"sqlite:///{tmp_path}/runs.db") as db:
        [run] = queries.history(db, "m", limit=10, with_samples=True)
    assert len(run.samples_ms) == 50_000


def test_temporary_files_left_by_a_crash_are_removed_and_complete_runs_kept(tmp_path: Path):
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / ".00000000000000000001-abcd.json.tmp").write_text("")
    spool = RunSpool(folder)
    spool.add(full_record("m"))
    assert [p.suffix for p in folder.iterdir()] == [".json"]


def test_a_flush_that_died_before_its_unlink_does_not_store_the_run_twice(tmp_path: Path):
    spool = RunSpool(tmp_path / "spool")
    spool.add(full_record("m", batch_size=8))
    [path] = spool.files()
    copy = path.read_text()
    with Database.open(f"sqlite:///{tmp_path}/runs.db") as db:
        assert len(spool.flush(db)) == 1
        path.write_text(copy)  # as if the process died between the commit and the unlink
        assert spool.flush(db) and spool.files() == []
        assert len(queries.history(db, "m", limit=10)) == 1


def test_runs_still_held_at_the_stop_are_rescued_and_stored_at_the_next_start(tmp_path: Path):
    """Held because the spool's disk is full (previous test): at the stop they go to another file
    system's rescue folder, which the next start flushes like the spool."""
    rescue = tmp_path / "rescue"
    spool = RunSpool(tmp_path / "spool", rescue=rescue)
    spool.held.append(full_record("m", batch_size=8))
    assert spool.rescue() == 0 and spool.held == []
    assert len(list(rescue.glob("*.json"))) == 1
    again = RunSpool(tmp_path / "spool", rescue=rescue)
    with Database.open(f"sqlite:///{tmp_path}/runs.db") as db:
        assert len(again.files()) == 1 and len(again.flush(db)) == 1
        assert again.files() == [] and len(queries.history(db, "m", limit=10)) == 1


def test_a_held_run_that_can_be_kept_nowhere_is_written_to_the_log_in_full(tmp_path: Path, caplog):
    (tmp_path / "not-a-folder").write_text("")
    spool = RunSpool(tmp_path / "spool", rescue=tmp_path / "not-a-folder" / "rescue")
    record = full_record("m", batch_size=8)
    spool.held.append(record)
    assert spool.rescue() == 1
    [line] = [r.getMessage() for r in caplog.records if "could be kept nowhere" in r.getMessage()]
    kept = json.loads(line.split("here it is, in full: ", 1)[1])
    assert kept["model"] == "m" and kept["batch_size"] == 8
