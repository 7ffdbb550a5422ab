"""A pytest plugin for the kernel matrix: each test's start and end, one line
each, appended to the file named by $ENFORCER_TEST_PROGRESS (the VM writes it
through its results share, so the host sees it at once).

The matrix's watchdog (tests/kernels/watch.py) takes a file that stops
changing for a test's time limit and more as a hang, and the report names the
test that had started and not ended: a kernel that locks up cannot say so
itself.

    python -m pytest -p tests.kernels.progress ...
"""

from __future__ import annotations

import os
import time

import pytest

STARTED, FINISHED = "started", "finished"


def _write(word: str, nodeid: str) -> None:
    path = os.environ.get("ENFORCER_TEST_PROGRESS")
    if not path:
        return
    with open(path, "a") as out:
        out.write(f"{time.time():.0f} {word} {nodeid}\n")


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _write(STARTED, nodeid)


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    _write(FINISHED, nodeid)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    _write(FINISHED, "session")
