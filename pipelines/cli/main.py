"""`sagan`: one command, a subcommand per stage (commands.py) and `sagan pipeline` (pipeline.py).

Every command is registered here, explicitly (`build_app`). Exit codes: 0 ok; 2 usage/config
mistakes (one line on stderr, no traceback); 1 runtime failures.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from pipelines.cli import commands, models, pipeline
from pipelines.project.version import installed
from sagan_core.errors import STORAGE_ERRNOS, ConfigError, SaganError, os_cause


def _show_version(value: bool) -> None:
    if value:
        now = installed()  # "unknown": run from a checkout that was never installed
        typer.echo(f"sagan {now if now != 'unknown' else 'unknown (not installed)'}")
        raise typer.Exit(0)


VersionOpt = typer.Option(
    "--version", help="Print the installed version and exit.", callback=_show_version, is_eager=True
)


def _root(show_version: Annotated[bool, VersionOpt] = False) -> None:
    """Self-Attention GAN pipeline: prepare -> train -> evaluate (FID) -> register (MLflow)."""


def build_app() -> typer.Typer:
    """In the order `sagan --help` lists them."""
    app = typer.Typer(
        name="sagan",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    app.callback()(_root)
    c = commands
    for command in (c.prepare, c.train, c.evaluate, c.fid, c.register, c.sample):
        app.command()(command)
    flow = {"run": pipeline.run, "serve": pipeline.serve, "deploy": pipeline.deploy}
    flow_help = "The Prefect flow: prepare -> train -> evaluate -> register, once or on a schedule."
    models_help = "The registered versions: list them, promote one, roll the champion back."
    for name, helps, group in (("pipeline", flow_help, flow), ("models", models_help, models.COMMANDS)):
        sub = typer.Typer(name=name, help=helps, no_args_is_help=True)
        for verb, command in group.items():
            sub.command(verb)(command)
        app.add_typer(sub, name=name)
    for command in (c.config, c.init):
        app.command()(command)
    return app


def _setup_logging() -> None:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's own INFO lines (db migrations)
    # Prefect's temporary server sends a telemetry heartbeat that races its own sqlite writes at
    # start-up ("database is locked" traceback); it is of no use to a training pipeline anyway.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server's first start creates and migrates its database: measured 20-40 s on 2
    # cores, past Prefect's 20 s default, which fails `sagan pipeline run` on a fresh machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
    for noisy in ("alembic", "urllib3", "botocore", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(prefix: str, message: str, code: int) -> int:
    print(f"sagan: {prefix}{message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    # No MLflow model is unpickled in a sagan process: pickled models are refused, pt2 archives are
    # checked pickle-free (sagan's own model loading forces this off whatever the environment says).
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    _setup_logging()
    try:
        result = build_app()(
            args=sys.argv[1:] if argv is None else argv, prog_name="sagan", standalone_mode=False
        )
        return result if isinstance(result, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return _fail("", "aborted", 130)
    except TyperException as e:  # typer's (vendored) click errors: usage mistakes carry exit_code 2
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help(), file=sys.stderr)
            return 2
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        return _fail("error: ", " ".join(message.split()), getattr(e, "exit_code", 2))
    except SaganError as e:  # ConfigError (a user mistake) carries exit code 2, the rest 1
        return _fail("error: " if isinstance(e, ConfigError) else "", str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("", "interrupted", 130)
    except OSError as e:  # the last resort: the writers sagan knows report WriteError themselves
        if e.filename is None and e.errno not in STORAGE_ERRNOS:
            raise  # no file named, no disk at fault: likely a bug, keep its traceback
        if e.filename is None:
            return _fail("", f"a file could not be read or written ({os_cause(e)})", 1)
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else e.filename
        return _fail("", f"{where}: {os_cause(e)}", 1)  # `models/x.pt: ENOSPC: No space left on device`

