"""The [optimize] settings and the `optimize` / `rollback` commands' usage errors: the field is named,
exit 2, nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ConfigError, load_config
from tests.cli_helpers import perfguard, tiny_model, write_config


@pytest.mark.parametrize(("extra", "model_fields", "where"), [
    ('[optimize]\nrecipes = ["dynamic_int9"]\n', {}, "optimize.recipes: unknown recipe 'dynamic_int9'; did you mean 'dynamic_int8'?"),
    ("[optimize]\nmin_speedup = 1.5\n", {}, "optimize.min_speedup"),
    ('[optimize]\non_promote = { command = ["x"], url = "http://a" }\n', {}, "optimize.on_promote: give exactly one"),
    ('[optimize]\non_promote = { url = "ftp://a" }\n', {}, "optimize.on_promote.url"),
    ("", {"optimize": {"accuracy_tolerance": -0.1}}, 'models[0].optimize.accuracy_tolerance (model "m")'),
    ("", {"optimize": {"fidelity": "top5"}}, 'models[0].optimize.fidelity (model "m")'),
    ("", {"train": "not a path"}, 'models[0].train (model "m")'),
])
def test_bad_optimize_settings_name_their_field(tmp_path: Path, extra: str, model_fields: dict[str, object],
                                                where: str) -> None:
    path = write_config(tmp_path / "c.toml", [tiny_model("m", **model_fields)], extra=extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(where in line for line in caught.value.lines), caught.value.lines


def test_model_overrides_apply_over_the_global_settings(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", [tiny_model("m", optimize={"min_speedup": 0.2, "dry_run": True})],
                        extra="[optimize]\naccuracy_tolerance = 0.005\n")
    loaded = load_config(path)
    settings = loaded.config.optimize.for_model(loaded.config.models[0].optimize)
    assert (settings.min_speedup, settings.accuracy_tolerance, settings.dry_run) == (0.2, 0.005, True)
    assert loaded.config.optimize.min_speedup == 0.10  # the global settings are untouched


def test_optimize_and_rollback_refuse_unknown_names_without_storing(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", [tiny_model("m")])
    unknown_model = perfguard("optimize", "nope", config=config)
    assert unknown_model.returncode == 2 and "unknown model 'nope'" in unknown_model.stderr
    unknown_recipe = perfguard("optimize", "m", "--recipe", "magic", config=config)
    assert unknown_recipe.returncode == 2 and "unknown recipe 'magic'" in unknown_recipe.stderr
    assert not (tmp_path / "perfguard.db").exists()
    nothing = perfguard("rollback", "m", config=config)
    assert nothing.returncode == 2 and "nothing to roll back" in nothing.stderr


def test_the_recipe_list_is_json_on_stdout(tmp_path: Path) -> None:
    listed = perfguard("optimize", "m", "--list", "--json", config=tmp_path / "absent.toml")
    assert listed.returncode == 0, listed
    by_name = {r["name"]: r for r in listed.json()}
    assert by_name["dynamic_int8"]["devices"] == ["cpu"] and by_name["prune_l1_unstructured"]["default"] is False
    assert (by_name["dynamic_int8"]["runtime"], by_name["onnx_fp32"]["runtime"]) == ("torch", "onnxruntime")
