"""structlog loggers and the query-event helper.

pgaccess never logs SQL parameter values (they may be personal data): a query event carries
the query's name (or its first line), duration in ms, row count and error class only.
"""

from __future__ import annotations

from typing import Any

import structlog

logger: Any = structlog.get_logger("pgaccess")


def get_logger(name: str) -> Any:
    return structlog.get_logger(f"pgaccess.{name}")


_query_log = get_logger("query")


def log_query(
    name: str,
    duration_ms: float,
    slow_ms: float,
    rows: int | None = None,
    error: BaseException | None = None,
) -> None:
    """Emit the per-query event: debug normally, warning when slower than ``slow_ms``."""
    fields: dict[str, Any] = {"query": name, "duration_ms": round(duration_ms, 3)}
    if rows is not None:
        fields["rows"] = rows
    if error is not None:
        fields["error"] = type(error).__name__
        _query_log.warning("query_failed", **fields)
    elif slow_ms and duration_ms >= slow_ms:
        _query_log.warning("slow_query", threshold_ms=slow_ms, **fields)
    else:
        _query_log.debug("query", **fields)
