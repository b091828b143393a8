"""Report charts: valid, deterministic PNGs; alt text; sparklines; the render_many cache and pool."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image

from reports.charts import (
    ChartSpec,
    Line,
    Marker,
    describe,
    drawing,
    render_chart,
    render_many,
    sparkline,
)

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHART_SIZE = (760, 190)


def _times(n: int, step: timedelta = timedelta(hours=1)) -> list[datetime]:
    return [T0 + i * step for i in range(n)]


def _spec(
    n: int = 200, *, shift: float = 0.0, title: str = "Latency, batch 32", **kwargs: object
) -> ChartSpec:
    """A latency chart with a step at 60 %, gaps where runs failed, and every kind of marker."""
    times = _times(n)
    failed = {n // 7, n // 3}
    p50 = [None if i in failed else 1.0 + shift + (0.18 if i > 0.6 * n else 0.0) + 0.02 * math.sin(i)
           for i in range(n)]
    p99 = [None if v is None else 1.6 * v for v in p50]
    defaults: dict[str, object] = {
        "lines": [Line("p50", p50), Line("p99", p99, emphasis=False)],
        "change_points": [Marker(times[int(0.6 * n)], "change +18 %")],
        "env_changes": [Marker(times[n // 4], "torch 2.12 -> 2.13"), Marker(times[n // 2], "driver 560")],
        "failures": [times[i] for i in sorted(failed)],
        "baseline": 1.0,
        "limit": 2.5,
    }
    defaults.update(kwargs)
    return ChartSpec(title, "ms", times, **defaults)  # type: ignore[arg-type]


def _image(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _has_colour(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 8) -> bool:
    """Whether `rgb` was drawn: palette quantisation may move a colour by a few steps."""
    colours = image.convert("RGB").getcolors(maxcolors=1 << 16) or []
    return any(max(abs(a - b) for a, b in zip(c, rgb, strict=True)) <= tolerance for _, c in colours)


def _fresh_render(spec: ChartSpec) -> bytes:
    """The chart drawn by a new thread, hence by a new figure (figures are kept per thread)."""
    out: list[bytes] = []
    worker = threading.Thread(target=lambda: out.append(render_chart(spec)))
    worker.start()
    worker.join()
    return out[0]


# --------------------------------------------------------------------------------------------
# render_chart


def test_render_chart_is_a_png_of_the_chart_size() -> None:
    image = _image(render_chart(_spec()))
    assert image.size == CHART_SIZE
    # Something was drawn: the p50 colour (Okabe-Ito blue) and the alert colour are in it.
    assert _has_colour(image, (0x00, 0x72, 0xB2))
    assert _has_colour(image, (0xD5, 0x5E, 0x00))


def test_equal_specs_give_equal_bytes_and_changes_give_new_keys() -> None:
    spec = _spec()
    twin = _spec()
    assert spec == twin and spec.key() == twin.key()
    assert render_chart(spec) == render_chart(twin)

    changed_value = _spec(shift=0.001)
    assert changed_value.key() != spec.key()
    assert _spec(title="Latency, batch 1").key() != spec.key()
    assert _spec(log_scale=True).key() != spec.key()
    assert _spec(limit=3.0).key() != spec.key()
    assert len(spec.key()) == 16 and int(spec.key(), 16) >= 0


def test_key_reads_instants_not_time_zones() -> None:
    spec = _spec(20)
    elsewhere = ChartSpec(
        spec.title, spec.unit, [t.astimezone(timezone(timedelta(hours=5))) for t in spec.times], spec.lines,
        spec.change_points, spec.env_changes, spec.failures, spec.baseline, spec.limit,
    )
    assert elsewhere.key() == spec.key()
    assert render_chart(elsewhere) == render_chart(spec)


def test_a_reused_figure_draws_what_a_fresh_one_draws() -> None:
    """Each thread refills one figure: nothing of an earlier chart may leak into the next."""
    specs = [
        _spec(),
        _spec(50, log_scale=True),
        ChartSpec("All failed", "ms", _times(5), [Line("p50", [None] * 5)], failures=_times(5)),
        ChartSpec("One run", "ms", [T0], [Line("p50", [1.5])]),
        ChartSpec("No runs", "ms", [], []),
        _spec(30, shift=1e6, title="Big numbers"),
    ]
    fresh = [_fresh_render(s) for s in specs]
    for order in (specs, specs[::-1]):
        for spec in order:
            assert render_chart(spec) == fresh[specs.index(spec)], spec.title


def test_gaps_single_runs_and_empty_specs_render() -> None:
    with_gaps = _spec(60, lines=[Line("p50", [1.0, None, 2.0, None, None, 3.0] * 10)], failures=[])
    assert _image(render_chart(with_gaps)).size == CHART_SIZE

    one_run = ChartSpec("One run", "ms", [T0], [Line("p50", [1.5])])
    # A lone value is a dot, not nothing.
    assert _has_colour(_image(render_chart(one_run)), (0x00, 0x72, 0xB2))
    assert not _has_colour(_image(render_chart(ChartSpec("One run", "ms", [T0], []))), (0x00, 0x72, 0xB2))

    all_none = ChartSpec("All failed", "ms", _times(3), [Line("p50", [None, None, None])], failures=_times(3))
    assert _image(render_chart(all_none)).size == CHART_SIZE

    empty = ChartSpec("Latency, batch 32", "ms", [], [])
    assert _image(render_chart(empty)).size == CHART_SIZE
    assert render_chart(empty) != render_chart(ChartSpec("Other", "ms", [], []))


def test_log_scale_with_positive_data() -> None:
    times = _times(100)
    spec = ChartSpec("Throughput", "items/s", times, [Line("b1", [10 ** (i / 20) for i in range(100)]),
                                                      Line("b32", [3 * 10 ** (i / 20) for i in range(100)])],
                     log_scale=True)
    png = render_chart(spec)
    assert _image(png).size == CHART_SIZE
    assert png != render_chart(ChartSpec(spec.title, spec.unit, times, spec.lines))


def test_lines_must_match_the_times() -> None:
    with pytest.raises(ValueError, match="3 values for 2 times"):
        ChartSpec("Latency", "ms", _times(2), [Line("p50", [1.0, 2.0, 3.0])])


# --------------------------------------------------------------------------------------------
# describe


def test_describe_names_the_change_and_counts_markers_and_failures() -> None:
    text = describe(_spec())
    assert text.startswith("Latency, batch 32 (ms) over 200 runs from 2026-01-01 to 2026-01-09: p50 from ")
    assert "1 change point (2026-01-06: change +18 %)" in text
    assert "2 environment changes" in text
    assert "2 failed runs" in text
    assert "SLO 2.5" in text


def test_describe_uses_first_and_last_values_of_the_first_emphasised_line() -> None:
    spec = ChartSpec("Latency", "ms", _times(4), [
        Line("p99", [9.0, 9.0, 9.0, 9.0], emphasis=False),
        Line("p50", [None, 1.0, 1.5, None]),
    ])
    assert describe(spec) == "Latency (ms) over 4 runs on 2026-01-01: p50 from 1 to 1.5 (+50.0 %)."


def test_describe_empty_and_valueless_specs() -> None:
    assert describe(ChartSpec("Latency, batch 32", "ms", [], [])) == "Latency, batch 32 (ms): no runs yet."
    text = describe(ChartSpec("Latency", "ms", _times(2), [Line("p50", [None, None])], failures=_times(2)))
    assert text == "Latency (ms) over 2 runs on 2026-01-01: p50: no values; 2 failed runs."


# --------------------------------------------------------------------------------------------
# sparkline


def test_sparkline_size_and_determinism() -> None:
    values = [1.0 + 0.1 * math.sin(i / 5) for i in range(1000)]
    png = sparkline(values)
    image = _image(png)
    assert image.size == (120, 28)
    assert image.mode == "RGBA"
    assert image.getchannel("A").getextrema()[1] == 255  # the line is drawn
    assert sparkline(values) == png
    assert _image(sparkline(values, width=60, height=16)).size == (60, 16)
    assert sparkline(values, highlight_last=False) != png


def test_sparkline_flat_series_is_a_centred_line() -> None:
    alpha = _image(sparkline([2.0] * 50, highlight_last=False)).getchannel("A")
    rows = [y for y in range(alpha.height) if max(alpha.getpixel((x, y)) for x in range(alpha.width)) > 128]
    assert rows and abs(sum(rows) / len(rows) - (alpha.height - 1) / 2) <= 1


@pytest.mark.parametrize("values", [[], [1.0], [None, 1.0, None], [None, None, None]])
def test_sparkline_without_two_values_is_blank(values: list[float | None]) -> None:
    image = _image(sparkline(values))
    assert image.size == (120, 28)
    assert image.getchannel("A").getextrema() == (0, 0)


def test_sparkline_skips_none() -> None:
    image = _image(sparkline([1.0, None, 2.0, None, 3.0]))
    assert image.getchannel("A").getextrema()[1] == 255


# --------------------------------------------------------------------------------------------
# render_many


def _many(n: int) -> dict[str, ChartSpec]:
    return {f"model-{i}": _spec(60, shift=0.01 * i, title=f"Latency, model {i}") for i in range(n)}


def test_render_many_writes_files_named_by_key_and_draws_each_once(tmp_path: Path) -> None:
    specs = _many(3)
    specs["same-as-model-0"] = specs["model-0"]
    names = render_many(specs, tmp_path)
    assert names == {name: f"{spec.key()}.png" for name, spec in specs.items()}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted({f"{s.key()}.png" for s in specs.values()})  # no temporary files left
    for name, spec in specs.items():
        assert (tmp_path / names[name]).read_bytes() == render_chart(spec)

    # The cache: a second call draws nothing, and leaves the files alone.
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    for p in tmp_path.iterdir():
        os.utime(p, ns=(1, 1))
    assert render_many(specs, tmp_path) == names
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == dict.fromkeys(stamps, 1)

    # A changed chart gets a new file; the old one is the caller's to prune.
    changed = dict(specs, **{"model-1": _spec(60, shift=0.5, title="Latency, model 1")})
    new_names = render_many(changed, tmp_path)
    assert new_names["model-1"] != names["model-1"]
    assert (tmp_path / new_names["model-1"]).stat().st_mtime_ns != 1
    assert len(list(tmp_path.iterdir())) == len(files) + 1


def test_render_many_redraws_an_empty_file(tmp_path: Path) -> None:
    spec = _spec(30)
    (tmp_path / f"{spec.key()}.png").write_bytes(b"")
    render_many({"m": spec}, tmp_path)
    assert (tmp_path / f"{spec.key()}.png").read_bytes() == render_chart(spec)


def test_render_many_pool_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pools: list[dict[str, object]] = []

    class CountingPool(ProcessPoolExecutor):
        def __init__(self, *args: object, **kwargs: object) -> None:
            pools.append(kwargs)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(drawing, "ProcessPoolExecutor", CountingPool)
    monkeypatch.setattr(drawing, "_POOL_THRESHOLD", 8)  # the real threshold is tuned for big reports
    specs = _many(12)
    serial = render_many(specs, tmp_path / "serial", workers=1)
    assert pools == []
    pooled = render_many(specs, tmp_path / "pooled", workers=2)
    assert len(pools) == 1
    assert pools[0]["max_workers"] == 1  # this process draws too, beside one spawned one
    assert pools[0]["mp_context"].get_start_method() == "spawn"  # type: ignore[union-attr]
    assert pooled == serial
    for name in serial.values():
        assert (tmp_path / "pooled" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()
    assert len(list((tmp_path / "pooled").iterdir())) == 12


# --------------------------------------------------------------------------------------------
# imports


def test_importing_charts_does_not_import_pyplot() -> None:
    code = (
        "import sys, reports.charts\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert 'torch' not in sys.modules and 'monitor' not in sys.modules\n"
        "from datetime import datetime, UTC\n"
        "from reports.charts import ChartSpec, Line, render_chart\n"
        "t = datetime(2026, 1, 1, tzinfo=UTC)\n"
        "render_chart(ChartSpec('t', 'ms', [t, t], [Line('p50', [1.0, 2.0])]))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
