"""What the flow prints on the terminal and sends to the Prefect log.

- `sagan_logs_to_prefect`: the stages' `sagan` log lines also reach the Prefect UI during a flow run.
- `short_console_errors`: our own errors (SaganError) are printed without Prefect's tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from sagan_core.errors import SaganError


@contextlib.contextmanager
def sagan_logs_to_prefect() -> Iterator[None]:
    """Send the stages' `sagan` log lines to the Prefect UI too, for the flow run's duration only
    (outside a flow run Prefect's API handler has nowhere to send them)."""
    from prefect.logging.handlers import APILogHandler

    logger, handler = logging.getLogger("sagan"), APILogHandler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _NoTracebackForOwnErrors(logging.Formatter):
    """Prefect logs a failed task or flow run with its traceback (three of them, chained, for one
    missing file). Our own errors (SaganError: bad config, missing weights, diverged training)
    already say what failed and what to do, so on the terminal they are shown without one;
    unexpected exceptions keep theirs. Only the console changes: the Prefect UI gets every record whole."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    @staticmethod
    def own_error(record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return isinstance(exc, SaganError) and not getattr(exc, "transient", False)

    def format(self, record: logging.LogRecord) -> str:
        if not self.own_error(record):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text  # restored: later handlers see the full record
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


@contextlib.contextmanager
def short_console_errors() -> Iterator[None]:
    """While a flow runs in this process, print our own errors without tracebacks (see above).

    The console is whatever the root logger prints through: Prefect's console handler, or the
    `sagan` CLI's plain one when its logging was set up first."""
    from prefect.logging.handlers import APILogHandler

    handlers = [h for h in logging.getLogger().handlers if not isinstance(h, APILogHandler)]
    saved = [h.formatter for h in handlers]
    for h in handlers:
        h.setFormatter(_NoTracebackForOwnErrors(h.formatter))
    try:
        yield
    finally:
        for h, f in zip(handlers, saved, strict=True):
            h.setFormatter(f)
