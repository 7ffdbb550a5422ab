"""PolicyError: a policy refused, naming the field and the reason."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy document was refused. ``field`` is a path such as ``network.allow[2].ports[0]``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
