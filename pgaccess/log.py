"""Library logging through the standard :mod:`logging` module, and the query-event helper.

Loggers are named ``pgaccess.<part>`` (``pgaccess.pool``, ``pgaccess.query``, ...). The
``pgaccess`` logger has a :class:`logging.NullHandler`, so the library is silent until the
host application configures logging (``logging.basicConfig(level=logging.INFO)``) - and it
never writes to stdout. An event is a name plus fields; with the standard library the
message reads ``event key=value ...`` and the fields are on the record as
``record.pgaccess`` (for JSON formatters). When the application has configured structlog
(``structlog.configure(...)``), events go through structlog instead, with the fields as
structlog key-values. The command line configures logging for itself
(``PGACCESS_LOG_LEVEL``, stderr; see :func:`pgaccess.cli.configure_logging`).

pgaccess never logs SQL parameter values (they may be personal data): a query event carries
the query's name (or its first line), duration in ms, row count and error class only.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

ROOT = "pgaccess"
logging.getLogger(ROOT).addHandler(logging.NullHandler())


class EventLogger:
    """``log.info("event", key=value)`` onto stdlib logging, or structlog when configured."""

    __slots__ = ("_std", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._std = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(structlog.get_logger(self.name), logging.getLevelName(level).lower())(event, **fields)
            return
        if self._std.isEnabledFor(level):
            text = " ".join([event, *(f"{k}={v}" for k, v in fields.items())])
            self._std.log(level, "%s", text, extra={"event": event, "pgaccess": fields},
                          stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit(logging.CRITICAL, event, fields)


logger = EventLogger(ROOT)


def get_logger(name: str) -> EventLogger:
    return EventLogger(f"{ROOT}.{name}")


_query_log = get_logger("query")


def log_query(
    name: str,
    duration_ms: float,
    slow_ms: float,
    rows: int | None = None,
    error: BaseException | None = None,
    **extra: Any,
) -> None:
    """Emit the per-query event: debug normally, warning when slower than ``slow_ms``;
    ``extra`` fields (a trace id, say) are added to it."""
    fields: dict[str, Any] = {"query": name, "duration_ms": round(duration_ms, 3), **extra}
    if rows is not None:
        fields["rows"] = rows
    if error is not None:
        fields["error"] = type(error).__name__
        _query_log.warning("query_failed", **fields)
    elif slow_ms and duration_ms >= slow_ms:
        _query_log.warning("slow_query", threshold_ms=slow_ms, **fields)
    else:
        _query_log.debug("query", **fields)
