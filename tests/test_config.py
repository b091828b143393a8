"""Config validation: every bad config is refused with a message naming the file, the field and the model.

Each rule is checked twice: `load_config` raises ConfigError, and the CLI exits 2 with the same lines on
stderr, nothing on stdout, and no database created. A bad config never reaches a stored history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import config_text, perfguard, tiny_model, write_config
from click.testing import CliRunner

from monitor.cli import main
from monitor.config import ConfigError, load_config

GOOD = tiny_model("ok")


@dataclass(frozen=True)
class BadModel:
    """The second model ("x", so `models[1]`) with `fields` changed; None removes a field."""

    fields: dict[str, Any]
    where: str
    message: str
    name: str = "x"


@dataclass(frozen=True)
class BadFile:
    """A whole config text (`{models}` stands for a good model table) and the error it must give."""

    text: str
    where: str
    message: str
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _inp(**fields: Any) -> list[dict[str, Any]]:
    return [{"shape": [8, 16], **fields}]


POSITIVE_INTS = "expected a list of positive integers"
IMPORT_PATH = "expected an import path 'package.module:callable', got "
ONE_INPUT_SOURCE = "give exactly one of 'inputs' or 'inputs_factory'"
ONE_SCHEDULE = "give exactly one of 'every' or 'cron'"
DURATION = "expected a positive duration like '30s', '10m' or '2h', got "
BATCH_SIZES = "expected a non-empty list of positive integers"
GREATER_THAN_0 = "Input should be greater than 0"

_STUDENT = {"student": "pkg.small:build", "data": "pkg.data:batches"}

BAD_MODELS: dict[str, BadModel] = {
    "shape-zero": BadModel({"inputs": [{"shape": [8, 0]}]}, "models[1].inputs[0].shape", POSITIVE_INTS),
    "shape-negative": BadModel({"inputs": [{"shape": [-8, 16]}]}, "models[1].inputs[0].shape", POSITIVE_INTS),
    "shape-float": BadModel({"inputs": [{"shape": [8, 1.5]}]}, "models[1].inputs[0].shape", POSITIVE_INTS),
    "shape-bool": BadModel({"inputs": [{"shape": [True, 16]}]}, "models[1].inputs[0].shape", POSITIVE_INTS),
    "shape-empty": BadModel({"inputs": [{"shape": []}]}, "models[1].inputs[0].shape", POSITIVE_INTS),
    "shape-string": BadModel({"inputs": [{"shape": "8x16"}]}, "models[1].inputs[0].shape", POSITIVE_INTS),
    "second-input-shape": BadModel(
        {"inputs": [{"shape": [8, 16]}, {"shape": [8, 0]}]}, "models[1].inputs[1].shape", POSITIVE_INTS
    ),
    "dtype": BadModel({"inputs": _inp(dtype="float8")}, "models[1].inputs[0].dtype", "Input should be 'float32'"),
    "low-on-float": BadModel(
        {"inputs": _inp(low=0)}, "models[1].inputs[0]", "low/high apply to integer dtypes only, not float32"
    ),
    "high-on-float16": BadModel(
        {"inputs": _inp(dtype="float16", high=5)},
        "models[1].inputs[0]",
        "low/high apply to integer dtypes only, not float16",
    ),
    "low-equals-high": BadModel(
        {"inputs": _inp(dtype="int64", low=5, high=5)}, "models[1].inputs[0]", "low (5) must be below high (5)"
    ),
    "low-above-high": BadModel(
        {"inputs": _inp(dtype="int32", low=7, high=3)}, "models[1].inputs[0]", "low (7) must be below high (3)"
    ),
    "inputs-and-inputs-factory": BadModel(
        {"inputs_factory": "workloads:tiny_inputs", "batch_sizes": [2]}, "models[1]", ONE_INPUT_SOURCE
    ),
    "neither-inputs-nor-factory": BadModel({"inputs": None}, "models[1]", ONE_INPUT_SOURCE),
    "inputs-factory-without-batch-sizes": BadModel(
        {"inputs": None, "inputs_factory": "workloads:tiny_inputs"},
        "models[1]",
        "'inputs_factory' needs 'batch_sizes'",
    ),
    "empty-inputs": BadModel({"inputs": []}, "models[1]", "inputs: expected at least one input"),
    "factory-dotted": BadModel({"factory": "workloads.tiny"}, "models[1].factory", IMPORT_PATH + "'workloads.tiny'"),
    "factory-no-callable": BadModel({"factory": "workloads:"}, "models[1].factory", IMPORT_PATH + "'workloads:'"),
    "factory-no-module": BadModel({"factory": ":tiny"}, "models[1].factory", IMPORT_PATH + "':tiny'"),
    "factory-space": BadModel({"factory": "work loads:tiny"}, "models[1].factory", IMPORT_PATH),
    "factory-empty": BadModel({"factory": ""}, "models[1].factory", "String should have at least 1 character"),
    "inputs-factory-path": BadModel(
        {"inputs": None, "inputs_factory": "workloads/tiny_inputs", "batch_sizes": [2]},
        "models[1].inputs_factory",
        IMPORT_PATH + "'workloads/tiny_inputs'",
    ),
    "eval-path": BadModel({"eval": "tiny_eval"}, "models[1].eval", IMPORT_PATH + "'tiny_eval'"),
    "device-gpu": BadModel({"device": "gpu"}, "models[1].device", "expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    "device-cuda-name": BadModel({"device": "cuda:first"}, "models[1].device", "got 'cuda:first'"),
    "device-upper": BadModel({"device": "CPU"}, "models[1].device", "got 'CPU'"),
    "batch-sizes-empty": BadModel({"batch_sizes": []}, "models[1].batch_sizes", BATCH_SIZES),
    "batch-sizes-zero": BadModel({"batch_sizes": [0, 2]}, "models[1].batch_sizes", BATCH_SIZES),
    "batch-sizes-negative": BadModel({"batch_sizes": [-1]}, "models[1].batch_sizes", BATCH_SIZES),
    "batch-sizes-duplicate": BadModel({"batch_sizes": [2, 8, 2]}, "models[1].batch_sizes", "batch sizes must not repeat"),
    "every-word": BadModel({"schedule": {"every": "soon"}}, "models[1].schedule.every", DURATION + "'soon'"),
    "every-zero": BadModel({"schedule": {"every": "0s"}}, "models[1].schedule.every", DURATION + "'0s'"),
    "every-unit": BadModel({"schedule": {"every": "10 minutes"}}, "models[1].schedule.every", DURATION),
    "cron-range": BadModel(
        {"schedule": {"cron": "99 * * * *"}}, "models[1].schedule.cron", "invalid crontab '99 * * * *'"
    ),
    "cron-fields": BadModel(
        {"schedule": {"cron": "every day"}}, "models[1].schedule.cron", "invalid crontab 'every day'"
    ),
    "every-and-cron": BadModel({"schedule": {"every": "1m", "cron": "* * * * *"}}, "models[1].schedule", ONE_SCHEDULE),
    "no-every-no-cron": BadModel({"schedule": {}}, "models[1].schedule", ONE_SCHEDULE),
    "slo-unknown-metric": BadModel(
        {"slo": {"latency_p99": 3}}, "models[1].slo", "unknown metric 'latency_p99'; expected one of: latency_ms_p50"
    ),
    "slo-zero": BadModel(
        {"slo": {"latency_ms_p99": 0}}, "models[1].slo", "latency_ms_p99: expected a positive bound, got 0"
    ),
    "slo-negative": BadModel(
        {"slo": {"throughput_per_s": -5}}, "models[1].slo", "throughput_per_s: expected a positive bound, got -5"
    ),
    "owner-not-email": BadModel(
        {"owners": ["ok@example.com", "vision-team"]}, "models[1].owners", "expected an e-mail address like team@example.com, got 'vision-team'"
    ),
    "owner-no-domain": BadModel({"owners": ["me@localhost"]}, "models[1].owners", "got 'me@localhost'"),
    "max-time-zero": BadModel({"max_time_s": 0}, "models[1].max_time_s", GREATER_THAN_0),
    "max-time-negative": BadModel({"max_time_s": -1.5}, "models[1].max_time_s", GREATER_THAN_0),
    "timeout-zero": BadModel({"timeout_s": 0}, "models[1].timeout_s", GREATER_THAN_0),
    "threads-zero": BadModel({"threads": 0}, "models[1].threads", GREATER_THAN_0),
    "memory-limit-negative": BadModel({"memory_limit_mb": -1}, "models[1].memory_limit_mb", GREATER_THAN_0),
    "unknown-key-in-model": BadModel({"devise": "cpu"}, "models[1].devise", "unknown key; did you mean 'device'?"),
    "unknown-key-in-input": BadModel(
        {"inputs": _inp(dtyp="int64")}, "models[1].inputs[0].dtyp", "unknown key; did you mean 'dtype'?"
    ),
    "unknown-key-in-schedule": BadModel(
        {"schedule": {"evry": "1m"}}, "models[1].schedule.evry", "unknown key; did you mean 'every'?"
    ),
    "missing-factory": BadModel({"factory": None}, "models[1].factory", "required key is missing"),
    "bad-name": BadModel({"name": "has space"}, "models[1].name", "String should match pattern", name="has space"),
    # The series a model adds besides inference (tests/test_series_modes.py) and its student (test_distill.py).
    "train-lr-zero": BadModel({"train": {"lr": 0.0}}, "models[1].train.lr", "greater than 0"),
    "train-unknown-optimizer": BadModel(
        {"train": {"optimizer": "lion"}}, "models[1].train.optimizer", "'lion' is not one of sgd, adam, adamw"
    ),
    "train-amp": BadModel({"train": {"amp": "fp8"}}, "models[1].train.amp", "'bf16' or 'fp16'"),
    "train-unknown-key": BadModel(
        {"train": {"batch_size": 8}}, "models[1].train.batch_size", "did you mean 'batch_sizes'"
    ),
    "load-repeated-level": BadModel({"load": {"concurrency": [2, 2]}}, "models[1].load.concurrency", "none repeated"),
    "load-zero-callers": BadModel({"load": {"concurrency": [0]}}, "models[1].load.concurrency[0]", "greater than 0"),
    "load-duration": BadModel({"load": {"duration_s": -1.0}}, "models[1].load.duration_s", "greater than 0"),
    "distill-weight": BadModel(
        {"distill": {**_STUDENT, "weight": 1.5}}, "models[1].distill.weight", "less than or equal to 1"
    ),
    "distill-student": BadModel(
        {"distill": {**_STUDENT, "student": "not a path"}}, "models[1].distill.student", "expected an import path"
    ),
    "distill-epochs": BadModel(
        {"distill": {**_STUDENT, "epochs": 0}}, "models[1].distill.epochs", "greater than or equal to 1"
    ),
    "distill-no-data-no-eval": BadModel(
        {"distill": {"student": "pkg.small:build"}}, "models[1]", "distill.data: missing, and the model has no 'eval'"
    ),
    "distill-holdout": BadModel({"distill": {**_STUDENT, "holdout": 1.0}}, "models[1].distill.holdout", "less than 1"),
    "distill-unknown-key": BadModel(
        {"distill": {**_STUDENT, "teacher": "x:y"}}, "models[1].distill.teacher", "unknown key"
    ),
}

_RULE = '\n[[rules]]\nuse = "latency_drift"\n'
BAD_FILES: dict[str, BadFile] = {
    "unknown-top-level-key": BadFile(
        "modles = []\n" + config_text([GOOD]), "modles", "unknown key; did you mean 'models'?"
    ),
    "unknown-table": BadFile(
        config_text([GOOD]) + "\n[harnes]\nmin_samples = 20\n", "harnes", "unknown key; did you mean 'harness'?"
    ),
    "unknown-key-in-storage": BadFile(
        '[storage]\nulr = "sqlite:///perfguard.db"\n' + config_text([GOOD], storage_url=None),
        "storage.ulr",
        "unknown key; did you mean 'url'?",
    ),
    "unknown-key-in-harness": BadFile(
        config_text([GOOD], harness={"min_sample": 20}), "harness.min_sample", "unknown key; did you mean 'min_samples'?"
    ),
    "unknown-key-in-email": BadFile(
        '[email]\nsmpt_host = "mail"\nsender = "pg@example.com"\n' + config_text([GOOD]),
        "email.smpt_host",
        "unknown key; did you mean 'smtp_host'?",
    ),
    "unknown-key-in-rule": BadFile(
        config_text([GOOD]) + _RULE + 'model = ["ok"]\n', "rules[0].model", "unknown key; did you mean 'models'?"
    ),
    "storage-url-scheme": BadFile(
        config_text([GOOD], storage_url="mysql://me@db/perf"),
        "storage.url",
        "expected 'sqlite:///PATH' or 'postgresql+psycopg://USER@HOST/DB'",
    ),
    "storage-url-bare-path": BadFile(
        config_text([GOOD], storage_url="perfguard.db"), "storage.url", "expected 'sqlite:///PATH'"
    ),
    "harness-min-samples": BadFile(
        config_text([GOOD], harness={"min_samples": 2}), "harness.min_samples", "greater than or equal to 5"
    ),
    "daemon-listen": BadFile(
        '[daemon]\nlisten = "localhost"\n' + config_text([GOOD]), "daemon.listen", "should match pattern"
    ),
    "daemon-stop-timeout": BadFile(
        '[daemon]\nstop_timeout_s = -1\n' + config_text([GOOD]), "daemon.stop_timeout_s", "greater than or equal to 0"
    ),
    "email-digest-cron": BadFile(
        '[email]\nsender = "pg@example.com"\ndigest_cron = "daily"\n' + config_text([GOOD]),
        "email.digest_cron",
        "invalid crontab 'daily'",
    ),
    "duplicate-model-names": BadFile(
        config_text([GOOD, tiny_model("b"), tiny_model("b", batch_sizes=[2])]),
        "models",
        "duplicate model name 'b' (models[1] and models[2])",
    ),
    "rule-unknown-model": BadFile(
        config_text([GOOD]) + _RULE + 'models = ["ok", "nope"]\n', "rules", "unknown model 'nope' in rules[0].models"
    ),
    "models-not-a-list": BadFile('models = "ok"\n', "models", "Input should be a valid list"),
}


def _model_config(case: BadModel) -> str:
    fields = {"name": "x", **case.fields}
    return config_text([GOOD, tiny_model(**fields)])


def _expected_prefix(path: Path, where: str, model: str | None) -> str:
    return f"{path}: {where}" + (f' (model "{model}")' if model else "") + ": "


def _cases() -> list[Any]:
    params = []
    for case_id, model_case in BAD_MODELS.items():
        params.append(pytest.param(_model_config(model_case), model_case.where, model_case.name, model_case.message, id=case_id))
    for case_id, file_case in BAD_FILES.items():
        params.append(pytest.param(file_case.text, file_case.where, file_case.model, file_case.message, id=case_id))
    return params


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize(("text", "where", "model", "message"), _cases())
def test_a_bad_config_raises_one_error_naming_file_field_and_model(
    tmp_path: Path, text: str, where: str, model: str | None, message: str
) -> None:
    path = tmp_path / "perfguard.toml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert len(caught.value.lines) == 1, caught.value.lines
    line = caught.value.lines[0]
    prefix = _expected_prefix(path, where, model)
    assert line.startswith(prefix), f"{line!r} does not start with {prefix!r}"
    assert message in line[len(prefix):]
    assert str(caught.value) == line


@pytest.mark.parametrize(("text", "where", "model", "message"), _cases())
def test_the_cli_exits_2_on_a_bad_config_before_opening_storage(
    tmp_path: Path, text: str, where: str, model: str | None, message: str
) -> None:
    path = tmp_path / "perfguard.toml"
    path.write_text(text, encoding="utf-8")
    prefix = "error: " + _expected_prefix(path, where, model)

    for args in (["models", "--json"], ["run", "--json"], ["run", "ok"], ["history", "ok"], ["db", "upgrade"]):
        result = _invoke(*args, "--config", str(path))
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == "", args
        assert result.stderr.startswith(prefix), (args, result.stderr)
        assert message in result.stderr

    assert sorted(p.name for p in tmp_path.iterdir()) == ["perfguard.toml"], "a database was created"


def test_every_error_of_a_config_is_reported_on_its_own_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "perfguard.toml",
        [GOOD, tiny_model("x", device="tpu", inputs=[{"shape": [0]}]), tiny_model("y", max_time_s=0)],
    )

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert sorted(caught.value.lines) == sorted(
        [
            f'{path}: models[1].inputs[0].shape (model "x"): {POSITIVE_INTS}',
            f"{path}: models[1].device (model \"x\"): expected 'cpu', 'cuda' or 'cuda:N', got 'tpu'",
            f'{path}: models[2].max_time_s (model "y"): {GREATER_THAN_0}',
        ]
    )


def test_the_shape_message_is_exactly_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "perfguard.toml"
    path.write_text(_model_config(BAD_MODELS["shape-zero"]), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.lines == [f'{path}: models[1].inputs[0].shape (model "x"): expected a list of positive integers']


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"batch_sizes": [True, 8]}, "models[1].batch_sizes"),
        ({"max_time_s": True}, "models[1].max_time_s"),
        ({"threads": True}, "models[1].threads"),
        ({"slo": {"latency_ms_p99": True}}, "models[1].slo"),
    ],
    ids=["batch-sizes", "max-time", "threads", "slo"],
)
def test_a_boolean_where_a_number_belongs_is_an_error(tmp_path: Path, fields: dict[str, Any], where: str) -> None:
    path = tmp_path / "perfguard.toml"
    path.write_text(config_text([GOOD, tiny_model("x", **fields)]), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.lines[0].startswith(f'{path}: {where}')


def test_invalid_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "perfguard.toml"
    path.write_text(config_text([GOOD]) + "name = \n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith(f"{path}: invalid TOML: ")
    assert "line" in caught.value.lines[0]

    result = _invoke("run", "--json", "--config", str(path))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.startswith(f"error: {path}: invalid TOML: ")


def test_a_missing_config_file_says_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "perfguard.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.lines == [f"{path}: config file not found (create one with `perfguard init`)"]

    for args in (["run", "--json"], ["models"], ["history", "x"], ["db", "upgrade"]):
        result = _invoke(*args, "--config", str(path))
        assert (result.exit_code, result.stdout) == (2, ""), args
        assert f"error: {path}: config file not found" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_good_config_loads_with_its_defaults_and_anchors_sqlite_at_its_folder(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "perfguard.toml",
        [GOOD, tiny_model("multi", batch_sizes=[2, 8], schedule={"cron": "*/5 * * * *"}, owners=["a@example.com"])],
        storage_url="sqlite:///data/perf.db",
    )

    loaded = load_config(path)

    assert [m.name for m in loaded.config.models] == ["ok", "multi"]
    assert loaded.config.model("ok").series_batch_sizes == [8]
    assert loaded.config.model("multi").series_batch_sizes == [2, 8]
    assert loaded.config.model("ok").schedule.interval_s == 3600.0
    assert loaded.config.harness.min_samples == 20
    assert loaded.storage_url() == f"sqlite:///{tmp_path.resolve() / 'data' / 'perf.db'}"


# --- perfguard init ---------------------------------------------------------------------------------


def test_init_writes_a_starter_config_that_validates(tmp_path: Path) -> None:
    result = perfguard("init", cwd=tmp_path)

    assert result.returncode == 0, result
    assert result.stdout == ""
    path = tmp_path / "perfguard.toml"
    loaded = load_config(path)
    assert [m.name for m in loaded.config.models] == ["seed-cnn", "mlp"]
    assert loaded.storage_url() == f"sqlite:///{tmp_path.resolve() / 'perfguard.db'}"
    # The starter config is what `make run` uses: the `models` command reads it without complaint.
    listed = perfguard("models", "--json", config=path)
    assert listed.returncode == 0, listed
    assert [m["name"] for m in listed.json()] == ["seed-cnn", "mlp"]


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "mine.toml"
    assert perfguard("init", config=path, cwd=tmp_path).returncode == 0
    starter = path.read_text(encoding="utf-8")
    path.write_text("# my own edits\n" + starter, encoding="utf-8")

    refused = perfguard("init", config=path, cwd=tmp_path)

    assert refused.returncode == 2, refused
    assert refused.stdout == ""
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert path.read_text(encoding="utf-8") == "# my own edits\n" + starter

    forced = perfguard("init", "--force", config=path, cwd=tmp_path)

    assert forced.returncode == 0, forced
    assert path.read_text(encoding="utf-8") == starter


# --- a bad config never touches stored history --------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file next to the config (database, WAL, journal): size, mtime and content."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.iterdir())
        if p.name != "perfguard.toml"
    }


def test_a_bad_config_neither_creates_nor_modifies_the_database(tmp_path: Path) -> None:
    config = tmp_path / "perfguard.toml"
    good_text = config_text([tiny_model("tiny")])
    config.write_text(good_text, encoding="utf-8")
    first = perfguard("run", "--json", config=config)
    assert first.returncode == 0, first
    run_ids = [r["run_id"] for r in first.json()]
    assert len(run_ids) == 1
    database = tmp_path / "perfguard.db"
    assert database.exists()
    before = _snapshot(tmp_path)

    every_command = (["run", "--json"], ["run", "tiny"], ["history", "tiny", "--json"], ["models", "--json"])
    attempts = {  # each CLI call costs about a second: every command once, the other kinds of error once
        "bad field": (config_text([tiny_model("tiny", inputs=[{"shape": [8, 0]}])]), every_command),
        "unknown key": (config_text([tiny_model("tiny", max_time=1)]), (["run", "--json"],)),
        "invalid toml": (good_text + "\n[[models]\n", (["history", "tiny"],)),
    }
    for label, (bad_text, commands) in attempts.items():
        config.write_text(bad_text, encoding="utf-8")
        for args in commands:
            result = perfguard(*args, config=config)
            assert result.returncode == 2, (label, str(result))
            assert result.stdout == "", (label, str(result))
            assert f"error: {config}: " in result.stderr, (label, str(result))
            assert _snapshot(tmp_path) == before, (label, args)

    config.write_text(good_text, encoding="utf-8")
    history = perfguard("history", "tiny", "--json", config=config)
    assert history.returncode == 0, history
    assert [r["run_id"] for r in history.json()] == run_ids


def test_a_bad_config_pointing_at_a_new_database_does_not_create_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "perfguard.toml", [tiny_model("tiny", device="gpu")], storage_url="sqlite:///data/perf.db"
    )

    result = perfguard("run", "--json", config=config)

    assert result.returncode == 2, result
    assert result.stdout == ""
    assert f'error: {config}: models[0].device (model "tiny"): ' in result.stderr
    assert not (tmp_path / "data").exists()


def test_perfguard_storage_url_from_the_environment_replaces_the_configs(tmp_path, monkeypatch):
    path = tmp_path / "perfguard.toml"
    path.write_text('[storage]\nurl = "sqlite:///local.db"\n')
    assert load_config(path).storage_url() == f"sqlite:///{tmp_path / 'local.db'}"
    monkeypatch.setenv("PERFGUARD_STORAGE_URL", "postgresql+psycopg://u:secret@db/perf")
    assert load_config(path).storage_url() == "postgresql+psycopg://u:secret@db/perf"
