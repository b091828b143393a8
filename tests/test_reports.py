"""The static HTML report: the fleet overview and model pages from a real database, opened from disk."""

from __future__ import annotations

import dataclasses
import html.parser
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from monitor.optimize.train_amp import StepVerdict, record_advice
from monitor.service.reporting import gather_report, write_report
from reports.data import gather
from reports.figures import latency_chart
from reports.render import page_name, write_site
from storage.db import Database
from tests.report_helpers import history_runs, make_fleet, report_config, seed

EVIL = "<script>alert(1)</script>"


class Links(html.parser.HTMLParser):
    """Every href and src of a page, and whether a <script> element appears."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.alts: list[str | None] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for name in ("href", "src"):
            if found.get(name):
                self.refs.append(found[name] or "")
        if tag == "img":
            self.alts.append(found.get("alt"))


def parse(path: Path) -> Links:
    links = Links()
    links.feed(path.read_text(encoding="utf-8"))
    return links


def local_targets_exist(page: Path) -> list[str]:
    """The relative links and images of `page` that do not resolve to a file."""
    missing = []
    for ref in parse(page).refs:
        if re.match(r"^[a-z]+:", ref) or ref.startswith("#"):
            continue
        if not (page.parent / ref.split("#")[0]).resolve().is_file():
            missing.append(ref)
    return missing


@pytest.fixture
def fleet(tmp_path: Path):
    loaded, db = make_fleet(tmp_path)
    yield loaded, db
    db.close()


def test_the_site_has_an_overview_and_a_page_per_model_that_open_from_disk(fleet) -> None:
    loaded, db = fleet
    site = write_report(db, loaded)
    assert site.index == loaded.base_dir / "site" / "index.html"
    assert set(site.pages) == {"seed-cnn", "mlp", "broken"}
    for page in [site.index, *site.pages.values()]:
        assert local_targets_exist(page) == [], page
        links = parse(page)
        assert links.scripts == 0
        assert all(alt for alt in links.alts), f"an image without alt text on {page}"
    index = site.index.read_text()
    # Worst first: the failing model, then the regressed one, then the healthy one.
    assert index.index("broken") < index.index("seed-cnn") < index.index(">mlp<")
    assert "pill-failing" in index and "pill-regressed" in index and "pill-ok" in index
    assert "+25" in index or "+24" in index or "+26" in index  # seed-cnn's p50 against its baseline


def test_a_model_page_shows_charts_findings_actions_env_changes_and_failed_runs(fleet) -> None:
    from tests.report_helpers import rejected_action

    loaded, db = fleet
    rejected_action(db, "seed-cnn", recipe="onnx_int8_static")
    bf16 = StepVerdict("amp_bf16", "bf16", 2.0, 4.0, 0.5, (0.45, 0.55), [2.0, 1.2], [2.0, 1.2], accepted=True)
    record_advice(db, loaded, "seed-cnn", [bf16])
    site = write_report(db, loaded)
    page = site.pages["seed-cnn"].read_text()
    # Training-step advice: stored and shown like an action, promoting nothing.
    assert "training step of baseline: advice, nothing promoted" in page and "worth switching" in page
    assert 'set train.amp = "bf16"' in page or "set train.amp = &#34;bf16&#34;" in page
    for chart in ("Latency, baseline on cpu, batch 8", "Peak memory", "Throughput", "Accuracy"):
        assert chart in page
    assert "latency_ms_p50" in page and "regression" in page  # the open finding
    assert "torch" in page and "2.12.1+cpu → 2.13.0+cpu" in page  # the environment change
    assert "dynamic_int8" in page and "refused" in page and "0.9700 → 0.9000" in page  # the action's table
    assert 'onnx_int8_static <span class="muted">on onnxruntime</span>' in page  # a candidate on another runtime
    assert "dynamic_int8 <span" not in page  # torch, the default, goes unsaid
    assert "RuntimeError: CUDA error: out of memory" in page  # the failed run, with its error
    assert "the numbers" in page  # every chart has its table fallback
    images = [ref for ref in parse(site.pages["seed-cnn"]).refs if ref.endswith(".png")]
    assert len(images) >= 4
    for ref in images:
        with Image.open(site.pages["seed-cnn"].parent / ref) as image:
            assert image.format == "PNG" and image.width >= 100


def test_a_refresh_draws_only_changed_charts_and_removes_stale_files(fleet) -> None:
    loaded, db = fleet
    first = write_report(db, loaded)
    assert first.drawn == first.charts > 0
    again = write_report(db, loaded)
    assert again.drawn == 0  # nothing changed
    seed(db, loaded, history_runs("mlp", 1, seed=9, start=datetime.now(UTC)))
    third = write_report(db, loaded)
    assert 0 < third.drawn < third.charts  # only the mlp's charts
    images = {p.name for p in (loaded.base_dir / "site" / "img").iterdir()}
    referenced = set()
    for page in [third.index, *third.pages.values()]:
        referenced |= {Path(ref).name for ref in parse(page).refs if ref.endswith(".png")}
    assert images == referenced  # the mlp's old charts are gone


def test_hostile_names_and_errors_are_escaped_everywhere(tmp_path: Path) -> None:
    """The config only takes plain model names, but the database can hold others (runs from another
    host or an older tool), and error texts are whatever an exception said."""
    loaded = report_config(tmp_path, [{"name": "plain"}])
    with Database.open(loaded.storage_url()) as db:
        runs = history_runs(EVIL, 30, step_at=20, failed=(25,))
        runs[25] = dataclasses.replace(runs[25], error=f"ValueError: {EVIL}")
        seed(db, loaded, [*runs, *history_runs("plain", 5)])
        site = write_report(db, loaded)
    assert set(site.pages) == {EVIL, "plain"}
    for page in [site.index, *site.pages.values()]:
        assert EVIL not in page.read_text() and parse(page).scripts == 0
    for page in (site.index, site.pages[EVIL]):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.read_text()
    assert "ValueError: &lt;script&gt;" in site.pages[EVIL].read_text()
    assert "Not in the config" in site.pages[EVIL].read_text() and "(not in the config)" in site.index.read_text()
    assert re.fullmatch(r"script-alert-1-script-[0-9a-f]{8}\.html", site.pages[EVIL].name)
    assert site.pages[EVIL].name == page_name(EVIL)


def test_no_models_and_a_model_without_runs_render(tmp_path: Path) -> None:
    loaded = report_config(tmp_path, [])
    with Database.open(loaded.storage_url()) as db:
        site = write_report(db, loaded)
    assert "No models are registered yet" in site.index.read_text()
    loaded = report_config(tmp_path, [{"name": "fresh"}])
    with Database.open(loaded.storage_url()) as db:
        site = write_report(db, loaded)
    assert "no runs yet" in site.index.read_text() and "No runs yet" in site.pages["fresh"].read_text()


def test_a_model_with_only_failed_runs_is_failing_with_its_error(tmp_path: Path) -> None:
    loaded = report_config(tmp_path, [{"name": "broken"}])
    with Database.open(loaded.storage_url()) as db:
        seed(db, loaded, history_runs("broken", 3, failed=(0, 1, 2)))
        report = gather(db, [m for m in _reported(loaded)])
        site = write_site(report, tmp_path / "out")
    [view] = report.models
    assert view.status == "failing" and "out of memory" in view.status_reason
    assert "out of memory" in site.pages["broken"].read_text()


@pytest.mark.slow
def test_thousands_of_runs_render_with_their_history_bounded(tmp_path: Path) -> None:
    loaded = report_config(tmp_path, [{"name": "busy"}], extra="")
    with Database.open(loaded.storage_url()) as db:
        seed(db, loaded, history_runs("busy", 3000, step_at=2500, failed=(100, 2900)))
        report = gather(db, _reported(loaded), per_series=1000)
        site = write_site(report, tmp_path / "out")
    [view] = report.models
    assert len(view.series[0].runs) == 1000  # the window, newest runs
    assert len(view.recent_runs) == 50
    assert view.status == "failing" or view.status == "regressed"
    assert site.charts >= 3 and (tmp_path / "out" / "index.html").stat().st_size < 200_000


def _reported(loaded):
    from monitor.service.reporting import reported_models

    return reported_models(loaded)


def test_the_report_reads_the_same_on_every_backend(db_url: str, tmp_path: Path) -> None:
    """SQLite and PostgreSQL (in a far time zone): the same runs, times in UTC, flags, per-series limit,
    and notifications claimed once."""
    from datetime import timedelta

    from storage.notifications import Claim, claim, finish, notifications
    from storage.trends import recent_runs
    from tests.report_helpers import START
    from tests.storage_helpers import saved

    runs = history_runs("m", 12, failed=(3,)) + history_runs("m", 5, batch_size=32, start=START + timedelta(seconds=1))
    runs[4] = dataclasses.replace(runs[4], flags=["contended"])
    with Database.open(db_url) as db:
        runs = saved(db, runs)
        [got] = recent_runs(db, ["m"], per_series=10).values()
        assert len(got) == 15  # 10 of batch 8, all 5 of batch 32
        assert got == sorted(got, key=lambda r: r.started_at)
        first8 = next(r for r in got if r.key.batch_size == 8)
        assert first8.started_at == runs[2].started_at and first8.started_at.utcoffset() == timedelta(0)
        assert next(r for r in got if r.run_id == runs[4].run_id).flags == ("contended",)
        assert next(r for r in got if r.run_id == runs[3].run_id).error.endswith("out of memory")
        now = START + timedelta(days=1)
        wanted = [Claim("finding:1", "a@example.com", "s", "m"), Claim("finding:1", "b@example.com", "s", "m")]
        first = claim(db, "alert", wanted, now)
        assert [n.recipient for n in sorted(first, key=lambda n: n.recipient)] == ["a@example.com", "b@example.com"]
        assert claim(db, "alert", wanted, now) == []  # taken: pending, and not stale
        finish(db, [n.id for n in first if n.recipient == "a@example.com"], ok=True, attempts=1, error=None, now=now)
        finish(db, [n.id for n in first if n.recipient == "b@example.com"], ok=False, attempts=3, error="down", now=now)
        [again] = claim(db, "alert", wanted, now + timedelta(minutes=1))  # only the failed one, once more
        assert again.recipient == "b@example.com" and again.passes == 2 and again.attempts == 3
        stale = claim(db, "alert", wanted, now + timedelta(hours=1))  # its sender died: taken over
        assert [n.recipient for n in stale] == ["b@example.com"] and stale[0].passes == 3
        assert {n.status for n in notifications(db)} == {"sent", "pending"}


def test_the_daemons_refresh_after_one_model_rewrites_only_its_page_and_the_index(fleet) -> None:
    from monitor.service.reporting import ReportKeeper

    loaded, db = fleet
    keeper = ReportKeeper()
    full = keeper.refresh(db, loaded)
    assert full is not None and set(full.pages) == {"seed-cnn", "mlp", "broken"}
    before = {name: path.stat().st_mtime_ns for name, path in full.pages.items()}
    index_before = full.index.read_text()
    [new] = history_runs("mlp", 1, seed=3, start=datetime.now(UTC), level=3.0)
    [new] = seed(db, loaded, [new])
    part = keeper.refresh(db, loaded, "mlp")
    assert part is not None and set(part.pages) == {"mlp"} and 0 < part.drawn <= 4
    assert {n: p.stat().st_mtime_ns for n, p in full.pages.items() if n != "mlp"} == {
        n: t for n, t in before.items() if n != "mlp"}
    assert f">{new.run_id}<" in full.pages["mlp"].read_text()
    index = full.index.read_text()
    assert index != index_before and "+2" in index  # mlp's p50 tripled: its row changed
    assert local_targets_exist(full.index) == [] and local_targets_exist(full.pages["seed-cnn"]) == []


def test_a_busy_model_does_not_crowd_the_others_out_of_the_report(db_url: str, tmp_path: Path) -> None:
    """Actions and rule alerts are read per model (ROW_NUMBER over each), not under one shared limit."""
    from storage.actions import actions
    from storage.queries import save_runs
    from tests.report_helpers import rejected_action

    with Database.open(db_url) as db:
        save_runs(db, history_runs("quiet", 1) + history_runs("busy", 1))
        rejected_action(db, "quiet")
        for _ in range(25):
            rejected_action(db, "busy")
        grouped: dict[str, int] = {}
        for action in actions(db, models=["quiet", "busy"], per_model=20):
            grouped[action.model] = grouped.get(action.model, 0) + 1
        assert grouped == {"quiet": 1, "busy": 20}
        assert [a.model for a in actions(db, models=["quiet"], per_model=20)] == ["quiet"]


def test_an_slo_on_any_stored_metric_sets_the_status(tmp_path: Path) -> None:
    loaded = report_config(tmp_path, [{"name": "big", "slo": {"model_size_mb": 0.5}}])
    with Database.open(loaded.storage_url()) as db:
        seed(db, loaded, history_runs("big", 5))  # 0.6 MiB each
        [view] = gather(db, _reported(loaded)).models
    assert view.status == "slo" and "model_size_mb 0.6 over its SLO 0.5" in view.status_reason


def test_runs_on_a_busy_host_set_no_status_and_are_marked_not_drawn(tmp_path: Path) -> None:
    """What the rules ignore, the report ignores: a contended run neither breaches an SLO nor moves
    'vs baseline', and its chart marks it rather than drawing it like a clean run."""
    loaded = report_config(tmp_path, [{"name": "m", "slo": {"latency_ms_p50": 5.0}}])
    runs = history_runs("m", 12)
    busy = runs[-1] = dataclasses.replace(runs[-1], flags=["contended"])
    busy.metrics.latency_ms_p50, busy.metrics.latency_ms_p99 = 40.0, 90.0  # a neighbour's doing
    with Database.open(loaded.storage_url()) as db:
        runs = seed(db, loaded, runs)
        [view] = gather_report(db, loaded).models
    [series] = view.series
    assert view.status == "ok", view.status_reason
    assert series.latest is not None and series.latest.run_id == runs[-2].run_id
    assert abs(series.change("latency_ms_p50") or 0.0) < 0.05
    spec = latency_chart(view, series).spec
    assert spec.contended == (busy.started_at,) and spec.lines[0].values[-1] is None
    assert "1 run on a busy host, not drawn" in latency_chart(view, series).alt
