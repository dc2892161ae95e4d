"""`sagan models list|promote|rollback`: the registered versions and people's decisions on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.commands import ParamsOpt, SetOpt
from pipelines.registry import models as registry
from sagan_core.params_file import load_params

ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (recorded on the version).")]


def list_(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (every field and tag).")] = False,
) -> None:
    """List the versions of registry.model_name: step, FID under which reference, aliases, decisions."""
    rows = registry.versions(load_params(params, set_))
    typer.echo(json.dumps(rows, indent=2) if as_json else registry.table(rows))


def promote(
    version: Annotated[int, typer.Argument(help="The version to make champion.")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    reason: ReasonOpt = None,
) -> None:
    """Make VERSION the champion; its FID and the champion's are compared under one protocol and recorded."""
    typer.echo(registry.promote(load_params(params, set_), version, reason))


def rollback(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, reason: ReasonOpt = None) -> None:
    """Give the champion alias back to the version the champion replaced."""
    typer.echo(registry.rollback(load_params(params, set_), reason))


COMMANDS = {"list": list_, "promote": promote, "rollback": rollback}
