"""`sagan`: one command, a subcommand per stage.

Exit codes: 0 ok; 2 usage/config mistakes (one line on stderr, no traceback); 1 runtime failures.
Heavy imports (torch, MLflow, Prefect) happen inside the commands so `sagan --help` stays instant.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from pipelines.cli.app import ParamsOpt, QuietOpt, SetOpt, app, load
from sagan_core.errors import ConfigError, SaganError


@app.command()
def prepare(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Turn data.source into the prepared dataset (data.prepared_dir)."""
    from pipelines import stages

    stages.prepare(load(params, set_), progress=not quiet)


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from models/checkpoint.pt.")] = False,
    resume_from: Annotated[
        str | None,
        typer.Option(
            "--resume-from",
            help="Continue from a checkpoint file, runs:/<run_id> or models:/<name>@<alias> "
            "(bit-exact, into the same MLflow run).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train SAGAN on the prepared dataset; writes the checkpoint, sample grids and attention figures."""
    p = load(params, set_)
    if resume_from:
        from pipelines.resume_from import fetch

        fetch(p, resume_from)
        resume = True
    if p.train.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun
        from pipelines.launch import run_torchrun, supervised

        with supervised():  # a kill -9 of `sagan train` takes torchrun and its ranks with it
            code, _ = run_torchrun(p, resume, quiet, log=logging.getLogger("sagan").info)
        raise typer.Exit(code)
    from pipelines import stages

    stages.train(p, resume=resume, progress=not quiet)


def _setup_logging() -> None:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's own INFO lines (db migrations)
    # Prefect's temporary server sends a telemetry heartbeat that races its own sqlite writes at
    # start-up ("database is locked" traceback); it is of no use to a training pipeline anyway.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
    """Entry point: maps our exceptions to exit codes and one-line messages."""
    _setup_logging()
    try:
        result = app(args=sys.argv[1:] if argv is None else argv, prog_name="sagan", standalone_mode=False)
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


# Each capability registers its subcommands on `app` in its own module.
from pipelines.cli import cli_config, cli_eval, cli_flow, cli_registry  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
