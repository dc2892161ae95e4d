"""What the flow prints on the terminal and sends to the Prefect log: `sagan` log lines routed by
Prefect's own setting, one line per stage, our own errors without Prefect's tracebacks."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sagan_core.errors import SaganError

SAGAN_LOGGER = "sagan"


def route_sagan_logs_to_prefect(env: dict[str, str] | None = None) -> dict[str, str]:
    """`sagan` added to PREFECT_LOGGING_EXTRA_LOGGERS in `env` (default: os.environ); Prefect reads
    it when it sets up logging (on import, also in a worker's flow-run processes)."""
    env = os.environ if env is None else env
    extra = [name.strip() for name in env.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if name.strip()]
    if SAGAN_LOGGER not in extra:
        env["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*extra, SAGAN_LOGGER])
    return env


@contextlib.contextmanager
def sagan_logs_to_prefect() -> Iterator[None]:
    """`sagan` INFO lines pass while the flow runs (a worker's root logger stops at WARNING)."""
    logger = logging.getLogger(SAGAN_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)


def duration(seconds: float) -> str:
    """0.4 s, 12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(seconds)
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


@dataclass
class StageLine:
    """Filled in by the task: `skipped` says why it did not run, `detail` what it made."""

    name: str
    skipped: str | None = None
    detail: str = ""


@contextlib.contextmanager
def stage_line(name: str, log: logging.Logger | logging.LoggerAdapter) -> Iterator[StageLine]:
    """`prepare: ran in 3.2 s (...)`, `train: skipped in 0.4 s (...)`, `register: failed after 1.2 s:
    <cause>`; timed here, not read from Prefect's records: the same without a server to ask."""
    line, start = StageLine(name), time.monotonic()
    try:
        yield line
    except Exception as e:
        cause = str(e).removeprefix(f"stage {name} failed: ")  # the flow's StageFailed names the stage
        cause = cause.strip().splitlines()[0] if cause.strip() else type(e).__name__  # one line
        log.error("%s: failed after %s: %s", name, duration(time.monotonic() - start), cause)
        raise
    except BaseException as e:  # Prefect's timeout or cancellation, Ctrl-C
        log.error("%s: stopped after %s (%s)", name, duration(time.monotonic() - start), type(e).__name__)
        raise
    took = duration(time.monotonic() - start)
    if line.skipped is not None:
        log.info("%s: skipped in %s (%s)", name, took, line.skipped)
    else:
        log.info("%s: ran in %s%s", name, took, f" ({line.detail})" if line.detail else "")


def _not_prefect_state_line(record: logging.LogRecord) -> bool:
    ours = record.name in ("prefect.task_runs", "prefect.flow_runs")
    return not (ours and str(record.msg).startswith("Finished in state "))


class _NoTracebackForOwnErrors(logging.Formatter):
    """Our own errors already say what failed and what to do: on the terminal, without Prefect's
    chained tracebacks (three for one missing file); the UI still gets every record whole."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, SaganError) or getattr(exc, "transient", False):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text  # restored: later handlers see the full record
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


@contextlib.contextmanager
def short_console_errors() -> Iterator[None]:
    """On the root logger's console handlers: our own errors without tracebacks, and no "Finished in
    state ..." lines (the CLI's plain handler prints them without the task's name; the stage lines
    say the same). The Prefect UI keeps them: its handler sits on Prefect's loggers."""
    from prefect.logging.handlers import APILogHandler

    handlers = [h for h in logging.getLogger().handlers if not isinstance(h, APILogHandler)]
    saved = [h.formatter for h in handlers]
    for h in handlers:
        h.setFormatter(_NoTracebackForOwnErrors(h.formatter))
        h.addFilter(_not_prefect_state_line)
    try:
        yield
    finally:
        for h, f in zip(handlers, saved, strict=True):
            h.setFormatter(f)
            h.removeFilter(_not_prefect_state_line)
