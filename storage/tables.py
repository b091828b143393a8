"""The typed ORM schema: the one description of the tables, which migrations must match exactly.

Each run is split over three tables so that the hot path stays narrow: `runs` (what ran, when, how it
ended, the environment), `run_metrics` (one typed column per `RunMetrics` field, read by trend queries)
and `run_samples` (one compressed blob of raw latencies, read only when asked for).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from monitor.core.runs import RUN_STATUSES
from monitor.core.series import SERIES_MODES


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend: SQLite keeps no zone, PostgreSQL answers in its own."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive time is ambiguous; guessing would shift a series by hours without anyone noticing.
            raise ValueError(f"naive datetime {value.isoformat()} given where an aware one is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    # Fixed constraint names, so that migrations can refer to them on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy's declarative base reads it as a class attribute
        datetime: UTCDateTime(),
        float: Double(),  # explicit: the default for `float` differs between SQLAlchemy 2.0 and 2.1
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class ModelRow(Base):
    """A model under watch, as registered from the config (or first seen in a stored run)."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    factory: Mapped[str | None] = mapped_column(String(500))
    device: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class VariantRow(Base):
    """A form of a model that can be benchmarked: the baseline, or an optimised artifact derived from one."""

    __tablename__ = "variants"
    __table_args__ = (
        UniqueConstraint("model_id", "name"),
        # At most one active variant per model, enforced by the database; queries keep it at exactly one.
        Index(
            "uq_variants_one_active",
            "model_id",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))
    artifact_path: Mapped[str | None] = mapped_column(String(1000))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("variants.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    is_active: Mapped[bool] = mapped_column(default=False)


class RunRow(Base):
    """One benchmark of one variant at one batch size; failed and timed-out runs are stored too."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in RUN_STATUSES) + ")", name="status"
        ),
        CheckConstraint("mode IN (" + ", ".join(f"'{m}'" for m in SERIES_MODES) + ")", name="mode"),
        # "The last N runs of one model (at one batch size)" is a range scan on these, newest first;
        # id breaks ties between equal start times the same way on every backend.
        Index("ix_runs_model_batch_started", "model_id", "batch_size", "started_at", "id"),
        Index("ix_runs_model_started", "model_id", "started_at", "id"),
        # A fleet job's run, stored once however often the job is delivered (see storage/queries.py).
        Index("uq_runs_idempotency_key", "idempotency_key", unique=True),
        # A host's newest runs, for its host-speed probe series (detection of host events).
        Index("ix_runs_host_name_started", "host_name", "started_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"))
    batch_size: Mapped[int]
    device: Mapped[str] = mapped_column(String(64))
    # The series' mode (infer, train, load) and callers at once (load), monitor.core.series.SERIES_MODES.
    mode: Mapped[str] = mapped_column(String(8), default="infer", server_default="infer")
    concurrency: Mapped[int] = mapped_column(default=1, server_default="1")
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    env: Mapped[dict[str, Any]]
    host: Mapped[dict[str, Any]]
    flags: Mapped[list[str]]
    details: Mapped[dict[str, Any]]
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    # The frozen reference this run was timed against (a relative run), None when measured absolutely.
    # No foreign key: adding one to this large table would rebuild it on SQLite, and a run must never
    # be refused or changed because of its reference (reference_artifacts rows are never deleted).
    reference_id: Mapped[int | None]
    host_name: Mapped[str | None] = mapped_column(String(255))  # env["host"], as a column to query by

    metrics: Mapped[RunMetricsRow] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    samples: Mapped[RunSamplesRow | None] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class RunMetricsRow(Base):
    """The figures of one run, one column per `RunMetrics` field (a test keeps the two in step)."""

    __tablename__ = "run_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    latency_ms_p50: Mapped[float | None]
    latency_ms_p90: Mapped[float | None]
    latency_ms_p99: Mapped[float | None]
    latency_ms_mean: Mapped[float | None]
    latency_ms_std: Mapped[float | None]
    latency_ms_min: Mapped[float | None]
    latency_ms_max: Mapped[float | None]
    ci95_rel: Mapped[float | None]
    samples: Mapped[int | None]
    throughput_per_s: Mapped[float | None]
    peak_rss_mb: Mapped[float | None]
    cuda_peak_mem_mb: Mapped[float | None]
    model_size_mb: Mapped[float | None]
    params: Mapped[int | None]
    accuracy: Mapped[float | None]
    gpu_util_pct: Mapped[float | None]
    gpu_power_w: Mapped[float | None]
    energy_j_per_inference: Mapped[float | None]
    rel_to_reference: Mapped[float | None]
    rel_to_reference_low: Mapped[float | None]
    rel_to_reference_high: Mapped[float | None]
    rel_p99_to_reference: Mapped[float | None]
    reference_p50_ms: Mapped[float | None]
    reference_p99_ms: Mapped[float | None]
    probe_blas_ms: Mapped[float | None]
    probe_python_ms: Mapped[float | None]
    probe_cuda_ms: Mapped[float | None]


class RunSamplesRow(Base):
    """The raw per-iteration latencies of one run as one blob (see `storage.samples`)."""

    __tablename__ = "run_samples"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    encoding: Mapped[str] = mapped_column(String(32))
    count: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ReferenceRow(Base):
    """A frozen copy of a model variant, benchmarked beside the live model to tell model from host."""

    __tablename__ = "reference_artifacts"
    __table_args__ = (
        Index("ix_reference_artifacts_series", "variant_id", "device", "batch_size", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    device: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int]  # an exported program is specialised to its example inputs' shapes
    # The series' mode (infer, train, load) and callers at once (load), monitor.core.series.SERIES_MODES.
    mode: Mapped[str] = mapped_column(String(8), default="infer", server_default="infer")
    concurrency: Mapped[int] = mapped_column(default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    artifact: Mapped[dict[str, Any]]  # kind, path, sha256, factory, torch version, fallbacks
    measured: Mapped[dict[str, Any]]  # the live-vs-reference A/B taken when it was frozen
    # Set when the copy stopped loading or reproducing its output (a library upgrade, say): the series
    # then reads probe-normalised latencies until a new baseline is accepted; it is never re-frozen
    # from the live model behind the user's back, which could absorb the very regression it must show.
    lost_at: Mapped[datetime | None]
    lost_reason: Mapped[str | None] = mapped_column(Text)


class BaselineRow(Base):
    """An accepted baseline: detection of one series reads only runs from `since_run_id` on."""

    __tablename__ = "baselines"
    __table_args__ = (Index("ix_baselines_model_accepted", "model_id", "accepted_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    device: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int]
    # The series' mode (infer, train, load) and callers at once (load), monitor.core.series.SERIES_MODES.
    mode: Mapped[str] = mapped_column(String(8), default="infer", server_default="infer")
    concurrency: Mapped[int] = mapped_column(default=1, server_default="1")
    since_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    since: Mapped[datetime]
    accepted_at: Mapped[datetime] = mapped_column(default=utc_now)
    note: Mapped[str | None] = mapped_column(Text)


class EnvChangeRow(Base):
    """The environment of a model's runs changed at `run_id` (torch, GPU, driver, threads, host...)."""

    __tablename__ = "env_changes"
    __table_args__ = (UniqueConstraint("run_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    diff: Mapped[dict[str, Any]]  # field -> [before, after]


class FindingRow(Base):
    """A change of one metric of one series, kept up to date as runs arrive (never duplicated)."""

    __tablename__ = "findings"
    __table_args__ = (
        CheckConstraint("state IN ('open', 'resolved')", name="state"),
        CheckConstraint("verdict IN ('regression', 'improvement')", name="verdict"),
        Index("ix_findings_model_state", "model_id", "state"),
        Index("ix_findings_series", "variant_id", "device", "batch_size", "metric"),
        CheckConstraint("reading IN ('absolute', 'relative', 'reference', 'normalised')", name="reading"),
        CheckConstraint("kind IN ('step', 'drift')", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    device: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int]
    # The series' mode (infer, train, load) and callers at once (load), monitor.core.series.SERIES_MODES.
    mode: Mapped[str] = mapped_column(String(8), default="infer", server_default="infer")
    concurrency: Mapped[int] = mapped_column(default=1, server_default="1")
    metric: Mapped[str] = mapped_column(String(64))
    # A step (a new level since change_run_id) or a drift (a steady movement since then: `drift`).
    kind: Mapped[str] = mapped_column(String(8), default="step", server_default="step")
    drift: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # slope per run and per day, runs
    # Which series showed it (monitor/detection/readings.py): the absolute latency, the model against
    # its frozen reference, the reference against the host probe, or the model against the probe.
    reading: Mapped[str] = mapped_column(String(16), default="absolute", server_default="absolute")
    change: Mapped[str] = mapped_column(String(8))  # up | down
    verdict: Mapped[str] = mapped_column(String(16))  # regression | improvement
    state: Mapped[str] = mapped_column(String(16), default="open")
    resolution: Mapped[str | None] = mapped_column(String(200))
    change_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    change_at: Mapped[datetime]
    before: Mapped[dict[str, Any]]  # median, low, high, runs
    after: Mapped[dict[str, Any]]
    rel_change: Mapped[float]
    p_value: Mapped[float]
    samples: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # raw-sample confirmation
    cause: Mapped[str | None] = mapped_column(String(16))  # model | environment | unknown
    confirmation: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the A/B against the reference
    env_diff: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    diagnosis: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # profile diff: where the time went
    first_seen: Mapped[datetime] = mapped_column(default=utc_now)
    last_seen: Mapped[datetime] = mapped_column(default=utc_now)
    resolved_at: Mapped[datetime | None]


class HostEventRow(Base):
    """The host itself got slower or faster: its speed probe moved, whatever the models did.

    A host event explains latency findings away rather than raising one: it is shown in the report
    and on /metrics, never as a model's regression.
    """

    __tablename__ = "host_events"
    __table_args__ = (
        CheckConstraint("state IN ('open', 'resolved')", name="state"),
        Index("ix_host_events_host_state", "host_name", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    host_name: Mapped[str] = mapped_column(String(255))
    # What moved: a probe figure (probe_blas_ms, ...), or a model's frozen reference with no
    # environment change to explain it ("<model> <series> reference").
    signal: Mapped[str] = mapped_column(String(300))
    change: Mapped[str] = mapped_column(String(8))  # up (slower) | down (faster)
    state: Mapped[str] = mapped_column(String(16), default="open")
    change_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    change_at: Mapped[datetime]
    before: Mapped[dict[str, Any]]  # median, low, high, runs
    after: Mapped[dict[str, Any]]
    rel_change: Mapped[float]
    p_value: Mapped[float]
    first_seen: Mapped[datetime] = mapped_column(default=utc_now)
    last_seen: Mapped[datetime] = mapped_column(default=utc_now)
    resolved_at: Mapped[datetime | None]


class ActionRow(Base):
    """One optimisation decision (requantize, prune, distill) or rollback of a model, accepted or not,
    with the numbers that justified it: every candidate tried, its A/B figures and why it was kept or
    refused. Kind "amp" is advice on the training step ("advised" or "rejected"): nothing is promoted."""

    __tablename__ = "actions"
    __table_args__ = (
        CheckConstraint("kind IN ('requantize', 'prune', 'distill', 'amp', 'rollback')", name="kind"),
        CheckConstraint("status IN ('accepted', 'advised', 'rejected', 'dry_run', 'failed')", name="status"),
        Index("ix_actions_model_created", "model_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(200))  # the rule that asked for it, or "cli"
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id", ondelete="SET NULL"))
    from_variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"))
    to_variant_id: Mapped[int | None] = mapped_column(ForeignKey("variants.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    candidates: Mapped[list[Any]] = mapped_column(JSON)
    diagnosis: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    rolled_back_at: Mapped[datetime | None]


class RuleEventRow(Base):
    """A rule's decision that fired (alert, requantize, prune) or a rule that failed (error, timeout).

    `key` carries hysteresis: a rule acts once per key (one finding, one breach episode), and its
    cooldown counts from the newest event of the same rule and model.
    """

    __tablename__ = "rule_events"
    __table_args__ = (
        CheckConstraint("outcome IN ('alert', 'requantize', 'prune', 'distill', 'error', 'timeout')", name="outcome"),
        Index("ix_rule_events_model_rule_created", "model_id", "rule", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(String(200))
    key: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]]
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id", ondelete="SET NULL"))
    action_id: Mapped[int | None] = mapped_column(ForeignKey("actions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class NotificationRow(Base):
    """One email about one subject (a finding, an action, a digest) to one recipient, and how it went.

    The unique (kind, subject, recipient) is what makes an alert go out once: a sender claims its row
    before sending, so a second pass, a restart or another host finds it taken.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("kind", "subject_key", "recipient"),
        CheckConstraint("kind IN ('alert', 'digest')", name="kind"),
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        Index("ix_notifications_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    subject_key: Mapped[str] = mapped_column(String(200))  # finding:12, action:3, rule_event:7, digest:<when>
    recipient: Mapped[str] = mapped_column(String(320))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)  # the email's subject line
    attempts: Mapped[int] = mapped_column(default=0)  # SMTP tries over every pass
    passes: Mapped[int] = mapped_column(default=0)  # sending passes that tried it
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)
    sent_at: Mapped[datetime | None]
