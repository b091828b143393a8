"""The bundled example models: shapes, a trained seed CNN that is accurate, cached and deterministic."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from monitor.examples import models
from tests.cli_helpers import perfguard


@dataclass(frozen=True)
class FirstUse:
    cache_dir: Path
    model: torch.nn.Module
    train_seconds: float
    threads_before: int
    threads_after: int


@pytest.fixture(scope="module")
def first_use(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstUse]:
    """Train once for the whole module, into an empty cache dir, with an unusual thread count set.

    On one core: training takes a thread per core it may use, and beside the suite's other test
    process, busy on the other core, two threads took 58 s where one takes 13 s. The caller's three
    threads then differ from training's one, so handing them back is still checked."""
    cache_dir = tmp_path_factory.mktemp("perfguard-cache")
    threads, cores = torch.get_num_threads(), os.sched_getaffinity(0)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("PERFGUARD_CACHE_DIR", str(cache_dir))
        # A caller that pinned its own thread count; training must hand that back.
        torch.set_num_threads(3)
        os.sched_setaffinity(0, {min(cores)})
        try:
            started = time.perf_counter()
            model = models.seed_cnn()
            train_seconds = time.perf_counter() - started
            threads_after = torch.get_num_threads()
        finally:
            os.sched_setaffinity(0, cores)
            torch.set_num_threads(threads)
        yield FirstUse(cache_dir, model, train_seconds, 3, threads_after)


def held_out_accuracy(model: torch.nn.Module) -> float:
    correct = total = 0
    with torch.inference_mode():
        for inputs, labels in models.seed_cnn_eval():
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
            total += len(labels)
    return correct / total


@pytest.mark.parametrize("batch", [1, 32])
def test_cnn_maps_a_batch_of_images_to_ten_logits(batch: int) -> None:
    with torch.inference_mode():
        out = models.SimpleCNN().eval()(torch.rand(batch, 3, 32, 32))
    assert out.shape == (batch, 10)


def test_eval_batches_are_float_images_with_int64_labels_of_at_most_64() -> None:
    batches = models.seed_cnn_eval()
    assert batches
    for inputs, labels in batches:
        assert inputs.dtype == torch.float32 and labels.dtype == torch.int64
        assert inputs.shape[1:] == (3, 32, 32) and inputs.shape[0] == labels.shape[0] <= 64
        assert 0.0 <= float(inputs.min()) and float(inputs.max()) <= 1.0
    # Iterable more than once: the harness may sweep it for every variant.
    assert sum(len(labels) for _, labels in models.seed_cnn_eval()) == 360


def test_trained_seed_cnn_is_in_eval_mode_and_accurate_on_held_out_digits(first_use: FirstUse) -> None:
    assert not first_use.model.training
    assert held_out_accuracy(first_use.model) >= 0.9


def test_first_use_writes_the_weights_to_the_cache_dir(first_use: FirstUse) -> None:
    files = sorted(p.name for p in first_use.cache_dir.iterdir())
    assert files == [models.seed_cnn_cache_path().name]
    assert models.SEED_CNN_RECIPE.fingerprint() in files[0]


def test_second_use_loads_the_same_weights_faster_than_training(
    first_use: FirstUse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFGUARD_CACHE_DIR", str(first_use.cache_dir))
    started = time.perf_counter()
    loaded = models.seed_cnn()
    load_seconds = time.perf_counter() - started
    assert load_seconds < first_use.train_seconds / 5
    assert not loaded.training
    trained, cached = first_use.model.state_dict(), loaded.state_dict()
    assert trained.keys() == cached.keys()
    assert all(torch.equal(trained[name], cached[name]) for name in trained)


def test_training_gives_back_the_callers_thread_count(first_use: FirstUse) -> None:
    assert first_use.threads_after == first_use.threads_before


def test_a_changed_recipe_uses_a_different_cache_file() -> None:
    changed = dataclasses.replace(models.SEED_CNN_RECIPE, epochs=models.SEED_CNN_RECIPE.epochs + 1)
    assert models.seed_cnn_cache_path(changed) != models.seed_cnn_cache_path()


def test_a_truncated_or_missing_cache_file_counts_as_missing(tmp_path: Path) -> None:
    broken = tmp_path / "seed_cnn-broken.pt"
    torch.save(models.SimpleCNN().state_dict(), broken)
    whole = broken.read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    assert models._load_cached(broken) is None
    assert models._load_cached(tmp_path / "absent.pt") is None


def test_cache_dir_follows_env_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PERFGUARD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "perfguard"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "perfguard"
    monkeypatch.setenv("PERFGUARD_CACHE_DIR", str(tmp_path / "explicit"))
    assert models.cache_dir() == tmp_path / "explicit"


@pytest.mark.parametrize("batch", [1, 32])
def test_mlp_maps_1024_features_to_ten_logits(batch: int) -> None:
    model = models.mlp()
    assert not model.training
    with torch.inference_mode():
        assert model(torch.rand(batch, 1024)).shape == (batch, 10)


def test_mlp_has_the_same_weights_every_time_and_leaves_global_rng_alone() -> None:
    rng_before = torch.random.get_rng_state()
    first, second = models.mlp().state_dict(), models.mlp().state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_the_bring_your_own_model_example_runs_from_its_folder_with_nothing_installed(tmp_path: Path) -> None:
    """examples/perfguard.toml names `my_model:build` beside it: run from another folder, it resolves
    there, stores a run per batch size with its accuracy, and `history` reads them back."""
    folder = tmp_path / "example"
    folder.mkdir()
    source = Path(__file__).resolve().parent.parent / "examples"
    (folder / "my_model.py").write_text((source / "my_model.py").read_text())
    config = folder / "perfguard.toml"
    config.write_text((source / "perfguard.toml").read_text().replace("max_time_s = 2 ", "max_time_s = 0.3 "))
    ran = perfguard("run", "--json", config=config, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    runs = ran.json()
    assert [(r["model"], r["batch_size"], r["status"]) for r in runs] == [("my-model", 1, "ok"), ("my-model", 32, "ok")]
    assert all(r["metrics"]["accuracy"] == pytest.approx(0.5, abs=0.1) for r in runs)
    shown = perfguard("history", "my-model", config=config, cwd=tmp_path)
    assert shown.returncode == 0 and "my-model" in shown.stdout, shown.stderr
