"""Small helpers for tests that drive an installed collector from outside (tests/dist, tests/deploy)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` with the end of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{what}: not within {timeout}s\n{tail}")


def post_events(url: str, events: dict[str, Any] | list[dict[str, Any]], token: str | None = None) -> int:
    """POST one CloudEvent (a dict) or a batch (a list) to ``url``; the status (2xx only: others raise)."""
    content_type = "application/cloudevents-batch+json" if isinstance(events, list) else "application/cloudevents+json"
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(events).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)
