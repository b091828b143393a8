"""Email for reports: one multipart message (plain text + HTML with inline CID images)
and its delivery over SMTP with retries.

Reports read storage only, and this module needs nothing from the project: no torch,
no ``monitor``. It builds a message that mail clients render (CSS inlined, images
embedded by Content-ID rather than linked) and refuses to build one that would arrive
broken; it delivers with TLS verified against the system or a private CA, never falls
back to plaintext, retries only what a retry can fix, and keeps the password out of
every error and log line.
"""

from __future__ import annotations

import base64
import email.policy
import email.utils
import logging
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Literal, get_args
from urllib.parse import unquote

import css_inline

log = logging.getLogger(__name__)

Security = Literal["none", "starttls", "ssl"]

# Headers build_message sets itself; a caller's `headers` must not duplicate or override them.
_RESERVED_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version"}
)
# RFC 5322 field name: printable US-ASCII except colon.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# url(cid:...) inside a style attribute (CSS background images).
_CSS_CID_URL = re.compile(r"""url\(\s*['"]?cid:([^'")\s]+)""", re.IGNORECASE)
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where and how to deliver; the password comes from the environment via the caller."""

    host: str
    port: int
    security: Security = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never logged
    ca_file: str | None = None  # private CA bundle for the server's certificate; default: system CAs
    timeout_s: float = 30.0
    attempts: int = 3  # tries in all
    backoff_s: float = 2.0  # wait before the 2nd try; doubles each time

    def __post_init__(self) -> None:
        # Fail at configuration time, not at 3 a.m. when the first report goes out.
        if self.security not in get_args(Security):
            raise ValueError(f"SMTP security must be one of {get_args(Security)}, not {self.security!r}")
        if not self.host:
            raise ValueError("SMTP host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"SMTP port {self.port} is out of range 1-65535")
        if self.attempts < 1:
            raise ValueError(f"SMTP attempts must be at least 1, not {self.attempts}")
        if self.backoff_s < 0:
            raise ValueError(f"SMTP backoff_s must not be negative, not {self.backoff_s}")
        if self.timeout_s <= 0:
            raise ValueError(f"SMTP timeout_s must be positive, not {self.timeout_s}")


@dataclass(frozen=True, slots=True)
class InlineImage:
    """An image the HTML shows as ``src="cid:<cid>"``, carried inside the message."""

    cid: str  # without angle brackets, e.g. "chart-3f2a@perfguard"
    data: bytes
    subtype: str = "png"
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened to one message: callers record it rather than catch exceptions."""

    ok: bool
    attempts: int
    error: str | None = None  # last error, one line, never containing the password
    refused: tuple[str, ...] = ()  # recipients the server refused while accepting others
    # The server refused this message for good (its recipients, or its content, with 5xx): sending it
    # again cannot help. A bad login or TLS setup is not that: fixing the config fixes the next pass.
    permanent: bool = False


def inline_css(html: str) -> str:
    """Move CSS from ``<style>`` blocks into style attributes, because mail clients drop
    ``<style>``; the blocks themselves are removed and no remote stylesheet is fetched
    (a report must not make network calls, nor depend on them, while it is built)."""
    inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)
    return inliner.inline(html)


def build_message(
    subject: str,
    sender: str,
    to: Sequence[str],
    html: str,
    text: str,
    images: Sequence[InlineImage] = (),
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """One multipart/alternative message: text/plain first (clients show the last part
    they can render, so HTML goes last), then the HTML with its images as
    multipart/related. Raises ValueError for anything that would arrive broken (an
    image the HTML needs but lacks, an attachment nobody references) or that could
    inject headers."""
    extra = _checked_headers(subject, sender, to, headers)
    inlined = inline_css(html)
    _check_images(images, _cid_references(inlined))

    message = EmailMessage(policy=email.policy.SMTP)
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=_domain_of(sender))
    # RFC 3834: a machine wrote it; vacation responders and ticket systems must not answer it.
    message["Auto-Submitted"] = "auto-generated"
    for name, value in extra.items():
        message[name] = value

    # quoted-printable keeps every line short and ASCII, whatever relay sits in between.
    message.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(inlined, subtype="html", charset="utf-8", cte="quoted-printable")
    if images:
        html_part = list(message.iter_parts())[1]
        assert isinstance(html_part, EmailMessage)
        for image in images:
            html_part.add_related(
                image.data,
                maintype="image",
                subtype=image.subtype,
                cid=f"<{image.cid}>",
                disposition="inline",
                filename=image.filename,
            )
    return message


def _checked_headers(
    subject: str, sender: str, to: Sequence[str], headers: Mapping[str, str] | None
) -> dict[str, str]:
    """The extra headers, once every header value is safe (no line breaks, no reserved name)."""
    if isinstance(to, str):
        raise ValueError("to must be a sequence of addresses, not one string")
    if not to:
        raise ValueError("a message needs at least one recipient")
    _check_header_value("Subject", subject)
    _check_header_value("From", sender)
    for address in to:
        _check_header_value("To", address)
        if not address.strip():
            raise ValueError("an empty recipient address")
    extra = dict(headers or {})
    for name, value in extra.items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        lowered = name.lower()
        if lowered in _RESERVED_HEADERS or lowered.startswith("content-"):
            raise ValueError(f"header {name!r} is set by build_message and cannot be overridden")
        _check_header_value(name, value)
    return extra


def _check_images(images: Sequence[InlineImage], referenced: set[str]) -> None:
    """Each image well named and used by the HTML, and each image the HTML uses given."""
    by_cid: dict[str, InlineImage] = {}
    for image in images:
        if not image.cid or any(c in image.cid for c in "<>\r\n \t"):
            raise ValueError(f"image cid {image.cid!r} must be non-empty, without angle brackets or whitespace")
        if image.cid in by_cid:
            raise ValueError(f"two images share the cid {image.cid!r}")
        if not re.fullmatch(r"[A-Za-z0-9.+-]+", image.subtype):
            raise ValueError(f"invalid image subtype {image.subtype!r} for cid {image.cid!r}")
        if image.filename is not None:
            _check_header_value("filename", image.filename)
        by_cid[image.cid] = image
    missing = sorted(referenced - by_cid.keys())
    if missing:
        raise ValueError(f"the HTML references cid:{', cid:'.join(missing)} but no such image was given")
    unreferenced = sorted(by_cid.keys() - referenced)
    if unreferenced:
        raise ValueError(
            f"image cid {', '.join(unreferenced)} is not referenced by the HTML (a dangling attachment)"
        )


def send(
    message: EmailMessage,
    settings: SmtpSettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """Deliver ``message``, retrying only transient failures (connection errors,
    timeouts, disconnects, 4xx replies) with doubling waits; permanent ones (bad
    credentials, 5xx, an untrusted certificate, no STARTTLS when asked for) return at
    once, because repeating them cannot help and may lock the account."""
    if settings.username and not settings.password:
        error = f"SMTP username {settings.username!r} set but no password in the environment"
        log.warning("not sending to %s:%d: %s", settings.host, settings.port, error)
        return Delivery(ok=False, attempts=0, error=error)
    try:
        context = ssl.create_default_context(cafile=settings.ca_file) if settings.security != "none" else None
    except (OSError, ssl.SSLError) as exc:
        error = _scrub(f"cannot load CA file {settings.ca_file!r}: {_describe(exc)}", settings)
        log.warning("not sending to %s:%d: %s", settings.host, settings.port, error)
        return Delivery(ok=False, attempts=0, error=error)
    if settings.username and settings.security == "none":
        log.warning("SMTP credentials for %s:%d will be sent without TLS", settings.host, settings.port)

    for attempt in range(1, settings.attempts + 1):
        try:
            refused = _send_once(message, settings, context)
        except (smtplib.SMTPException, OSError) as exc:
            error = _scrub(_describe(exc), settings)
            retry = _is_transient(exc) and attempt < settings.attempts
            log.warning(
                "SMTP delivery to %s:%d failed (attempt %d of %d%s): %s",
                settings.host,
                settings.port,
                attempt,
                settings.attempts,
                "" if retry else ", giving up",
                error,
            )
            if not retry:
                return Delivery(ok=False, attempts=attempt, error=error, permanent=_is_refusal(exc))
            sleep(settings.backoff_s * 2 ** (attempt - 1))
            continue
        if refused:
            log.warning(
                "SMTP server %s:%d refused %d recipient(s): %s",
                settings.host,
                settings.port,
                len(refused),
                ", ".join(sorted(refused)),
            )
        return Delivery(ok=True, attempts=attempt, refused=tuple(sorted(refused)))
    raise AssertionError("unreachable: the last attempt always returns")  # pragma: no cover


def _send_once(
    message: EmailMessage, settings: SmtpSettings, context: ssl.SSLContext | None
) -> dict[str, tuple[int, bytes]]:
    """One connection, one transaction; returns the recipients refused among accepted ones."""
    client: smtplib.SMTP
    if settings.security == "ssl":
        client = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout_s, context=context)
    else:
        client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
    try:
        client.ehlo()
        if settings.security == "starttls":
            if not client.has_extn("starttls"):
                # Falling back to plaintext would expose the message and the password.
                raise smtplib.SMTPNotSupportedError(
                    "server does not offer STARTTLS; refusing to continue in plaintext"
                )
            client.starttls(context=context)
            client.ehlo()
        if settings.username:
            assert settings.password is not None  # checked by send()
            client.login(settings.username, settings.password)
        return client.send_message(message)
    finally:
        _close(client)


def _close(client: smtplib.SMTP) -> None:
    """QUIT politely, but never let a failing QUIT turn a delivered message into a retry."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _is_refusal(exc: BaseException) -> bool:
    """A 5xx answer to this message itself: every recipient refused, or the data rejected."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(500 <= code < 600 for code in codes)
    return isinstance(exc, smtplib.SMTPDataError) and 500 <= exc.smtp_code < 600


def _is_transient(exc: BaseException) -> bool:
    """Whether trying again later can succeed (RFC 5321: 4xx is transient, 5xx permanent)."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, ssl.SSLError):
        # A cut connection mid-handshake may pass; a bad certificate or protocol will not.
        return isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError))
    if isinstance(exc, smtplib.SMTPException):
        return False  # no STARTTLS/AUTH/SMTPUTF8 support and the like (SMTPException is an OSError)
    return isinstance(exc, OSError)  # refused, reset, timed out, unreachable, name resolution


def _describe(exc: BaseException) -> str:
    """One short line naming the failure, for Delivery.error and the log."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        text = f"SMTP authentication failed: {exc.smtp_code} {_decode(exc.smtp_error)}"
    elif isinstance(exc, smtplib.SMTPResponseException):
        text = f"{type(exc).__name__}: {exc.smtp_code} {_decode(exc.smtp_error)}"
    elif isinstance(exc, smtplib.SMTPRecipientsRefused):
        parts = [f"{rcpt} ({code} {_decode(msg)})" for rcpt, (code, msg) in sorted(exc.recipients.items())]
        text = "all recipients refused: " + ", ".join(parts)
    elif isinstance(exc, ssl.SSLCertVerificationError):
        text = f"TLS certificate verification failed: {exc.verify_message or exc.reason or exc}"
    elif isinstance(exc, TimeoutError):
        text = f"timed out: {exc}" if str(exc) else "timed out"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 1] + "…"
    return text


def _scrub(text: str, settings: SmtpSettings) -> str:
    """Remove the password, plain and in the base64 forms AUTH sends, should a server echo it."""
    password = settings.password
    if not password:
        return text
    secrets = {password, base64.b64encode(password.encode()).decode()}
    if settings.username:
        secrets.add(base64.b64encode(f"\0{settings.username}\0{password}".encode()).decode())
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _check_header_value(name: str, value: str) -> None:
    """Reject CR/LF (and NUL), which would let a value start a header or the body."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"{name} must not contain a line break: {value!r}")


def _domain_of(sender: str) -> str:
    """The sender's domain for Message-ID; 'localhost' rather than a slow FQDN lookup."""
    address = email.utils.parseaddr(sender)[1]
    domain = address.rpartition("@")[2] if "@" in address else ""
    return domain or "localhost"


class _CidCollector(HTMLParser):
    """Collects cid: references from attributes (src, background) and inline styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if not value:
                continue
            stripped = value.strip()
            if stripped[:4].lower() == "cid:":
                self.cids.add(unquote(stripped[4:]))
            elif name == "style":
                self.cids.update(unquote(cid) for cid in _CSS_CID_URL.findall(value))

    handle_startendtag = handle_starttag


def _cid_references(html: str) -> set[str]:
    collector = _CidCollector()
    collector.feed(html)
    collector.close()
    return collector.cids
