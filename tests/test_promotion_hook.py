"""The promotion hook tells a serving system about a new variant: a real command, a real HTTP server."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitor.config import PromotionHook
from monitor.core.actions import ActionRecord, Promotion
from monitor.optimize.promotion_hook import notify

RECORD = ActionRecord(model="mlp", kind="requantize", trigger="latency_drift", status="accepted", reason="2.8x",
                      from_variant="baseline", to_variant="baseline+dynamic_int8", id=7)
PROMOTION = Promotion("baseline+dynamic_int8", "requantize",
                      {"name": "baseline+dynamic_int8", "weights_path": "/a/w.pt", "weights_sha256": "ff"}, {})


def test_a_command_hook_gets_the_promotion_on_stdin_and_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    script = ("import json, os, sys; payload = json.load(sys.stdin); "
              "payload['env'] = {k: v for k, v in os.environ.items() if k.startswith('PERFGUARD_')}; "
              f"open({str(out)!r}, 'w').write(json.dumps(payload))")
    notify(PromotionHook(command=[sys.executable, "-c", script]), RECORD, PROMOTION)
    seen = json.loads(out.read_text())
    assert (seen["model"], seen["variant"], seen["previous"], seen["action_id"]) == (
        "mlp", "baseline+dynamic_int8", "baseline", 7)
    assert seen["weights_sha256"] == "ff"
    assert seen["env"]["PERFGUARD_WEIGHTS"] == "/a/w.pt" and seen["env"]["PERFGUARD_ACTION_ID"] == "7"


def test_a_failing_hook_is_logged_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        notify(PromotionHook(command=[sys.executable, "-c", "import sys; sys.exit('no serving here')"]), RECORD,
               PROMOTION)
        notify(PromotionHook(url="http://127.0.0.1:9/reload", timeout_s=2), RECORD, PROMOTION)  # nothing listens
    messages = [r.getMessage() for r in caplog.records]
    assert any("exited 1" in m and "no serving here" in m for m in messages), messages
    assert any("promotion hook for mlp failed" in m for m in messages), messages


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/reload", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_hook_is_posted_the_promotion_as_json(receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = receiver
    notify(PromotionHook(url=url), RECORD, PROMOTION)
    (request,) = received
    assert request["path"] == "/reload" and request["type"] == "application/json"
    assert request["body"]["variant"] == "baseline+dynamic_int8" and request["body"]["weights_path"] == "/a/w.pt"
