"""Waiting for the system to get somewhere, scaled by the machine's patience;
what is asserted about the result never is."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.e2e.harness.env import patience


def wait_denials(client: Any, sandbox: str, count: int, timeout: float = 10.0) -> list[Any]:
    """The sandbox's retained denials, once there are at least ``count``."""
    deadline = time.monotonic() + patience(timeout)
    while True:
        events = list(client.denial_events(sandboxes=[sandbox]))
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + patience(timeout)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
