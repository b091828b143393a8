"""Digest and alert emails through a real SMTP server (aiosmtpd): parts, images, routing, once-only alerts,
an undeliverable email that is recorded, kept on disk and sent on a later pass, a permanent refusal that
is not, and a mail server that never answers holding up nothing."""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from monitor.service.mailer import Mailer
from monitor.service.reporting import (
    ReportKeeper,
    digest_slot,
    send_alerts,
    send_digests,
)
from storage import notifications
from storage.db import Database
from tests.cli_helpers import free_port, perfguard
from tests.net_helpers import black_hole
from tests.report_helpers import history_runs, make_fleet, report_config, seed
from tests.test_mail import (  # noqa: F401 - fixtures
    PASSWORD,
    USER,
    Authenticator,
    server_tls,
    start_server,
    tls_files,
)

EVIL = "<script>alert(1)</script>"


class Inbox:
    """An aiosmtpd handler keeping what it receives: (envelope recipients, parsed message)."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def to(self, recipient: str) -> list[EmailMessage]:
        return [m for rcpt, m in self.received if recipient in rcpt]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def email_section(port: int, **extra: str) -> str:
    lines = ['[email]', 'smtp_host = "127.0.0.1"', f"smtp_port = {port}", 'sender = "perfguard@example.com"',
             'recipients = ["platform@example.com"]', "attempts = 2", "backoff_s = 0.05", "timeout_s = 5",
             'report_url = "http://bench-1:9307/"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def parts(message: EmailMessage) -> tuple[str, str, dict[str, bytes]]:
    """The plain text, the HTML and the images by Content-ID of a received message, checking its shape."""
    assert message.get_content_type() == "multipart/alternative"
    first, second = message.get_payload()
    assert first.get_content_type() == "text/plain"
    assert second.get_content_type() == "multipart/related"
    html_part, *images = second.get_payload()
    assert html_part.get_content_type() == "text/html"
    by_cid = {img["Content-ID"].strip("<>"): img.get_payload(decode=True) for img in images}
    return first.get_content(), html_part.get_content(), by_cid


def assert_every_cid_resolves(html: str, images: dict[str, bytes]) -> None:
    referenced = set(re.findall(r'src="cid:([^"]+)"', html))
    assert referenced, "the HTML shows no image"
    assert referenced == set(images), (referenced, set(images))
    assert all(data.startswith(b"\x89PNG") for data in images.values())


def assert_fits_a_mail_column(html: str, width: int = 600) -> None:
    """What a 600 px mail column needs: a page no wider, images sized by attribute within it, and
    tables of few enough columns (the site's 10-column fleet table is ~900 px)."""
    assert re.search(r'class="page mail"[^>]*style="[^"]*max-width: ?600px', html), "no 600 px page"
    widths = [int(w) for w in re.findall(r'<img [^>]*width="(\d+)"', html)]
    assert widths and max(widths) <= width - 48, widths
    for table in re.findall(r"<table.*?</table>", html, flags=re.DOTALL):
        header = re.search(r"<tr[^>]*>(.*?)</tr>", table, flags=re.DOTALL)
        assert header is None or header.group(1).count("<th") <= 5, header.group(1)


def test_report_email_sends_each_owner_a_digest_of_their_models_only(tmp_path: Path, smtp) -> None:
    inbox, port = smtp
    loaded, db = make_fleet(tmp_path, extra=email_section(port))
    db.close()
    result = perfguard("report", "--email", "--json", config=loaded.path)
    assert result.returncode == 0, result
    assert len(result.json()["emails"]) == 3
    assert {r for rcpt, _ in inbox.received for r in rcpt} == {
        "vision@example.com", "ranking@example.com", "platform@example.com"}
    [vision] = inbox.to("vision@example.com")
    text, html, images = parts(vision)
    assert "seed-cnn" in html and "broken" in html and ">mlp<" not in html and "mlp [" not in text
    assert "seed-cnn [regressed]" in text and "broken [failing]" in text
    assert_every_cid_resolves(html, images)
    assert 'style="' in html and "<style" not in html  # CSS inlined for mail clients
    assert vision["Subject"].startswith("perfguard digest: 1 failing, 1 regressed of 2 models")
    assert vision["Auto-Submitted"] == "auto-generated"  # RFC 3834: no vacation replies to it
    assert_fits_a_mail_column(html)
    [ranking] = inbox.to("ranking@example.com")
    assert "seed-cnn" not in ranking.get_body(("html",)).get_content()
    [platform] = inbox.to("platform@example.com")
    assert all(name in platform.get_body(("plain",)).get_content() for name in ("seed-cnn", "mlp", "broken"))
    assert (loaded.base_dir / "site" / "index.html").is_file()  # the report is written too


def test_a_digest_slot_is_sent_once(tmp_path: Path, smtp) -> None:
    inbox, port = smtp
    loaded, db = make_fleet(tmp_path, extra=email_section(port, digest_cron='"0 7 * * *"'))
    with db:
        slot = digest_slot("0 7 * * *", datetime(2026, 11, 30, 9, 30, tzinfo=UTC))
        assert slot == datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
        first = send_digests(db, loaded, key=slot.isoformat())
        again = send_digests(db, loaded, key=slot.isoformat())
    assert len(first) == 3 and all(s.delivery.ok for s in first)
    assert again == [] and len(inbox.received) == 3


def test_an_alert_goes_out_once_per_finding_and_action_not_per_run(tmp_path: Path, smtp) -> None:
    inbox, port = smtp
    loaded, db = make_fleet(tmp_path, extra=email_section(port))
    with db:
        sent = send_alerts(db, loaded, "seed-cnn")
        assert {s.recipient for s in sent} == {"vision@example.com", "platform@example.com"}
        [message] = inbox.to("vision@example.com")
        text, html, images = parts(message)
        assert message["Subject"].startswith("perfguard alert: seed-cnn: latency_ms_p50 +")
        assert "latency_ms_p50" in text and "requantize rejected" in text and "dynamic_int8" in html
        assert "http://bench-1:9307/models/seed-cnn-" in html  # a link to the model's page
        assert_every_cid_resolves(html, images)
        assert_fits_a_mail_column(html)
        # More runs at the same level: the finding is still open and already announced.
        later = datetime.now(UTC) + timedelta(seconds=1)
        seed(db, loaded, history_runs("seed-cnn", 3, step=1.25, step_at=0, start=later, seed=5))
        assert send_alerts(db, loaded, "seed-cnn") == []
        assert send_alerts(db, loaded, "mlp") == []  # nothing new there
        stored = notifications.notifications(db, "alert")
    assert len(inbox.received) == 2
    assert all(n.status == "sent" and n.attempts == 1 for n in stored)
    assert {n.subject_key.split(":")[0] for n in stored} == {"finding", "action"}


def test_an_undeliverable_alert_is_recorded_kept_on_disk_and_sent_on_a_later_pass(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet
    loaded, db = make_fleet(tmp_path, extra=email_section(port))
    with db:
        sent = send_alerts(db, loaded, "seed-cnn")
        assert sent and all(not s.delivery.ok and s.delivery.attempts == 2 for s in sent)
        stored = notifications.notifications(db, "alert")
        assert stored and all(n.status == "failed" and n.error for n in stored)
        kept = sorted((loaded.base_dir / "site" / "outbox").glob("*.eml"))
        assert len(kept) == 2
        on_disk = email.message_from_bytes(kept[0].read_bytes(), policy=email.policy.default)
        assert on_disk["Subject"].startswith("perfguard alert: seed-cnn")

        inbox = Inbox()
        controller = Controller(inbox, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            assert send_alerts(db, loaded, "seed-cnn") == []  # its wait (a minute after one pass) is not over
            assert notifications.due_for_retry(db, "alert", datetime.now(UTC)) == []
            later = datetime.now(UTC) + notifications.retry_wait(1)
            assert {m for m, _ in notifications.due_for_retry(db, "alert", later)} == {"seed-cnn"}
            retried = send_alerts(db, loaded, "seed-cnn", now=later)
        finally:
            controller.stop()
        assert retried and all(s.delivery.ok for s in retried)
        assert len(inbox.received) == 2
        assert all(n.status == "sent" and n.passes == 2 and n.attempts == 3
                   for n in notifications.notifications(db, "alert"))


def test_a_hostile_model_name_is_escaped_in_the_email(tmp_path: Path, smtp) -> None:
    """A model only the database knows (runs from another host) goes to the `recipients`, escaped."""
    inbox, port = smtp
    loaded = report_config(tmp_path, [{"name": "plain"}], extra=email_section(port))
    with Database.open(loaded.storage_url()) as db:
        seed(db, loaded, history_runs(EVIL, 30, step_at=20, start=datetime.now(UTC) - timedelta(hours=5)))
        assert send_alerts(db, loaded, EVIL)
        assert send_digests(db, loaded, key="manual")
    assert len(inbox.received) == 2 and {r for rcpt, _ in inbox.received for r in rcpt} == {"platform@example.com"}
    for _, message in inbox.received:
        text, html, _ = parts(message)
        assert EVIL not in html and "&lt;script&gt;" in html
        assert EVIL in text  # plain text is not HTML: the name as it is
        assert "\n" not in message["Subject"]


def test_report_email_without_an_email_section_is_a_usage_error(tmp_path: Path) -> None:
    loaded = report_config(tmp_path, [{"name": "m"}])
    result = perfguard("report", "--email", config=loaded.path)
    assert result.returncode == 2 and "[email]" in result.stderr, result


def test_starttls_login_with_the_password_from_the_environment_which_is_never_stored(
    tmp_path: Path, start_server, server_tls, tls_files, monkeypatch: pytest.MonkeyPatch,  # noqa: F811 - fixtures
) -> None:
    """The config names the variable; the password reaches the server and nowhere else (not the
    notifications table, not the .eml kept on disk, not the config)."""
    server = start_server(tls_context=server_tls, require_starttls=True, authenticator=Authenticator(),
                          auth_required=True)
    extra = email_section(server.port, security='"starttls"', username=f'"{USER}"', password_env='"PG_SMTP_PW"',
                          ca_file=f'"{tls_files.cert}"')
    loaded, db = make_fleet(tmp_path, extra=extra)
    with db:
        monkeypatch.setenv("PG_SMTP_PW", "not-" + PASSWORD)
        refused = send_alerts(db, loaded, "seed-cnn")
        assert refused and all(not s.delivery.ok and s.delivery.attempts == 1 for s in refused)  # not retried
        assert all("auth" in (s.delivery.error or "").lower() for s in refused)
        monkeypatch.setenv("PG_SMTP_PW", PASSWORD)
        assert not any(s.delivery.permanent for s in refused)  # a config to fix, not a message to drop
        later = datetime.now(UTC) + notifications.retry_wait(1)
        sent = send_alerts(db, loaded, "seed-cnn", now=later)  # the failed alerts, on a later pass
        assert sent and all(s.delivery.ok for s in sent)
        stored = repr(notifications.notifications(db))
    assert len(server.handler.envelopes) == 2
    kept = b"".join(p.read_bytes() for p in (loaded.base_dir / "site" / "outbox").glob("*.eml"))
    for text in (stored, kept.decode(errors="replace"), loaded.path.read_text()):
        assert PASSWORD not in text


class Refuser:
    """An SMTP server that refuses every recipient for good (550)."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd
        return "550 5.1.1 no such mailbox"


def test_a_permanent_refusal_is_not_sent_again_on_later_passes(tmp_path: Path) -> None:
    port = free_port()
    controller = Controller(Refuser(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        loaded, db = make_fleet(tmp_path, extra=email_section(port))
        with db:
            sent = send_alerts(db, loaded, "seed-cnn")
            assert sent and all(not s.delivery.ok and s.delivery.permanent and s.delivery.attempts == 1 for s in sent)
            much_later = datetime.now(UTC) + timedelta(hours=12)
            assert notifications.due_for_retry(db, "alert", much_later) == []
            assert send_alerts(db, loaded, "seed-cnn", now=much_later) == []
            stored = notifications.notifications(db, "alert")
    finally:
        controller.stop()
    assert stored and all(n.status == "failed" and n.attempts == 1 and n.error.startswith("permanent: ")
                          for n in stored)


def test_a_mail_server_that_never_answers_holds_up_neither_the_runs_nor_a_stop(tmp_path: Path) -> None:
    """Alerts go to the mail thread: the benchmark thread's follow-up returns without waiting for the
    server, and stopping does not wait for it either (each attempt would wait timeout_s = 60 s)."""
    server, held = black_hole()
    try:
        section = email_section(server.getsockname()[1]).replace("timeout_s = 5", "timeout_s = 60")
        loaded, db = make_fleet(tmp_path, extra=section)
        with db:
            keeper = ReportKeeper()
            started = time.monotonic()
            keeper.publish(db, loaded, "seed-cnn")
            keeper.publish(db, loaded, "seed-cnn")
            returned = time.monotonic() - started
            deadline = time.monotonic() + 60
            while not (keeper.mailer.busy_since is not None and held) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert held, "the mail thread never connected"
            stopping = time.monotonic()
            keeper.close()
            stopped = time.monotonic() - stopping
            assert not keeper.mailer.submit("x", lambda: None)  # stopped: takes nothing more
    finally:
        server.close()
        for conn in held:
            conn.close()
    # Half an SMTP timeout at most (the report refresh runs on this thread), and no wait at all to stop.
    assert returned < 30.0 and stopped < 1.0, (returned, stopped)


def test_the_mail_thread_queues_a_model_once_while_it_waits() -> None:
    release, ran = threading.Event(), []
    mailer = Mailer()
    assert mailer.submit("alerts:a", lambda: (release.wait(10), ran.append("a")))
    deadline = time.monotonic() + 10
    while mailer.busy_since is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mailer.submit("alerts:b", lambda: ran.append("b"))
    assert not mailer.submit("alerts:b", lambda: ran.append("b again"))  # ten runs of b: one alert pass
    assert mailer.pending() == 1
    release.set()
    deadline = time.monotonic() + 10
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    mailer.stop(wait_s=5)
    assert ran == ["a", "b"]
