"""Shared fixtures: a real PostgreSQL database for the `postgres` tests, one fresh schema per test,
and `db_url` / `db`, which run a test once per storage backend (SQLite file, then PostgreSQL).

The server comes from PERFGUARD_TEST_PG_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test).
Without it the tests skip, except in CI (CI=true), where a missing database must fail the run rather
than let PostgreSQL support go untested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, make_url

from monitor.harness.worker_pool import WorkerPool
from storage.db import Database
from tests.suite_turn import suite_turn

PG_URL_ENV = "PERFGUARD_TEST_PG_URL"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`pytest -n auto` (as `make test` runs it): one test process per core that nothing else keeps
    busy. The timing tests hold on a host whose other core is busy, not on one where two test
    processes share a core with someone else's load, so a busy core costs a test process."""
    cores = os.cpu_count() or 1
    busy = psutil.cpu_percent(interval=1.0) / 100 * cores  # this process sleeps meanwhile
    return max(1, cores - round(busy))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `timing` tests last, in their usual order. Each runs alone (below), so one that comes up
    between the others makes the suite take turns: the other test process finishes its test while this
    one waits, then runs its next test alone while this one's next timing test waits. Last, they still
    run alone, one after another, but every other test has run two at a time before them."""
    items.sort(key=lambda item: item.get_closest_marker("timing") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Under pytest-xdist, a test marked `timing` runs while no other test process runs anything:
    the device locks keep two benchmarks apart, but not a benchmark from the other process's
    torch, compiler or database work, which moved a timed ratio by 30 % on two cores. The lock
    spans setup and teardown, so module fixtures built or torn down there are inside it too."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    folder = Path(item.config.option.basetemp).parent  # the controller's basetemp, shared by all
    with suite_turn(folder, alone=item.get_closest_marker("timing") is not None):
        yield


@pytest.fixture(scope="session", autouse=True)
def own_device_locks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite's benchmarks take device locks of their own: a daemon running on the same host
    neither waits for the tests nor makes them wait (workers and CLI subprocesses inherit this).
    Each parallel test process (pytest-xdist) has its own: the tests that time something run alone
    (`pytest_runtest_protocol` above), so a lock shared between test processes only kept one of
    them idle while the other benchmarked for a test that times nothing (a 4 s test took 30 s)."""
    before = os.environ.get("PERFGUARD_LOCK_DIR")
    own = tmp_path_factory.getbasetemp() / "device-locks"
    own.mkdir(exist_ok=True)
    os.environ["PERFGUARD_LOCK_DIR"] = str(own)
    yield
    if before is None:
        os.environ.pop("PERFGUARD_LOCK_DIR", None)
    else:
        os.environ["PERFGUARD_LOCK_DIR"] = before


@pytest.fixture(scope="session")
def workers() -> Iterator[WorkerPool]:
    """Warm workers for the tests that benchmark in-process, as the daemon and CLI commands use them
    (test_harness.py keeps the spawned path; test_worker_pool.py holds the two to each other)."""
    with WorkerPool() as pool:
        yield pool


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = os.environ.get(PG_URL_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PG_URL_ENV} is not set; CI must run the PostgreSQL tests")
        pytest.skip(f"{PG_URL_ENV} is not set")
    return url


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A URL whose connections see only a new, empty schema, dropped after the test.

    Sessions also run in a time zone far from UTC, so that tests prove times come back as UTC.
    """
    schema = f"perfguard_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        scoped = make_url(pg_url).update_query_dict(
            {"options": f"-csearch_path={schema} -ctimezone=Asia/Kolkata"}
        )
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on each backend: a SQLite file, then a PostgreSQL schema.

    The PostgreSQL case goes through `pg_schema_url`, so it skips or fails exactly as `pg_url` says.
    """
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_schema_url"))
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return f"sqlite:///{tmp_path / 'perfguard.db'}"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """`db_url`, opened (and so migrated to head); closed after the test."""
    db = Database.open(db_url)
    yield db
    db.close()


@pytest.fixture
def pg_db(pg_schema_url: str) -> Iterator[Database]:
    db = Database.open(pg_schema_url)
    yield db
    db.close()
