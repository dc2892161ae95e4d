"""What the flow prints on the terminal and sends to the Prefect log.

- `route_sagan_logs_to_prefect` / `sagan_logs_to_prefect`: the stages' `sagan` log lines reach the Prefect
  UI through Prefect's own setting (PREFECT_LOGGING_EXTRA_LOGGERS), not a handler of ours.
- `stage_line`: one line per stage, its name, outcome and duration, measured in the flow.
- `short_console_errors`: our own errors (SaganError) are printed without Prefect's tracebacks, and
  Prefect's per-run "Finished in state ..." lines give way to the stage lines.
"""

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


def duration(seconds: float) -> str:
    """A duration for a person: 0.4 s, 12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(seconds)
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


@dataclass
class StageLine:
    """What a stage did, filled in by its task: `skipped` says why it did not run, `detail` what it made."""

    name: str
    skipped: str | None = None
    detail: str = ""


@contextlib.contextmanager
def stage_line(name: str, log: logging.Logger | logging.LoggerAdapter) -> Iterator[StageLine]:
    """Log the stage's one line when it ends: `prepare: ran in 3.2 s (156 images, ...)`, `train:
    skipped in 0.4 s (dvc status: up to date)`, `register: failed after 1.2 s: <cause>`.

    Timed here, around the task's body, rather than read back from Prefect's task-run records: the
    line is printed as the stage ends, and it is the same without a Prefect server to ask."""
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
    """False for Prefect's "Finished in state Completed()" of a task or flow run (see below)."""
    ours = record.name in ("prefect.task_runs", "prefect.flow_runs")
    return not (ours and str(record.msg).startswith("Finished in state "))


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
    """While a flow runs in this process, print our own errors without tracebacks (see above), and
    leave out Prefect's "Finished in state ..." lines.

    The console is whatever the root logger prints through: Prefect's console handler, or the
    `sagan` CLI's plain one when its logging was set up first. That plain one prints a task run's
    "Finished in state Completed()" without the task's name (Prefect's PREFECT_LOGGING_FORMATTERS_*
    settings name it only in Prefect's own console handler, which the CLI's takes the place of).
    Rather than name it, it is left out: each stage's own line (`stage_line`) says the same with
    the stage's name, what it did and how long it took, and the CLI's closing lines ("sagan
    pipeline: done" or the one-line error) say how the flow run ended. The Prefect UI keeps them:
    its handler sits on Prefect's loggers, not on these."""
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


@contextlib.contextmanager
def bounded(stage: str, key: str, seconds: float | None) -> Iterator[None]:
    """Prefect's task timeout ("Scope timed out after N second(s).") as the stage's one line."""
    try:
        yield
    except TimeoutError:
        raise SaganError(f"stage {stage} failed: timed out after {seconds:g} s (pipeline.{key})") from None
