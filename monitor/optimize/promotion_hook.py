"""Tell a serving system that a model's active variant changed: the configured hook (a command fed
the JSON payload on stdin, or a URL it is POSTed to) after a promotion or a rollback. A failing hook
is logged, never raised: the change is committed by then.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.request

from monitor.config import PromotionHook
from monitor.core.actions import ActionRecord, Promotion

log = logging.getLogger(__name__)


def notify(hook: PromotionHook, record: ActionRecord, promotion: Promotion) -> None:
    """Tell a serving system about the new active variant; a failure is logged, never raised."""
    payload = {
        "model": record.model,
        "variant": promotion.name,
        "previous": record.from_variant,
        "action_id": record.id,
        "weights_path": promotion.spec.get("weights_path"),
        "weights_sha256": promotion.spec.get("weights_sha256"),
        "spec": promotion.spec,
    }
    body = json.dumps(payload).encode()
    try:
        if hook.command is not None:
            env = {
                **os.environ,
                "PERFGUARD_MODEL": record.model,
                "PERFGUARD_VARIANT": promotion.name,
                "PERFGUARD_WEIGHTS": str(promotion.spec.get("weights_path") or ""),
                "PERFGUARD_ACTION_ID": str(record.id),
            }
            done = subprocess.run(
                hook.command, input=body, env=env, capture_output=True, timeout=hook.timeout_s, check=False
            )
            if done.returncode != 0:
                log.warning(
                    "promotion hook %s exited %d: %s",
                    hook.command[0],
                    done.returncode,
                    done.stderr.decode(errors="replace")[-500:],
                )
        else:
            assert hook.url is not None
            request = urllib.request.Request(  # noqa: S310 - the configured hook URL
                hook.url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=hook.timeout_s) as reply:  # noqa: S310 - configured URL
                reply.read()
    except Exception as exc:  # noqa: BLE001 - the promotion is committed; a hook's failure must not undo it
        log.warning("promotion hook for %s failed: %s", record.model, exc)


