"""Report email against real SMTP servers (aiosmtpd on 127.0.0.1), no mocks: the message's
MIME structure as the server received it, inline CID images, plain / STARTTLS / implicit-TLS
delivery with a certificate that is really verified, authentication, and which failures are
retried (transient) and which are not (permanent).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import logging
import os
import re
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from reports.mail import (
    Delivery,
    InlineImage,
    SmtpSettings,
    build_message,
    inline_css,
    send,
)
from tests.cli_helpers import free_port

SENDER = "Perfguard <perfguard@example.com>"
TO = ["alice@example.com", "bob@example.org"]
USER = "reporter"
PASSWORD = "pa55-w0rd-Secret!"
CHART_1 = "chart-3f2a@perfguard"
CHART_2 = "chart-9b1c@perfguard"
HTML = (
    "<html><head><style>p{color:red} .big{font-size:20px}</style></head><body>"
    '<p class="big">Latenz ↑ 12 %</p>'
    f'<img src="cid:{CHART_1}" alt="p50"><img src="cid:{CHART_2}" alt="p99">'
    "</body></html>"
)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


@dataclass
class Server:
    handler: Recorder
    port: int


class Recorder:
    """Keeps every accepted envelope; replies with `replies` to the first DATA commands and
    refuses the recipients in `refuse`."""

    def __init__(self, replies: list[str] | None = None, refuse: frozenset[str] = frozenset()) -> None:
        self.envelopes: list[Envelope] = []
        self.replies = list(replies or [])
        self.refuse = refuse

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.replies:
            return self.replies.pop(0)
        self.envelopes.append(envelope)
        return "250 OK"


class Authenticator:
    """aiosmtpd authenticator: accepts USER/PASSWORD only, remembers who logged in."""

    def __init__(self) -> None:
        self.logins: list[str] = []

    def __call__(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == USER.encode()
            and auth_data.password == PASSWORD.encode()
        ):
            self.logins.append(auth_data.login.decode())
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1/localhost: clients trust it only via ca_file."""
    folder = tmp_path_factory.mktemp("tls")
    files = TlsFiles(cert=folder / "cert.pem", key=folder / "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(files.key), "-out", str(files.cert),
        ],
        check=True,
        capture_output=True,
    )
    return files


@pytest.fixture
def server_tls(tls_files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    return context


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Starts aiosmtpd servers on free ports (Controller kwargs go to aiosmtpd's SMTP); all stop at teardown."""
    controllers: list[Controller] = []

    def start(replies: list[str] | None = None, refuse: frozenset[str] = frozenset(), **kwargs: Any) -> Server:
        handler = Recorder(replies, refuse)
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="localhost", **kwargs)
        controller.start()
        controllers.append(controller)
        return Server(handler, port)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def images() -> list[InlineImage]:
    return [
        InlineImage(cid=CHART_1, data=os.urandom(2048), filename="p50.png"),
        InlineImage(cid=CHART_2, data=b"\x89PNG\r\n\x1a\n" + os.urandom(512)),
    ]


def report(to: list[str] = TO, **kwargs: Any) -> EmailMessage:
    args: dict[str, Any] = {
        "subject": "Latenz ↑ 12 % on resnet50",
        "sender": SENDER,
        "to": to,
        "html": HTML,
        "text": "Latenz ↑ 12 % — p50 21.4 ms (was 19.1 ms)\n",
        "images": images(),
        "headers": {"X-Perfguard-Kind": "digest"},
    }
    args.update(kwargs)
    return build_message(**args)


def received(server: Server, index: int = 0) -> EmailMessage:
    content = server.handler.envelopes[index].content
    assert isinstance(content, bytes)
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def our_log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "reports.mail")


# -- building --------------------------------------------------------------------------------------


def test_inline_css_moves_style_blocks_into_attributes() -> None:
    html = inline_css("<style>p{color:red}</style><p>x</p>")
    assert re.search(r'<p style="color:\s*red;?">x</p>', html), html
    assert "<style" not in html.lower()


def test_received_message_is_alternative_text_first_then_related_html_with_every_cid_image(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    pictures = images()
    message = report(images=pictures)
    delivery = send(message, SmtpSettings("127.0.0.1", server.port))
    assert delivery == Delivery(ok=True, attempts=1)

    got = received(server)
    assert got.get_content_type() == "multipart/alternative"
    plain, related = got.get_payload()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, *image_parts = related.get_payload()
    assert html_part.get_content_type() == "text/html"
    assert [p.get_content_type() for p in image_parts] == ["image/png", "image/png"]

    html = html_part.get_content()
    assert re.search(r'<p class="big" style="[^"]*color:\s*red', html), html
    assert re.search(r'style="[^"]*font-size:\s*20px', html), html
    assert "<style" not in html.lower()

    by_cid = {p["Content-ID"].strip("<>"): p for p in image_parts}
    referenced = re.findall(r'src="cid:([^"]+)"', html)
    assert sorted(referenced) == sorted(by_cid) == sorted([CHART_1, CHART_2])
    for picture in pictures:
        part = by_cid[picture.cid]
        assert part.get_content() == picture.data
        assert part.get_content_disposition() == "inline"
        assert part.get_filename() == picture.filename

    assert got["X-Perfguard-Kind"] == "digest"
    sent_at = email.utils.parsedate_to_datetime(got["Date"])  # "-0000": UTC, local zone not disclosed
    assert abs((sent_at.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()) < 60
    assert re.fullmatch(r"<[^<>@]+@example\.com>", got["Message-ID"]), got["Message-ID"]


def test_message_without_images_is_alternative_text_then_html() -> None:
    message = build_message("s", SENDER, TO, "<p>no charts</p>", "no charts")
    assert [p.get_content_type() for p in message.get_payload()] == ["text/plain", "text/html"]


def test_html_referencing_a_missing_image_raises_naming_the_cid() -> None:
    with pytest.raises(ValueError, match="chart-404@perfguard"):
        report(html=HTML + '<img src="cid:chart-404@perfguard">')


def test_image_the_html_does_not_reference_raises_naming_the_cid() -> None:
    orphan = InlineImage(cid="orphan-1@perfguard", data=b"png")
    with pytest.raises(ValueError, match="orphan-1@perfguard"):
        report(images=[*images(), orphan])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subject": "Latency up\nBcc: victim@example.net"},
        {"subject": "Latency up\r\n"},
        {"headers": {"X-Perfguard-Kind": "digest\r\nBcc: victim@example.net"}},
        {"headers": {"Bcc": "victim@example.net"}},
        {"to": ["alice@example.com\nBcc: victim@example.net"]},
    ],
    ids=["subject-lf", "subject-crlf", "header-value", "reserved-header", "recipient"],
)
def test_header_injection_raises(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        report(**kwargs)


# -- delivery --------------------------------------------------------------------------------------


def test_plain_delivery_reaches_every_recipient_with_non_ascii_intact(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    delivery = send(report(), SmtpSettings("127.0.0.1", server.port))
    assert delivery.ok and delivery.attempts == 1 and delivery.refused == ()

    [envelope] = server.handler.envelopes
    assert envelope.mail_from == "perfguard@example.com"
    assert envelope.rcpt_tos == TO
    got = received(server)
    assert got["Subject"] == "Latenz ↑ 12 % on resnet50"
    plain, related = got.get_payload()
    assert plain.get_content().replace("\r\n", "\n") == "Latenz ↑ 12 % — p50 21.4 ms (was 19.1 ms)\n"
    assert "Latenz ↑ 12 %" in related.get_payload()[0].get_content()


def test_starttls_with_login_delivers_and_never_logs_the_password(
    start_server: Callable[..., Server],
    server_tls: ssl.SSLContext,
    tls_files: TlsFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="reports.mail")
    authenticator = Authenticator()
    server = start_server(
        tls_context=server_tls, require_starttls=True, authenticator=authenticator, auth_required=True
    )
    settings = SmtpSettings(
        "127.0.0.1", server.port, "starttls", USER, PASSWORD, ca_file=str(tls_files.cert), timeout_s=5
    )
    delivery = send(report(), settings)
    assert delivery == Delivery(ok=True, attempts=1)
    assert authenticator.logins == [USER]
    assert len(server.handler.envelopes) == 1
    assert PASSWORD not in our_log(caplog) and PASSWORD not in repr(settings)


def test_wrong_password_fails_once_without_retry_or_leaking_it(
    start_server: Callable[..., Server],
    server_tls: ssl.SSLContext,
    tls_files: TlsFiles,
    caplog: pytest.LogCaptureFixture,
    sleeps: list[float],
) -> None:
    caplog.set_level(logging.DEBUG, logger="reports.mail")
    wrong = "not-" + PASSWORD
    server = start_server(
        tls_context=server_tls, require_starttls=True, authenticator=Authenticator(), auth_required=True
    )
    settings = SmtpSettings(
        "127.0.0.1", server.port, "starttls", USER, wrong, ca_file=str(tls_files.cert), attempts=3, timeout_s=5
    )
    delivery = send(report(), settings, sleep=sleeps.append)
    assert not delivery.ok and delivery.attempts == 1 and sleeps == []
    assert delivery.error and "authentication" in delivery.error.lower()
    assert wrong not in delivery.error
    log_text = our_log(caplog)
    assert f"127.0.0.1:{server.port}" in log_text and "attempt 1 of 3" in log_text
    assert wrong not in log_text and PASSWORD not in log_text
    assert server.handler.envelopes == []


def test_implicit_tls_delivers(
    start_server: Callable[..., Server], server_tls: ssl.SSLContext, tls_files: TlsFiles
) -> None:
    server = start_server(ssl_context=server_tls)
    settings = SmtpSettings("127.0.0.1", server.port, "ssl", ca_file=str(tls_files.cert), timeout_s=5, attempts=1)
    assert send(report(), settings) == Delivery(ok=True, attempts=1)
    assert received(server)["Subject"] == "Latenz ↑ 12 % on resnet50"


def test_untrusted_certificate_fails_once_without_retry(
    start_server: Callable[..., Server], server_tls: ssl.SSLContext, sleeps: list[float]
) -> None:
    server = start_server(ssl_context=server_tls)
    settings = SmtpSettings("127.0.0.1", server.port, "ssl", attempts=3, timeout_s=5)  # system CAs only
    delivery = send(report(), settings, sleep=sleeps.append)
    assert not delivery.ok and delivery.attempts == 1 and sleeps == []
    assert delivery.error and "certificate" in delivery.error.lower()
    assert server.handler.envelopes == []


def test_starttls_requested_but_not_offered_fails_without_plaintext_fallback(
    start_server: Callable[..., Server], tls_files: TlsFiles, sleeps: list[float]
) -> None:
    server = start_server()  # no tls_context: EHLO does not advertise STARTTLS
    settings = SmtpSettings("127.0.0.1", server.port, "starttls", ca_file=str(tls_files.cert), timeout_s=5)
    delivery = send(report(), settings, sleep=sleeps.append)
    assert not delivery.ok and delivery.attempts == 1 and sleeps == []
    assert delivery.error and "STARTTLS" in delivery.error
    assert server.handler.envelopes == []


def test_nothing_listening_retries_all_attempts_with_doubling_backoff(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="reports.mail")
    port = free_port()
    settings = SmtpSettings("127.0.0.1", port, attempts=3, backoff_s=0.5, timeout_s=2)
    delivery = send(report(), settings, sleep=sleeps.append)
    assert not delivery.ok and delivery.attempts == 3
    assert sleeps == [0.5, 1.0]
    assert delivery.error and "refused" in delivery.error.lower()
    log_text = our_log(caplog)
    for attempt in (1, 2, 3):
        assert f"attempt {attempt} of 3" in log_text
    assert f"127.0.0.1:{port}" in log_text


def test_transient_4xx_on_data_is_retried_and_then_delivered(
    start_server: Callable[..., Server], sleeps: list[float]
) -> None:
    server = start_server(replies=["451 4.3.0 try later"])
    settings = SmtpSettings("127.0.0.1", server.port, attempts=3, backoff_s=0.25, timeout_s=5)
    delivery = send(report(), settings, sleep=sleeps.append)
    assert delivery == Delivery(ok=True, attempts=2)
    assert sleeps == [0.25]
    assert len(server.handler.envelopes) == 1


def test_permanent_5xx_on_data_is_not_retried(start_server: Callable[..., Server], sleeps: list[float]) -> None:
    server = start_server(replies=["554 5.6.0 message rejected"])
    settings = SmtpSettings("127.0.0.1", server.port, attempts=3, timeout_s=5)
    delivery = send(report(), settings, sleep=sleeps.append)
    assert not delivery.ok and delivery.attempts == 1 and sleeps == []
    assert delivery.error and "554" in delivery.error


def test_partly_refused_recipients_are_reported_and_the_rest_delivered(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(refuse=frozenset({"bob@example.org"}))
    delivery = send(report(), SmtpSettings("127.0.0.1", server.port))
    assert delivery == Delivery(ok=True, attempts=1, refused=("bob@example.org",))
    assert server.handler.envelopes[0].rcpt_tos == ["alice@example.com"]


def test_all_recipients_refused_is_permanent(start_server: Callable[..., Server], sleeps: list[float]) -> None:
    server = start_server(refuse=frozenset(TO))
    delivery = send(report(), SmtpSettings("127.0.0.1", server.port, attempts=3), sleep=sleeps.append)
    assert not delivery.ok and delivery.attempts == 1 and sleeps == []
    assert delivery.error and "bob@example.org" in delivery.error and "550" in delivery.error
    assert server.handler.envelopes == []


def test_username_without_password_fails_before_connecting(sleeps: list[float]) -> None:
    settings = SmtpSettings("127.0.0.1", free_port(), "starttls", username=USER, password=None)
    delivery = send(report(), settings, sleep=sleeps.append)
    assert delivery.ok is False and delivery.attempts == 0 and sleeps == []
    assert delivery.error and "no password" in delivery.error
