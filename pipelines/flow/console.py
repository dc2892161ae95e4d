"""What the flow prints on the terminal and sends to the Prefect log.

- `route_sagan_logs_to_prefect` / `sagan_logs_to_prefect`: the stages' `sagan` log lines reach the Prefect
  UI through Prefect's own setting (PREFECT_LOGGING_EXTRA_LOGGERS), not a handler of ours.
- `short_console_errors`: our own errors (SaganError) are printed without Prefect's tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from sagan_core.errors import SaganError

SAGAN_LOGGER = "sagan"


def route_sagan_logs_to_prefect(env: dict[str, str] | None = None) -> dict[str, str]:
    """Add the `sagan` logger to PREFECT_LOGGING_EXTRA_LOGGERS in `env` (default: this process's),
    keeping any the user set. Prefect reads the setting when it sets up logging (on import, in
    this process or in the flow-run processes a server or worker starts) and gives those loggers
    its API handler, so the stages' log lines appear in the flow run's logs. Returns `env`."""
    env = os.environ if env is None else env
    extra = [name.strip() for name in env.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if name.strip()]
    if SAGAN_LOGGER not in extra:
        env["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*extra, SAGAN_LOGGER])
    return env


@contextlib.contextmanager
def sagan_logs_to_prefect() -> Iterator[None]:
    """For the flow run's duration, `sagan` INFO lines pass (a worker's root logger stops at WARNING);
    Prefect's own handler (PREFECT_LOGGING_EXTRA_LOGGERS, above) sends them to the UI."""
    logger = logging.getLogger(SAGAN_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
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
