"""The typer app and the options every `sagan` subcommand shares (--params, --set, --quiet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sagan_core.config import Params
from sagan_core.params_file import load_params

app = typer.Typer(
    name="sagan",
    help="Self-Attention GAN pipeline: prepare -> train -> evaluate (FID) -> register (MLflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Params file.", show_default=True)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-S", help="Override a param, e.g. --set train.steps=200 (repeatable).", metavar="KEY=VALUE"
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")]


def load(params: Path, overrides: list[str] | None) -> Params:
    """Validated params from --params FILE and --set overrides (ConfigError -> exit 2)."""
    return load_params(params, overrides or [])
