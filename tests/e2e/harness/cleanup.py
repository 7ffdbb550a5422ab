"""Undo actions registered as things are made (pyroute2's fixture style), so
a failing test leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Cleanup:
    """LIFO registry of undo actions; every action runs even if one fails."""

    def __init__(self) -> None:
        self._actions: list[Callable[[], Any]] = []

    def add(self, action: Callable[[], Any]) -> None:
        self._actions.append(action)

    def run(self) -> None:
        errors = []
        while self._actions:
            try:
                self._actions.pop()()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
