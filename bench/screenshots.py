"""Screenshots of the report and of the emails as received, in headless Chromium, for docs/.

Builds a small fleet with a history worth showing (a regression with its rejected action, an
environment change, a failing model), writes the static report, sends the digest and an alert
through a real SMTP server (aiosmtpd) and renders what arrived the way a mail client does (cid:
images resolved from the message's own parts). Needs Debian's `chromium`.

    .venv/bin/python bench/screenshots.py            # writes docs/report-*.png, docs/email-*.png
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.service.reporting import send_alerts, send_digests, write_report  # noqa: E402
from tests.report_helpers import make_fleet  # noqa: E402

DOCS = ROOT / "docs"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802, ANN001, ANN201 - aiosmtpd's hook
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


def as_viewed(message: email.message.EmailMessage) -> str:
    """The HTML part with each cid: image replaced by its part's bytes, as a mail client shows it."""
    html = message.get_body(("html",)).get_content()
    images = {part["Content-ID"].strip("<>"): part.get_payload(decode=True)
              for part in message.walk() if part["Content-ID"]}

    def inline(match: re.Match[str]) -> str:
        return "data:image/png;base64," + base64.b64encode(images[match.group(1)]).decode()

    return re.sub(r"cid:([^\"']+)", inline, html)


def shoot(chromium: str, page: Path, out: Path, width: int, height: int) -> None:
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Chromium: apt-get install chromium")
    work = Path(tempfile.mkdtemp(prefix="perfguard-shots-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        section = (f'[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\nsender = "perfguard@example.com"\n'
                   'report_url = "http://bench-1:9307/"\n')
        loaded, db = make_fleet(work, extra=section)
        with db:
            site = write_report(db, loaded)
            send_digests(db, loaded, key="screenshots")
            send_alerts(db, loaded, "seed-cnn")
    finally:
        controller.stop()
    DOCS.mkdir(exist_ok=True)
    shoot(chromium, site.index, DOCS / "report-index.png", 1200, 560)
    shoot(chromium, site.pages["seed-cnn"], DOCS / "report-model.png", 1200, 2600)
    digest = next(m for m in inbox.messages if m["X-Perfguard-Kind"] == "digest" and "vision" in m["To"])
    alert = next(m for m in inbox.messages if m["X-Perfguard-Kind"] == "alert")
    for name, message, height in (("email-digest", digest, 900), ("email-alert", alert, 1400)):
        viewed = work / f"{name}.html"
        viewed.write_text(as_viewed(message), encoding="utf-8")
        shoot(chromium, viewed, DOCS / f"{name}.png", 1000, height)


if __name__ == "__main__":
    main()
