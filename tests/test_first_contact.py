"""What a newcomer meets in the first minutes, and a bad day's inputs: every command answers in one line
with a documented exit code, never a traceback; nothing is created where a path is misspelt."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
from cli_helpers import free_port, perfguard, tiny_model, write_config
from click.testing import CliRunner, Result
from storage_helpers import full_record

from monitor.cli import main
from monitor.core.import_paths import missing
from monitor.core.runs import RunRecord
from monitor.user_errors import EXIT_UNREACHABLE, EXIT_USAGE, explain
from storage import queries
from storage.db import Database, DatabaseNotFound

DOWN_URL = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # nothing listens on port 1

# Every command, as a user types it (the config is added). Those that benchmark are left out where
# the config is the starter one: they would train the example CNN.
COMMANDS: dict[str, list[str]] = {
    "models": ["models"],
    "status": ["status"],
    "history": ["history", "m"],
    "check": ["check"],
    "actions": ["actions"],
    "actions-unknown": ["actions", "nosuch"],
    "report": ["report"],
    "baseline": ["baseline", "accept", "m"],
    "rollback": ["rollback", "m"],
    "rules": ["rules"],
    "db-upgrade": ["db", "upgrade"],
    "optimize-list": ["optimize", "--list"],
    "optimize": ["optimize", "m"],
    "run": ["run"],
    "daemon": ["daemon"],
    "worker": ["worker", "--queue", "cpu"],
}
BENCHMARKING = {"optimize", "run", "daemon"}
# What each command reading or writing the database must answer when it cannot.
NEEDS_DATABASE = {"models", "status", "history", "check", "actions", "actions-unknown", "report", "baseline",
                  "rollback", "db-upgrade", "optimize", "run", "daemon"}


def invoke(args: list[str], config: Path) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config)])


def assert_one_clean_line(result: Result) -> None:
    """No traceback, and an error (if any) said on stderr in a line or two that start with 'error'."""
    text = result.output
    assert "Traceback" not in text and 'File "' not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2, EXIT_UNREACHABLE), result.exit_code
    if result.exit_code:
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert errors and any(line.lower().startswith(("error", "usage")) for line in errors), result.stderr


def starter(folder: Path, model: str) -> Path:
    """A fresh `perfguard init` config in `folder`, the argument `m` standing for its first model."""
    config = folder / "perfguard.toml"
    assert CliRunner().invoke(main, ["init", "--config", str(config)]).exit_code == 0
    return config


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_in_an_empty_folder_says_the_config_is_missing(tmp_path: Path, command: str):
    result = invoke(COMMANDS[command], tmp_path / "perfguard.toml")
    assert_one_clean_line(result)
    if command == "optimize-list":
        assert result.exit_code == 0
    else:
        assert result.exit_code == EXIT_USAGE and "perfguard init" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - BENCHMARKING))
def test_every_command_right_after_init_answers_without_a_traceback(tmp_path: Path, command: str):
    config = starter(tmp_path, "seed-cnn")
    args = ["seed-cnn" if a == "m" else a for a in COMMANDS[command]]
    result = invoke(args, config)
    assert_one_clean_line(result)
    if command in ("models", "status", "history", "check", "actions", "rules", "db-upgrade", "optimize-list"):
        assert result.exit_code == 0, result.output
    elif command == "actions-unknown":
        assert result.exit_code == EXIT_USAGE and "unknown model 'nosuch'" in result.stderr
    elif command == "worker":
        assert result.exit_code == EXIT_USAGE
    elif command == "rollback":
        assert result.exit_code == EXIT_USAGE and "nothing to roll back" in result.stderr, result.stderr
    else:  # report, baseline: nothing stored yet, and they say so
        assert result.exit_code == EXIT_USAGE and "nothing has been stored" in result.stderr, result.stderr
    if command in ("models", "status", "history", "actions", "actions-unknown", "report", "baseline", "rollback"):
        assert not (tmp_path / "perfguard.db").exists(), "a command that only reads made a database"


def listen_here() -> str:
    return f'\n[daemon]\nlisten = "127.0.0.1:{free_port()}"\n'


# The daemon is left out: it waits for its database (tested in test_daemon.py).
@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"daemon"}))
def test_every_command_with_the_database_down_says_it_cannot_reach_it(tmp_path: Path, command: str):
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m")], storage_url=DOWN_URL)
    result = invoke(COMMANDS[command], config)
    assert_one_clean_line(result)
    if command in NEEDS_DATABASE:
        assert result.exit_code == EXIT_UNREACHABLE, result.output
        assert "cannot reach the database" in result.stderr and "sqlalche.me" not in result.stderr
    elif command != "worker":
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", sorted(NEEDS_DATABASE))
def test_every_command_on_a_garbage_database_file_names_it_damaged(tmp_path: Path, command: str):
    (tmp_path / "perfguard.db").write_bytes(b"this is not a database, it only has its name" * 100)
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m")], extra=listen_here())
    if command == "daemon":  # its own process: it installs signal handlers
        done = perfguard(*COMMANDS[command], config=config, timeout=60)
        code, stderr, output = done.returncode, done.stderr, done.stdout + done.stderr
    else:
        result = invoke(COMMANDS[command], config)
        assert_one_clean_line(result)
        code, stderr, output = result.exit_code, result.stderr, result.output
    assert "Traceback" not in output
    assert code == EXIT_USAGE and "damaged" in stderr, output
    assert (tmp_path / "perfguard.db").read_bytes().startswith(b"this is not a database"), "the file was touched"


def stored(url: str, records: list[RunRecord]) -> None:
    with Database.open(url) as db:
        queries.save_runs(db, records)


def test_a_database_damaged_mid_file_is_reported_by_the_real_command(tmp_path: Path):
    path = tmp_path / "perfguard.db"
    stored(f"sqlite:///{path}", [full_record("m", minute=i, batch_size=8) for i in range(200)])
    data = bytearray(path.read_bytes())
    assert len(data) > 16 * 4096
    middle = len(data) // 2 // 4096 * 4096
    data[middle: middle + 6 * 4096] = b"\xa5" * (6 * 4096)  # run pages in the middle: the header still reads
    path.write_bytes(bytes(data))
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m")])
    for args in (["history", "m", "--limit", "500"], ["check", "--no-confirm", "--no-rules"]):
        result = perfguard(*args, config=config)
        assert "Traceback" not in result.stderr, str(result)
        assert result.returncode == EXIT_USAGE and "damaged" in result.stderr, str(result)


def test_a_misspelt_folder_is_named_by_commands_that_read_and_never_created_by_them(tmp_path: Path):
    wrong = tmp_path / "stat" / "perfguard.db"  # meant: tmp_path / "state"
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m")], storage_url=f"sqlite:///{wrong}")
    for args in (["status"], ["history", "m"], ["actions"], ["report"], ["baseline", "accept", "m"]):
        result = invoke(args, config)
        assert_one_clean_line(result)
        assert result.exit_code == EXIT_USAGE and f"{wrong.parent} does not exist" in result.stderr, result.output
    assert not wrong.parent.exists()
    with pytest.raises(DatabaseNotFound):
        Database.open(f"sqlite:///{wrong}", create=False)


def test_check_right_after_init_freezes_nothing_and_a_failing_model_is_not_frozen(tmp_path: Path):
    """No reference is frozen from a series without a successful run: a factory that always fails
    would otherwise cost a worker and a logged traceback on every check."""
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m", factory="workloads:raises")])
    failed = dataclasses.replace(full_record("m", batch_size=8), status="failed", error="RuntimeError: boom", flags=[])
    stored(f"sqlite:///{tmp_path / 'perfguard.db'}", [failed])
    result = perfguard("check", "--json", config=config)
    assert result.returncode == 0, str(result)
    assert result.json()["findings"] == []
    assert "Traceback" not in result.stderr and "boom" not in result.stderr
    assert not (tmp_path / "perfguard-artifacts").exists()


def test_a_misspelt_factory_is_refused_with_the_config(tmp_path: Path):
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m", factory="workloads:tinny"),
                                                        tiny_model("n", factory="workload:tiny")])
    result = invoke(["models"], config)
    assert result.exit_code == EXIT_USAGE
    assert "models[0].factory (model \"m\"): module 'workloads'" in result.stderr and "no 'tinny'" in result.stderr
    assert "models[1].factory (model \"n\"): no module named 'workload'" in result.stderr


def test_import_paths_are_found_without_running_the_module(tmp_path: Path):
    package = tmp_path / "teampkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('a package __init__ must not run')\n")
    (package / "models.py").write_text(
        "import torch as _t\nif True:\n    def build():\n        pass\nelse:\n    other = 1\n"
        "try:\n    from x import y as fallback\nexcept ImportError:\n    fallback = None\n"
    )
    (package / "star.py").write_text("from os.path import *\n")
    search = [str(tmp_path)]
    assert missing("teampkg.models:build", search) is None
    assert missing("teampkg.models:other", search) is None
    assert missing("teampkg.models:fallback", search) is None
    assert "defines no 'buld'" in (missing("teampkg.models:buld", search) or "")
    assert "no module named 'teampkg.modles'" in (missing("teampkg.modles:build", search) or "")
    assert missing("teampkg.star:anything", search) is None  # `import *`: the worker will say
    assert missing("monitor.examples.models:seed_cnn", []) is None  # an installed package


def test_a_missing_extra_names_what_to_install():
    problem = explain(ModuleNotFoundError("No module named 'celery'", name="celery"))
    assert problem.code == EXIT_USAGE
    assert "pip install 'perfguard[fleet]'" in problem.message and 'kind = "celery"' in problem.message


def test_optimize_list_needs_no_model_and_optimize_without_one_says_what_is_missing(tmp_path: Path):
    listed = CliRunner().invoke(main, ["optimize", "--list"])
    assert listed.exit_code == 0 and "dynamic_int8" in listed.output
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m")])
    result = invoke(["optimize"], config)
    assert result.exit_code == EXIT_USAGE and "MODEL" in result.stderr and "--list" in result.stderr


def test_baseline_accept_on_busy_host_runs_says_so(tmp_path: Path):
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m")])
    busy = [full_record("m", minute=i, batch_size=8) for i in range(3)]  # flagged contended
    stored(f"sqlite:///{tmp_path / 'perfguard.db'}", busy)
    result = invoke(["baseline", "accept", "m"], config)
    assert result.exit_code != 0
    assert "busy host (3 contended" in result.stderr, result.output
    unknown = invoke(["baseline", "accept", "nosuch"], config)
    assert unknown.exit_code != 0 and "busy host" not in unknown.stderr


def test_sqlite_is_not_created_by_open_without_create(tmp_path: Path):
    with pytest.raises(DatabaseNotFound, match="nothing has been stored"):
        Database.open(f"sqlite:///{tmp_path / 'none.db'}", create=False)
    assert not (tmp_path / "none.db").exists()
    with sqlite3.connect(tmp_path / "made.db"):
        pass
    Database.open(f"sqlite:///{tmp_path / 'made.db'}", create=False).close()
