"""structlog set-up: JSON lines, one event per line, with a timestamp and level.
Operational events go to stderr; the audit logger's events go to the audit log."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

from enforcer.daemon.audit import AUDIT_LOGGER, AuditFile


def _dumps(obj: Any, **kwargs: Any) -> str:
    """orjson: a fifth of the json module's cost per record, which matters at
    tens of thousands of audit records a second."""
    return orjson.dumps(obj, default=kwargs.get("default"), option=orjson.OPT_NON_STR_KEYS).decode()


def configure(stream: TextIO = sys.stderr, level: int = logging.INFO, audit: AuditFile | None = None) -> None:
    operational = structlog.WriteLogger(stream)

    def logger_for(*args: Any) -> Any:
        if audit is not None and args and args[0] == AUDIT_LOGGER:
            return audit
        return operational

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_for,
        cache_logger_on_first_use=True,
    )
