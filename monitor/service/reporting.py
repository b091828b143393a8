"""Reports and email as the service runs them: the static site, the digest, and alerts routed to owners.

Routing: every model's owners get its alerts and find it in their digest; the `[email] recipients`
(a platform team) get every model. Each email is claimed in storage before it is sent (see
storage/notifications.py): one alert per finding, action or rule alert and recipient, however many
runs see the finding, and one digest per cron slot and recipient. An email that cannot be delivered
is recorded as failed with its error, tried again on later passes, and written to the report's
`outbox/` as an .eml file, so nothing it said is lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger

from monitor.config import EmailConfig, LoadedConfig
from monitor.core.actions import ActionRecord
from monitor.core.series import FindingRecord
from monitor.service.mailer import Mailer
from reports.charts import ChartDrawer
from reports.data import (
    FleetReport,
    ModelView,
    ReportedModel,
    fleet,
    gather,
    lead_first,
    recent_host_events,
)
from reports.mail import Delivery, SmtpSettings, build_message, send
from reports.render import (
    IMAGE_DIR,
    RenderedEmail,
    Site,
    render_alert,
    render_digest,
    write_site,
)
from storage import findings as findings_store
from storage import notifications, queries
from storage.actions import actions
from storage.db import Database
from storage.notifications import Claim
from storage.rule_events import RuleEvent, events

log = logging.getLogger(__name__)

ALERT_LOOKBACK = timedelta(days=1)  # older findings and actions are not announced (e.g. email just enabled)
OUTBOX = "outbox"


@dataclass(frozen=True, slots=True)
class Sent:
    """One email sent (or not): to whom, about what, and how it went."""

    kind: str
    recipient: str
    subject: str
    subjects: list[str]  # the notification keys it carried (finding:12, ...)
    delivery: Delivery
    saved_to: Path | None = None  # the .eml kept on disk when it could not be delivered

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "recipient": self.recipient, "subject": self.subject, "about": self.subjects,
                "ok": self.delivery.ok, "attempts": self.delivery.attempts, "error": self.delivery.error,
                "refused": list(self.delivery.refused), "saved_to": str(self.saved_to) if self.saved_to else None}


@dataclass(slots=True)
class AlertItems:
    """What one model has to announce: new findings, rule alerts without a finding, actions."""

    findings: list[FindingRecord] = field(default_factory=list)
    rule_alerts: list[RuleEvent] = field(default_factory=list)
    actions: list[ActionRecord] = field(default_factory=list)

    def keyed(self) -> dict[str, object]:
        items: dict[str, object] = {}
        items.update({f"finding:{f.id}": f for f in self.findings})
        items.update({f"rule_event:{e.id}": e for e in self.rule_alerts})
        items.update({f"action:{a.id}": a for a in self.actions})
        return items


def reported_models(
    loaded: LoadedConfig, names: Sequence[str] | None = None, db: Database | None = None
) -> list[ReportedModel]:
    """The config's models (or some of them) as reports see them; with `db`, also the models only the
    database knows (removed from the config, or benchmarked by another host), which keep their history."""
    models = [
        ReportedModel(name=m.name, owners=tuple(m.owners), slo=dict(m.slo), device=m.device, factory=m.factory)
        for m in loaded.config.models
        if names is None or m.name in names
    ]
    if db is not None:
        known = {m.name for m in loaded.config.models}
        models += [
            ReportedModel(name=info.name, device=info.device, factory=info.factory, configured=False)
            for info in queries.list_models(db)
            if info.name not in known and (names is None or info.name in names)
        ]
    return models


def report_dir(loaded: LoadedConfig, out: Path | None = None) -> Path:
    return out if out is not None else loaded.base_dir / loaded.config.reports.out_dir


def gather_report(db: Database, loaded: LoadedConfig, names: Sequence[str] | None = None) -> FleetReport:
    return gather(db, reported_models(loaded, names, db), per_series=loaded.config.reports.runs_per_series)


def write_report(db: Database, loaded: LoadedConfig, out: Path | None = None) -> Site:
    """Gather and write the static site; the pages written. A first report (no charts on disk yet)
    starts its chart-drawing processes before reading the database, so their start-up overlaps it."""
    target = report_dir(loaded, out)
    with ChartDrawer(loaded.config.reports.workers) as drawer:
        images = target / IMAGE_DIR
        if not images.is_dir() or not any(images.iterdir()):
            drawer.warm_up()  # while the data is read
        return write_site(gather_report(db, loaded), target, drawer=drawer)


def smtp_settings(email: EmailConfig, base_dir: Path, environ: Mapping[str, str] = os.environ) -> SmtpSettings:
    """Delivery settings, with the password taken from the environment now (never stored)."""
    ca_file = str(base_dir / email.ca_file) if email.ca_file else None
    return SmtpSettings(
        host=email.smtp_host, port=email.smtp_port, security=email.security, username=email.username,
        password=environ.get(email.password_env) or None, ca_file=ca_file, timeout_s=email.timeout_s,
        attempts=email.attempts, backoff_s=email.backoff_s,
    )


def routes(models: Sequence[ReportedModel], everyone: Sequence[str]) -> dict[str, list[str]]:
    """Recipient -> the models they hear about: owners their own, `everyone` (the `[email]
    recipients`) all; models only the database knows have no owners, so only `everyone` hears of them."""
    routed: dict[str, list[str]] = defaultdict(list)
    for model in models:
        for recipient in dict.fromkeys([*model.owners, *everyone]):
            routed[recipient].append(model.name)
    return dict(routed)


def digest_slot(cron: str, now: datetime) -> datetime:
    """The digest's cron time at or before `now`: its key, so that one slot is sent once."""
    trigger = CronTrigger.from_crontab(cron, timezone=UTC)
    slot, probe = None, now - timedelta(days=32)
    while (nxt := trigger.get_next_fire_time(slot, probe)) is not None and nxt <= now:
        slot, probe = nxt, nxt + timedelta(seconds=1)
    return (slot or now).replace(microsecond=0)


def send_digests(
    db: Database, loaded: LoadedConfig, *, key: str, now: datetime | None = None, report: FleetReport | None = None,
) -> list[Sent]:
    """Send each recipient the digest of their models, once per `key` (a cron slot, or a manual send)."""
    email = _email(loaded)
    now = now or datetime.now(UTC)
    report = report or gather_report(db, loaded)
    routed = routes([view.model for view in report.models], email.recipients)
    if not routed:
        log.info("digest: no owners or recipients configured, nothing to send")
        return []
    wanted = {r: report.only(names) for r, names in routed.items()}
    emails = {r: render_digest(part, r, email.report_url) for r, part in wanted.items()}
    claimed = notifications.claim(
        db, "digest", [Claim(f"digest:{key}", r, emails[r].subject) for r in wanted], now
    )
    return [_deliver(db, loaded, "digest", n.recipient, emails[n.recipient], [n.id], [n.subject_key], now)
            for n in claimed]


def send_alerts(db: Database, loaded: LoadedConfig, model: str, *, now: datetime | None = None) -> list[Sent]:
    """Announce what is new for `model` (findings, rule alerts, actions) to its recipients, once each."""
    email = _email(loaded)
    if not email.alerts:
        return []
    now = now or datetime.now(UTC)
    items = new_items(db, model, now)
    keyed = items.keyed()
    if not keyed:
        return []
    report = gather_report(db, loaded, [model])
    [view] = report.models
    recipients = list(routes([view.model], email.recipients))
    if not recipients:
        return []
    rendered = render_alert(view, report, items.findings, items.rule_alerts, items.actions,
                            email.report_url)
    claimed = notifications.claim(
        db, "alert", [Claim(k, r, rendered.subject, model) for r in recipients for k in keyed], now
    )
    by_recipient: dict[str, list[notifications.Notification]] = defaultdict(list)
    for n in claimed:
        by_recipient[n.recipient].append(n)
    sent = []
    for recipient, rows in by_recipient.items():
        mine = {n.subject_key for n in rows}
        part = AlertItems(
            [f for f in items.findings if f"finding:{f.id}" in mine],
            [e for e in items.rule_alerts if f"rule_event:{e.id}" in mine],
            [a for a in items.actions if f"action:{a.id}" in mine],
        )
        message = rendered if len(mine) == len(keyed) else render_alert(
            view, report, part.findings, part.rule_alerts, part.actions, email.report_url)
        sent.append(_deliver(db, loaded, "alert", recipient, message, [n.id for n in rows],
                             sorted(mine), now))
    return sent


def new_items(db: Database, model: str, now: datetime) -> AlertItems:
    """What `model` has to announce from the last day: open regressions, rule alerts that name no
    finding (an SLO breach), and optimisation actions. Storage decides which were already sent."""
    since = now - ALERT_LOOKBACK
    items = AlertItems()
    items.findings = sorted(  # latency first: it leads the subject line
        (f for f in findings_store.findings(db, model, state="open")
         if f.verdict == "regression" and f.first_seen is not None and f.first_seen >= since),
        key=lead_first,
    )
    items.rule_alerts = [
        e for e in events(db, model, limit=50)
        if e.outcome == "alert" and e.finding_id is None and e.created_at >= since
    ]
    items.actions = [a for a in actions(db, model, limit=50) if a.created_at is not None and a.created_at >= since]
    return items


def _deliver(
    db: Database, loaded: LoadedConfig, kind: str, recipient: str, rendered: RenderedEmail, ids: list[int],
    keys: list[str], now: datetime,
) -> Sent:
    email = _email(loaded)
    message = build_message(rendered.subject, email.sender, [recipient], rendered.html, rendered.text,
                            rendered.images, {"X-Perfguard-Kind": kind})
    delivery = send(message, smtp_settings(email, loaded.base_dir))
    notifications.finish(db, ids, ok=delivery.ok, attempts=delivery.attempts, error=delivery.error, now=now,
                         permanent=delivery.permanent)
    saved = None
    if not delivery.ok:
        outbox = report_dir(loaded) / OUTBOX
        outbox.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(f"{recipient}|{'|'.join(keys)}".encode()).hexdigest()[:10]
        saved = outbox / f"{now:%Y%m%dT%H%M%S}-{kind}-{_safe(recipient)}-{digest}.eml"
        saved.write_bytes(bytes(message))
        log.error("%s to %s not delivered (%s); kept in %s", kind, recipient, delivery.error, saved)
    else:
        log.info("%s sent to %s: %s", kind, recipient, rendered.subject)
    return Sent(kind, recipient, rendered.subject, keys, delivery, saved)


def _email(loaded: LoadedConfig) -> EmailConfig:
    if loaded.config.email is None:
        raise EmailNotConfigured(f"{loaded.path}: no [email] section: set smtp_host and sender to send reports")
    return loaded.config.email


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.@_-]+", "_", text)[:60]


class ReportKeeper:
    """The daemon's report and mail: the site refreshed after each model's runs (one refresh at a
    time), alerts after each check, the digest on its cron. Failures are logged, never raised: a
    report must not stop the benchmarks.

    A refresh after one model's runs reads only that model and rewrites only the index and its page,
    keeping the other models' views from the last full read: on a benchmark host the report must not
    take the CPU the benchmarks measure. A full read and rewrite (which also removes stale files)
    happens at start, every `FULL_EVERY_S`, and whenever the configured models change.
    """

    DIGEST_JOB = "task:digest"
    FULL_EVERY_S = 900.0

    def __init__(self) -> None:
        self._writing = threading.Lock()
        self._views: dict[str, ModelView] = {}
        self._full_at: float | None = None
        self._models: tuple[str, ...] = ()
        self._mail_context: tuple[Database, LoadedConfig] | None = None  # for the mail thread's retries
        self.mailer = Mailer(idle=self._retry_failed)

    def refresh(self, db: Database, loaded: LoadedConfig, model: str | None = None) -> Site | None:
        if not loaded.config.reports.refresh:
            return None
        try:
            with self._writing:
                return self._refresh(db, loaded, model)
        except Exception:
            log.exception("report refresh failed; the previous report stays")
            return None

    def _refresh(self, db: Database, loaded: LoadedConfig, model: str | None) -> Site:
        names = tuple(m.name for m in loaded.config.models)
        stale = self._full_at is None or time.monotonic() - self._full_at > self.FULL_EVERY_S
        if model is None or stale or names != self._models or model not in self._views:
            site = write_report(db, loaded)
            self._views = {view.model.name: view for view in site.report.models}
            self._full_at, self._models = time.monotonic(), names
            return site
        [view] = gather_report(db, loaded, [model]).models
        self._views[model] = view
        report = fleet(list(self._views.values()), db.display_location(), recent_host_events(db))
        return write_site(report, report_dir(loaded), workers=1, only=[model])

    def publish(self, db: Database, loaded: LoadedConfig, model: str) -> None:
        """Refresh the report, then hand the model's alerts to the mail thread (never sent here: this
        is the thread that runs benchmarks)."""
        self.refresh(db, loaded, model)
        if loaded.config.email is not None and loaded.config.email.alerts:
            self._mail_context = (db, loaded)
            self.mailer.submit(f"alerts:{model}", lambda: send_alerts(db, loaded, model))

    def digest(self, db: Database, loaded: LoadedConfig) -> None:
        email = loaded.config.email
        if email is None or email.digest_cron is None:
            return
        self._mail_context = (db, loaded)
        key = digest_slot(email.digest_cron, datetime.now(UTC)).isoformat()
        self.mailer.submit(f"digest:{key}", lambda: send_digests(db, loaded, key=key))

    def close(self, wait_s: float = 0.0) -> None:
        """Stop the mail thread without waiting for a slow server (what it was sending is retried)."""
        self.mailer.stop(wait_s)

    def _retry_failed(self) -> None:
        """The mail thread's idle pass: send again what failed once its wait is over."""
        if self._mail_context is None:
            return
        db, loaded = self._mail_context
        if loaded.config.email is None:
            return
        now = datetime.now(UTC)
        configured = {m.name for m in loaded.config.models}
        for model in sorted({m for m, _ in notifications.due_for_retry(db, "alert", now) if m in configured}):
            send_alerts(db, loaded, model, now=now)
        for _, subject_key in notifications.due_for_retry(db, "digest", now):
            send_digests(db, loaded, key=subject_key.removeprefix("digest:"), now=now)


class EmailNotConfigured(LookupError):
    """Email was asked for, but the config has no [email] section."""
