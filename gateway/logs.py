"""Structured logs: one JSON object per line on stderr.

Callers pass an event name and fields; nothing here formats free text, so a secret can
only reach the log if a caller names it as a field — which code review can see.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_logger = logging.getLogger("pgwarden")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs * 1000):06d}Z",
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            doc["event"] = record.getMessage()
            doc.update(fields)
        else:  # a library's own line (asyncio's, grpc's): its logger, and its text
            doc["event"] = f"python.{record.name}"
            doc["message"] = record.getMessage()[:1000]
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = record.exc_info[0].__name__
        # Fields may quote what a client sent (a startup user or database name, a
        # policy's reasons naming its identifiers): no card number leaves in a log line.
        # Each string is scanned as itself first: in the encoded line a non-ASCII or
        # control character before a PAN is an escape ending in hex digits (\u00e9),
        # which glued to the PAN makes a longer number the scanner leaves alone.
        from gateway.audit.redact import scrub, scrub_value

        clean, _ = scrub_value(doc)
        return scrub(json.dumps(clean, default=str, separators=(",", ":")))


def configure(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter())
    _logger.handlers[:] = [handler]
    _logger.setLevel(level.upper())
    _logger.propagate = False
    # Libraries' warnings (asyncio's unretrieved task errors, grpc's) are JSON lines too,
    # not Python's last-resort plain text on stderr (unless something, a test runner,
    # already handles them).
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


#: enabled(level): whether a line at `level` would be written (skip building costly fields
#: if not). The logger's own method: it is asked once per statement.
enabled = _logger.isEnabledFor


def log(level: int, event: str, **fields: Any) -> None:
    if _logger.isEnabledFor(level):
        _logger.log(level, event, extra={"fields": fields})


def info(event: str, **fields: Any) -> None:
    log(logging.INFO, event, **fields)


def warning(event: str, **fields: Any) -> None:
    log(logging.WARNING, event, **fields)


def error(event: str, **fields: Any) -> None:
    log(logging.ERROR, event, **fields)


def evidence(event: str, **fields: Any) -> None:
    """An info line written whatever the configured level: evidence that systems outside
    the gateway keep and check against (the audit trail's anchors), not a diagnostic
    an operator may turn down."""
    _logger.handle(_logger.makeRecord(_logger.name, logging.INFO, "(evidence)", 0, event,
                                      (), None, extra={"fields": fields}))


def debug(event: str, **fields: Any) -> None:
    log(logging.DEBUG, event, **fields)
