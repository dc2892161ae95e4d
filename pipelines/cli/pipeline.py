"""`sagan pipeline run|serve|deploy`: the Prefect flow once, on a schedule, or on a work pool."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli.commands import ParamsOpt, SetOpt
from pipelines.flow.console import route_sagan_logs_to_prefect, short_console_errors
from pipelines.launch import supervised
from pipelines.lock import ensure_limit, limit_name, project_lock
from pipelines.quoting import sh
from sagan_core.config import Params
from sagan_core.errors import ConfigError
from sagan_core.params_file import load_params

ForceOpt = Annotated[bool, typer.Option("--force", help="Run every stage even when nothing changed.")]


def _load(params: Path, set_: list[str] | None) -> Params:
    """Params, or exit 2 here, before Prefect starts. In a DVC project, another params file than
    params.yaml runs without DVC (the flow says so in one line) or, with pipeline.dvc: yes, is refused."""
    validated = load_params(params, set_)
    if validated.pipeline.dvc == "yes":
        from pipelines.flow.dvc_sync import DvcProject

        DvcProject.find(".", "yes", params)
    return validated


def run(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Run the whole pipeline once (Prefect's temporary local server unless PREFECT_API_URL is set)."""
    validated = _load(params, set_)
    route_sagan_logs_to_prefect()  # before Prefect is imported: it reads the setting then
    from pipelines.flow.pipeline import sagan_pipeline
    from pipelines.flow.report import final_report

    # The project lock before Prefect's temporary server starts (~20-50 s): a second run is refused
    # at once. The flow takes it again, reentrant, and so also holds it when a deployment runs it.
    with project_lock(".", validated.pipeline.lock_timeout_s, for_flow=True), supervised():
        with short_console_errors():
            summary = sagan_pipeline(
                params_file=str(params), overrides=list(set_ or []), force=force, params=validated
            )
        print(final_report(summary, validated))


def serve(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    force: ForceOpt = False,
    cron: Annotated[str, typer.Option(help="Cron schedule of the retraining runs.")] = "0 3 * * 0",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "scheduled-retrain",
) -> None:
    """Serve a deployment that reruns the pipeline on a cron schedule (blocks; needs a Prefect server)."""
    route_sagan_logs_to_prefect()  # the served runs' processes inherit it
    parameters, _ = _on_server(params, set_, force, "schedules")
    from pipelines.flow.pipeline import sagan_pipeline

    sagan_pipeline.serve(name=name, cron=cron, parameters=parameters)


def _on_server(params: Path, set_: list[str] | None, force: bool, what: str) -> tuple[dict[str, Any], str]:
    """The parameters of runs a server starts (in its directory: pinned to this project) and the
    project's one-run limit (pipelines/lock.py)."""
    from prefect.settings import PREFECT_API_URL

    _load(params, set_)  # the runs get the file and the overrides, validated when each starts
    parameters = {"params_file": str(params), "overrides": list(set_ or []), "force": force}
    if not PREFECT_API_URL.value():
        raise ConfigError(
            f"{what} need a running Prefect server: start one with `prefect server start` and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    parameters["project_dir"] = os.getcwd()
    return parameters, ensure_limit(limit_name(os.getcwd()))


def deploy(
    pool: Annotated[str, typer.Option(help="Prefect work pool (e.g. a process pool on a GPU machine).")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    force: ForceOpt = False,
    cron: Annotated[str | None, typer.Option(help="Optional cron schedule.")] = None,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "on-pool",
) -> None:
    """Deploy the flow to a work pool; a worker (`prefect worker start --pool POOL`) runs it where it runs."""
    from pipelines.flow.pipeline import sagan_pipeline

    parameters, limit = _on_server(params, set_, force, "work pools")
    # The worker loads the flow from this checkout and runs it on this project: both paths must
    # exist on the worker's machine (same path, e.g. a shared filesystem).
    code = Path(__file__).resolve().parents[2]
    remote = sagan_pipeline.from_source(
        source=str(code), entrypoint="pipelines/flow/pipeline.py:sagan_pipeline"
    )
    deployment_id = remote.deploy(
        name=name,
        work_pool_name=pool,
        parameters=parameters,
        cron=cron,
        build=False,
        push=False,
        # the worker's flow-run process: Prefect's setting routes the `sagan` logger to the UI
        job_variables={"env": route_sagan_logs_to_prefect({})},
        print_next_steps=False,
    )
    print(f"deployed sagan-pipeline/{name} ({deployment_id}) to work pool {pool!r}; project limit {limit}")
    print(f"start a worker: prefect worker start --pool {sh(pool)}")
    print(f"run it:         prefect deployment run {sh(f'sagan-pipeline/{name}')}")
