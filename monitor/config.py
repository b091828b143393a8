"""The TOML config: pydantic models of its shape, the one place that knows it.

Every validation error is reported as `FILE: models[1].inputs[0].shape (model "mlp"): message`, so a
user can find the line to fix; unknown keys are errors because a typo must not silently fall back to a
default. Nothing here imports torch: the factories are only checked for syntax and resolved later,
inside the worker process.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from monitor.core.catalog import RECIPES
from monitor.core.import_paths import missing
from monitor.core.metrics import SLO_MAX_METRICS, SLO_MIN_METRICS, WATCHED
from monitor.core.workloads import LOSSES, OPTIMIZERS, LoadSpec, TrainSpec

DEFAULT_CONFIG_NAME = "perfguard.toml"
STORAGE_URL_ENV = "PERFGUARD_STORAGE_URL"

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "bool")
DTYPES = FLOAT_DTYPES + INT_DTYPES

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """A config that cannot be used; `lines` each name the file and the field."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class _Strict(BaseModel):
    # strict: TOML's `true` must not pass as the number 1 (lax pydantic would coerce it).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h' -> seconds."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"expected a positive duration like '30s', '10m' or '2h', got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _check_import_path(value: str) -> str:
    if not _IMPORT_PATH.match(value):
        raise ValueError(f"expected an import path 'package.module:callable', got {value!r}")
    return value


def _check_address(value: str) -> str:
    if not re.match(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$", value):
        raise ValueError(f"expected an e-mail address like team@example.com, got {value!r}")
    return value


def _check_crontab(value: str | None) -> str | None:
    if value is not None:
        from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - 0.1 s, only for a config with a crontab

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"invalid crontab {value!r}: {exc}") from None
    return value


ImportPath = Annotated[str, Field(min_length=1)]


class InputSpec(_Strict):
    """One example input tensor: full shape including the batch dimension."""

    shape: list[Any]
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    low: int | None = None
    high: int | None = None

    @field_validator("shape", mode="before")
    @classmethod
    def _positive_ints(cls, value: Any) -> list[int]:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
        ):
            raise ValueError("expected a list of positive integers")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> InputSpec:
        if self.dtype in FLOAT_DTYPES and (self.low is not None or self.high is not None):
            raise ValueError(f"low/high apply to integer dtypes only, not {self.dtype}")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class Schedule(_Strict):
    """When the daemon benchmarks a model: a fixed interval or a crontab line."""

    every: str | None = None
    cron: str | None = None

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return _check_crontab(value)

    @model_validator(mode="after")
    def _one_of(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' or 'cron'")
        return self

    @property
    def interval_s(self) -> float | None:
        return parse_duration(self.every) if self.every else None


class DetectionOverrides(_Strict):
    """Per-model changes to the detection settings."""

    min_effect: dict[str, float] = {}
    alpha: float | None = Field(default=None, gt=0, lt=0.5)

    @field_validator("min_effect")
    @classmethod
    def _min_effect(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_min_effect(value)


class DetectionConfig(_Strict):
    """How change points become findings (see monitor/detection)."""

    # Smallest relative change worth a finding, per metric; metrics not named keep their default
    # (5 % for latency p50, throughput, memory and energy; 10 % for p99; 0.5 % for accuracy).
    min_effect: dict[str, float] = {}
    alpha: float = Field(default=0.001, gt=0, lt=0.5)
    # Runs flagged as measured on a busy host: "exclude" them from the series (the default: contention
    # only ever slows a run down, so down-weighting would still bias the series upwards) or "include".
    contended: Literal["exclude", "include"] = "exclude"
    confirm: bool = True  # A/B the current model against its frozen reference on a new regression
    artifact_dir: str = "perfguard-artifacts"  # frozen references (relative to the config file)
    history: int = Field(default=2000, ge=20)  # newest runs per series that detection reads

    @field_validator("min_effect")
    @classmethod
    def _min_effect(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_min_effect(value)


def _check_min_effect(value: dict[str, float]) -> dict[str, float]:
    for key, effect in value.items():
        if key not in WATCHED:
            raise ValueError(f"unknown metric {key!r}; expected one of: {', '.join(WATCHED)}")
        if not 0 < effect < 10:
            raise ValueError(f"{key}: expected a relative change such as 0.05, got {effect}")
    return value


def _check_recipes(value: list[str] | None) -> list[str] | None:
    for name in value or []:
        if name not in RECIPES:
            hint = difflib.get_close_matches(name, list(RECIPES), n=1)
            raise ValueError(f"unknown recipe {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                             f"; expected one of: {', '.join(RECIPES)}"))
    return value


class OptimizeOverrides(_Strict):
    """Per-model changes to the optimisation settings (see OptimizeConfig)."""

    min_speedup: float | None = Field(default=None, gt=0, lt=1)
    accuracy_tolerance: float | None = Field(default=None, ge=0, lt=1)
    top1_tolerance: float | None = Field(default=None, ge=0, lt=1)
    relative_error_tolerance: float | None = Field(default=None, ge=0)
    fidelity: Literal["auto", "top1", "relative_error"] | None = None
    recipes: list[str] | None = None
    dry_run: bool | None = None

    @field_validator("recipes")
    @classmethod
    def _recipes(cls, value: list[str] | None) -> list[str] | None:
        return _check_recipes(value)


class PromotionHook(_Strict):
    """Told when a model gets a new active variant, so a serving system can load the new artifact:
    a command (run with the promotion as JSON on stdin and PERFGUARD_* variables) or a URL (POSTed)."""

    command: list[str] | None = None
    url: str | None = Field(default=None, pattern=r"^https?://")
    timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_of(self) -> PromotionHook:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' or 'url'")
        if self.command is not None and not self.command:
            raise ValueError("command: expected the program and its arguments")
        return self


class OptimizeConfig(_Strict):
    """How an optimisation action decides: a candidate is kept only if it is really better.

    Latency must improve by `min_speedup` (the 95 % interval of the interleaved ratio too); accuracy
    may drop by `accuracy_tolerance` (absolute) where the model has eval data, else the output must
    follow the current variant's (top-1 agreement or relative error); the model must not grow.
    """

    min_speedup: float = Field(default=0.10, gt=0, lt=1)
    accuracy_tolerance: float = Field(default=0.01, ge=0, lt=1)
    top1_tolerance: float = Field(default=0.01, ge=0, lt=1)
    relative_error_tolerance: float = Field(default=0.05, ge=0)
    fidelity: Literal["auto", "top1", "relative_error"] = "auto"
    recipes: list[str] | None = None  # default: every suitable recipe of the catalog
    max_candidates: int = Field(default=4, ge=1)
    dry_run: bool = False  # decide and record, but never promote
    on_promote: PromotionHook | None = None

    @field_validator("recipes")
    @classmethod
    def _recipes(cls, value: list[str] | None) -> list[str] | None:
        return _check_recipes(value)

    def for_model(self, overrides: OptimizeOverrides) -> OptimizeConfig:
        """These settings with a model's overrides applied."""
        return self.model_copy(update=overrides.model_dump(exclude_none=True))


def _check_batch_sizes(value: list[int] | None) -> list[int] | None:
    """A model's or its training step's batch sizes: at least one, each positive, none repeated."""
    if value is not None:
        if not value or any(b <= 0 for b in value):
            raise ValueError("expected a non-empty list of positive integers")
        if len(set(value)) != len(value):
            raise ValueError("batch sizes must not repeat")
    return value


def _named_or_import_path(value: str, names: Any, what: str) -> str:
    if value in names or _IMPORT_PATH.match(value):
        return value
    raise ValueError(f"{what} {value!r} is not one of {', '.join(names)} nor an import path 'module:attr'")


class TrainConfig(_Strict):
    """A model's training step, benchmarked as series of their own (mode "train"): forward, loss,
    backward and optimiser step, one series per batch size. `fine_tune` is the hook pruned candidates
    are fine-tuned with (what a plain string `train = "module:fn"` names)."""

    loss: str = "cross_entropy"  # cross_entropy | mse | module:fn(output, inputs) -> loss
    optimizer: str = "sgd"  # sgd | adam | adamw | module:OptimizerClass
    lr: float = Field(default=0.01, gt=0)
    amp: Literal["bf16", "fp16"] | None = None
    batch_sizes: list[int] | None = None  # default: the model's batch sizes
    fine_tune: ImportPath | None = None

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        return _named_or_import_path(value, LOSSES, "loss")

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value: str) -> str:
        return _named_or_import_path(value, OPTIMIZERS, "optimizer")

    @field_validator("fine_tune")
    @classmethod
    def _fine_tune(cls, value: str | None) -> str | None:
        return value if value is None else _check_import_path(value)

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes(cls, value: list[int] | None) -> list[int] | None:
        return _check_batch_sizes(value)

    def spec(self) -> TrainSpec:
        return TrainSpec(loss=self.loss, optimizer=self.optimizer, lr=self.lr, amp=self.amp)


class LoadConfig(_Strict):
    """Concurrent load on one loaded model: N callers at once for `duration_s` (after `warmup_s`),
    one series per level, at `batch_size` (default: the model's first)."""

    concurrency: list[Annotated[int, Field(gt=0, le=256)]] = [1, 2, 4]
    duration_s: float = Field(default=5.0, gt=0, le=3600)
    warmup_s: float = Field(default=1.0, ge=0, le=600)
    batch_size: int | None = Field(default=None, gt=0)
    processes: bool = False  # callers as processes, a model each: where the GIL would decide the answer

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value):
            raise ValueError("expected a non-empty list of caller counts, none repeated")
        return value

    def levels(self) -> list[LoadSpec]:
        return [LoadSpec(c, self.duration_s, self.warmup_s, self.processes) for c in self.concurrency]


class DistillConfig(_Strict):
    """A smaller student for the distill action: trained on the model's soft targets over `data` (an
    iterable of input batches, or of (inputs, labels)) for `epochs` or `max_time_s`, whichever ends
    first, then judged like any candidate (monitor/transforms/distill.py). Without `data`, it trains
    on the model's `eval` batches less a `holdout` share, and the model's accuracy is read on that
    share alone (monitor/core/holdout.py)."""

    student: ImportPath  # factory of the student module: called with no arguments
    data: ImportPath | None = None  # the training batches: called with no arguments, iterated once per epoch
    holdout: float = Field(default=0.25, gt=0, lt=1)  # of the eval batches, kept for judging when no `data`
    temperature: float = Field(default=2.0, gt=0)
    weight: float = Field(default=0.5, ge=0, le=1)  # of the soft-target loss; the rest: labels' cross-entropy
    epochs: int = Field(default=3, ge=1, le=10_000)
    max_time_s: float = Field(default=60.0, gt=0, le=86_400)
    lr: float = Field(default=0.001, gt=0)

    @field_validator("student", "data")
    @classmethod
    def _paths(cls, value: str) -> str:
        return _check_import_path(value)


class ModelConfig(_Strict):
    """A registered model and how to benchmark it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)
    factory: ImportPath
    inputs: list[InputSpec] | None = None
    inputs_factory: ImportPath | None = None
    device: str = "cpu"
    batch_sizes: list[int] | None = None
    eval: ImportPath | None = None
    schedule: Schedule = Schedule(every="1h")
    owners: list[str] = []
    tags: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$", max_length=60)]] = []
    slo: dict[str, float] = {}
    max_time_s: float = Field(default=10.0, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    # Resident memory of the worker and its children; default: 70 % of the host's (runner.py).
    memory_limit_mb: float | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, gt=0)
    detection: DetectionOverrides = DetectionOverrides()
    # A string: the fine-tune hook, fn(model) -> model, called on pruned candidates. A table: the
    # training step to benchmark as series of its own (TrainConfig), its `fine_tune` the hook.
    train: Annotated[
        Annotated[str, Tag("str"), Field(min_length=1)] | Annotated[TrainConfig, Tag("table")],
        Discriminator(lambda v: "table" if isinstance(v, (dict, TrainConfig)) else "str"),
    ] | None = None
    load: LoadConfig | None = None  # concurrent-load series, one per caller count
    distill: DistillConfig | None = None  # the student the distill action trains
    # Called once before the model's first benchmark in a process (daemon, `perfguard run`), in a
    # worker of its own and untimed: downloads, training, caches. Its time and memory are reported.
    prepare: ImportPath | None = None
    optimize: OptimizeOverrides = OptimizeOverrides()
    # The hardware class (a Celery queue) whose workers benchmark it; default: "cpu" or "cuda".
    runs_on: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)

    @field_validator("factory", "inputs_factory", "eval", "prepare")
    @classmethod
    def _import_paths(cls, value: str | None) -> str | None:
        return value if value is None else _check_import_path(value)

    @field_validator("train")
    @classmethod
    def _train_hook(cls, value: str | TrainConfig | None) -> str | TrainConfig | None:
        return _check_import_path(value) if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"expected 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes(cls, value: list[int] | None) -> list[int] | None:
        return _check_batch_sizes(value)

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        return [_check_address(owner) for owner in value]

    @field_validator("slo")
    @classmethod
    def _slo(cls, value: dict[str, float]) -> dict[str, float]:
        known = SLO_MAX_METRICS + SLO_MIN_METRICS
        for key, bound in value.items():
            if key not in known:
                raise ValueError(f"unknown metric {key!r}; expected one of: {', '.join(known)}")
            if bound <= 0:
                raise ValueError(f"{key}: expected a positive bound, got {bound}")
        return value

    @model_validator(mode="after")
    def _inputs(self) -> ModelConfig:
        if (self.inputs is None) == (self.inputs_factory is None):
            raise ValueError("give exactly one of 'inputs' or 'inputs_factory'")
        if self.inputs is not None and not self.inputs:
            raise ValueError("inputs: expected at least one input")
        if self.batch_sizes is None and self.inputs is None:
            raise ValueError("'inputs_factory' needs 'batch_sizes' (the batch size is not known)")
        if self.distill is not None and self.distill.data is None and self.eval is None:
            raise ValueError("distill.data: missing, and the model has no 'eval' to train on (less its "
                             "held-out share): name the training batches, or an eval")
        return self

    @property
    def eval_holdout(self) -> float | None:
        """The held-out share of the eval batches that every accuracy of the model reads, when its
        student trains on the rest (a `distill` table without `data`); else None: all of them."""
        if self.distill is not None and self.distill.data is None and self.eval is not None:
            return self.distill.holdout
        return None

    def distill_params(self) -> dict[str, Any]:
        """The distill recipe's params (recipes.DEFAULT_PARAMS["distill"] names the same): the
        `distill` table, and the eval the student trains on when the table names no data."""
        assert self.distill is not None
        return {**self.distill.model_dump(), "eval": self.eval if self.eval_holdout is not None else None}

    @property
    def series_batch_sizes(self) -> list[int]:
        """One benchmark series per batch size; without `batch_sizes`, the inputs' own."""
        if self.batch_sizes:
            return list(self.batch_sizes)
        assert self.inputs is not None
        return [self.inputs[0].shape[0]]

    @property
    def fine_tune(self) -> str | None:
        """The hook pruned candidates are fine-tuned with: `train` as a string, or its `fine_tune`."""
        return self.train if isinstance(self.train, str) else self.train.fine_tune if self.train else None

    @property
    def train_step(self) -> TrainSpec | None:
        """The training step to benchmark, when `train` is a table."""
        return self.train.spec() if isinstance(self.train, TrainConfig) else None

    @property
    def train_batch_sizes(self) -> list[int]:
        """One training-step series per batch size: the table's, else the model's; none without one."""
        if not isinstance(self.train, TrainConfig):
            return []
        return list(self.train.batch_sizes or self.series_batch_sizes)

    @property
    def load_batch_size(self) -> int:
        return (self.load.batch_size if self.load else None) or self.series_batch_sizes[0]

    @property
    def series_count(self) -> int:
        """Series benchmarked per scheduled run: inference per batch size, training steps, load levels."""
        levels = len(self.load.concurrency) if self.load else 0
        return len(self.series_batch_sizes) + len(self.train_batch_sizes) + levels

    @property
    def run_limit_s(self) -> float:
        """The worker time limit of all the series of one scheduled run together."""
        load_s = sum(lv.duration_s + lv.warmup_s for lv in self.load.levels()) if self.load else 0.0
        return self.effective_timeout_s * self.series_count + load_s

    def import_paths(self) -> list[tuple[str, str]]:
        """(field, value) of every import path the worker will resolve for this model."""
        paths = [(f, getattr(self, f)) for f in ("factory", "inputs_factory", "eval", "prepare")]
        if isinstance(self.train, TrainConfig):
            paths += [("train.fine_tune", self.train.fine_tune), ("train.loss", self.train.loss),
                      ("train.optimizer", self.train.optimizer)]
        else:
            paths.append(("train", self.train))
        if self.distill is not None:
            paths += [("distill.student", self.distill.student), ("distill.data", self.distill.data)]
        return [(f, v) for f, v in paths if v and ":" in v]

    @property
    def hardware_class(self) -> str:
        """The queue of workers that may benchmark it: `runs_on`, else the kind of its device."""
        return self.runs_on or self.device.split(":")[0]

    @property
    def effective_timeout_s(self) -> float:
        """Wall-clock limit for the whole worker: import, warm-up, sampling, eval."""
        if self.timeout_s is not None:
            return self.timeout_s
        return max(120.0, 6 * self.max_time_s)


class StorageConfig(_Strict):
    url: str = "sqlite:///perfguard.db"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("expected 'sqlite:///PATH' or 'postgresql+psycopg://USER@HOST/DB'")
        return value


class EmailConfig(_Strict):
    """SMTP delivery of the digest and the alerts. The password is read from the environment variable
    named by `password_env` when mail is sent: it is never in the config, the database or a log."""

    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, gt=0, lt=65536)
    sender: str
    security: Literal["none", "starttls", "ssl"] = "none"  # starttls: port 587; ssl: implicit TLS, port 465
    username: str | None = None
    password_env: str = Field(default="PERFGUARD_SMTP_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    ca_file: str | None = None  # a private CA bundle (relative to the config file); default: the system's
    timeout_s: float = Field(default=30.0, gt=0)
    attempts: int = Field(default=3, ge=1, le=10)  # tries per email, waiting backoff_s, then twice that...
    backoff_s: float = Field(default=2.0, ge=0)
    recipients: list[str] = []  # get every model (a platform team); owners get their own models
    digest_cron: str | None = None  # e.g. "0 7 * * *" (UTC); no digest when unset
    alerts: bool = True  # an email per new finding or action, to the model's owners and `recipients`
    report_url: str | None = None  # where the report is served, for links in emails (e.g. http://host:9307/)

    @field_validator("digest_cron")
    @classmethod
    def _digest_cron(cls, value: str | None) -> str | None:
        return _check_crontab(value)

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _check_address(value)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [_check_address(v) for v in value]


class ReportsConfig(_Strict):
    """The static HTML report: where it is written and how much history it charts."""

    out_dir: str = "perfguard-reports"  # relative to the config file
    runs_per_series: int = Field(default=1000, ge=10, le=100_000)
    refresh: bool = True  # the daemon rewrites it after each model's runs and serves it on its endpoint
    workers: int = Field(default=2, ge=1, le=64)  # processes drawing charts when many changed at once


class RuleConfig(_Strict):
    """One `[[rules]]` entry; `params` are checked against the rule's own schema by `load_config`."""

    use: str = Field(min_length=1)
    models: list[str] | None = None
    params: dict[str, Any] = {}
    priority: int = 0  # higher is evaluated first
    cooldown: str = "6h"  # after a rule fires for a model, its other decisions wait this long
    timeout_s: float = Field(default=10.0, gt=0)  # a rule taking longer is abandoned and recorded

    @field_validator("cooldown")
    @classmethod
    def _cooldown(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def cooldown_s(self) -> float:
        return parse_duration(self.cooldown)


class HarnessConfig(_Strict):
    """Measurement settings shared by all models; the defaults are what bench/ validated."""

    target_ci_rel: float = Field(default=0.01, gt=0, lt=1)
    min_samples: int = Field(default=100, ge=5)
    contention_cpu_pct: float = Field(default=15.0, gt=0)
    pin_allocator: bool = True
    # Time each scheduled run against the series' frozen reference, interleaved, so that host drift
    # cancels in what detection reads (see "Detecting regressions" in the README).
    relative: bool = True
    probe: bool = True  # time the host-speed probe beside every scheduled run (host events)


class ExecutorConfig(_Strict):
    """Where benchmarks run: in the daemon's own workers (`local`), or on a fleet of Celery workers,
    one queue per hardware class (`celery`), with results in the shared database."""

    kind: Literal["local", "celery"] = "local"
    broker: str | None = Field(default=None, pattern=r"^(redis|rediss|amqp|amqps|pyamqp)://")
    enqueue_attempts: int = Field(default=3, ge=1, le=20)  # tries per job before it waits for the broker
    enqueue_backoff_s: float = Field(default=0.5, ge=0)  # wait before the 2nd try; doubles each time
    visibility_timeout_s: float = Field(default=3600.0, gt=0)  # Redis: an unacknowledged job is redelivered after this
    # A job's time after its runs: detection, the reference, rules and the actions they start.
    follow_up_s: float = Field(default=120.0, gt=0)

    def job_limit_s(self, model: ModelConfig) -> float:
        """The hard limit of one fleet job: every series' worker timeout, plus what follows the runs."""
        return model.run_limit_s + self.follow_up_s

    @model_validator(mode="after")
    def _broker(self) -> ExecutorConfig:
        if self.kind == "celery" and self.broker is None:
            raise ValueError("kind = \"celery\" needs a broker URL, e.g. broker = \"redis://127.0.0.1:6379/0\"")
        return self


class DaemonConfig(_Strict):
    """The long-running service: where it listens, how it stops, how far back it catches up."""

    listen: str = Field(default="127.0.0.1:9307", pattern=r"^[\w.\-\[\]:]+:\d{1,5}$")
    stop_timeout_s: float = Field(default=30.0, ge=0)  # a running benchmark may finish within this
    misfire_grace_s: float = Field(default=6 * 3600.0, gt=0)  # a missed run older than this is skipped
    spool_dir: str = "perfguard-spool"  # runs waiting for the database (relative to the config file)


class Config(_Strict):
    storage: StorageConfig = StorageConfig()
    daemon: DaemonConfig = DaemonConfig()
    executor: ExecutorConfig = ExecutorConfig()
    email: EmailConfig | None = None
    reports: ReportsConfig = ReportsConfig()
    harness: HarnessConfig = HarnessConfig()
    detection: DetectionConfig = DetectionConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    models: list[ModelConfig] = []
    rules: list[RuleConfig] = []

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        first: dict[str, int] = {}
        for i, model in enumerate(models):
            if model.name in first:
                raise ValueError(f"duplicate model name {model.name!r} (models[{first[model.name]}] and models[{i}])")
            first[model.name] = i
        return models

    @field_validator("rules")
    @classmethod
    def _known_models(cls, rules: list[RuleConfig], info: ValidationInfo) -> list[RuleConfig]:
        names = {m.name for m in info.data.get("models", [])}
        for i, rule in enumerate(rules):
            for name in rule.models or []:
                if name not in names:
                    raise ValueError(f"unknown model {name!r} in rules[{i}].models")
        return rules

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


class LoadedConfig(BaseModel):
    """A validated config and where it came from (relative paths resolve against its folder)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    config: Config

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def sqlite_path(self) -> Path | None:
        """The database file when storage is SQLite on disk, else None."""
        url = self.storage_url()
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:":
            return Path(url[len(prefix):])
        return None

    def storage_url(self) -> str:
        """The storage URL with a relative SQLite path anchored at the config's folder.

        PERFGUARD_STORAGE_URL, when set, replaces `storage.url`: a URL with a password belongs in the
        environment (a Kubernetes Secret, a systemd EnvironmentFile), not in the config file.
        """
        url = os.environ.get(STORAGE_URL_ENV) or self.config.storage.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:":
            db_path = Path(url[len(prefix):])
            if not db_path.is_absolute():
                return prefix + str((self.base_dir / db_path).resolve())
        return url


def load_config(path: Path | str) -> LoadedConfig:
    """Read and validate a config file; raise ConfigError naming the file and each bad field."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found (create one with `perfguard init`)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, raw, exc)) from None
    problems = _redelivered_while_running(config)
    if problems:
        raise ConfigError([f"{path}: {problem}" for problem in problems])
    if config.executor.kind == "local":  # a fleet's code lives on its workers, not on the dispatcher
        problems = _unimportable(config, path.resolve().parent)
        if problems:
            raise ConfigError([f"{path}: {problem}" for problem in problems])
    return LoadedConfig(path=path.resolve(), config=config)


def _redelivered_while_running(config: Config) -> list[str]:
    """A Redis broker hands an unacknowledged job to another worker after its visibility timeout; a
    job allowed to run longer than that would be benchmarked twice at once, each run disturbing the
    other. (RabbitMQ's equivalent, `consumer_timeout`, is a server setting: see the README.)"""
    executor = config.executor
    if executor.kind != "celery" or not (executor.broker or "").startswith("redis"):
        return []
    longest = max(config.models, key=executor.job_limit_s, default=None)
    if longest is None or executor.job_limit_s(longest) < executor.visibility_timeout_s:
        return []
    return [f"executor.visibility_timeout_s: {executor.visibility_timeout_s:g} s is not longer than the time "
            f'limit of model "{longest.name}"\'s job ({executor.job_limit_s(longest):g} s: its timeout times '
            f"{longest.series_count} series, plus follow_up_s = {executor.follow_up_s:g} s), so the "
            "broker would hand the job to a second worker while the first still runs it; raise it above the job's "
            "limit"]


def _unimportable(config: Config, base_dir: Path) -> list[str]:
    """Import paths of the models that point nowhere, found the way a worker looks (the config's
    folder first), without running them."""
    problems = []
    for i, model in enumerate(config.models):
        for field, value in model.import_paths():
            why = missing(value, [str(base_dir)])
            if why:
                problems.append(f'models[{i}].{field} (model "{model.name}"): {why}')
    return problems


def _describe(path: Path, raw: dict[str, Any], exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        where = _format_loc(loc)
        model = _model_name(raw, loc)
        if model:
            where += f' (model "{model}")'
        lines.append(f"{path}: {where}: {_message(error, raw, loc)}")
    return lines


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts type names such as "list[...]" or "function-after[...]" for unions.
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "table"})


def _format_loc(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _model_name(raw: dict[str, Any], loc: list[Any]) -> str | None:
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        models = raw.get("models")
        if isinstance(models, list) and loc[1] < len(models) and isinstance(models[loc[1]], dict):
            name = models[loc[1]].get("name")
            return str(name) if name is not None else None
    return None


def _message(error: ErrorDetails, raw: dict[str, Any], loc: list[Any]) -> str:
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = "unknown key"
        if hint:
            text += f"; did you mean {hint[0]!r}?"
        elif allowed:
            text += f"; expected one of: {', '.join(allowed)}"
        return text
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message


def _allowed_keys(parent_loc: list[Any]) -> list[str]:
    """Field names of the model found at `parent_loc`, for 'did you mean' hints."""
    model: Any = Config
    for part in parent_loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return sorted(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
