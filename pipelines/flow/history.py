"""Past pipeline runs of this project, from Prefect's own records (no file of ours).

Flow runs carry a project tag (folder name, hash of host and path) and leave a one-row table
artifact `sagan-result`; `past_runs` joins the two, newest first, failed and crashed runs included.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import psutil

FLOW_NAME = "sagan-pipeline"
RESULT_KEY = "sagan-result"
COLUMNS = ["time", "flow_run", "state", "data_hash", "trained_steps", "fid", "kid", "version", "decision"]


def project_tag(project_dir: str | Path = ".") -> str:
    here = Path(project_dir).resolve()
    digest = hashlib.sha256(f"{socket.gethostname()}:{here}".encode()).hexdigest()[:8]
    return f"project:{here.name}-{digest}"


def tag_flow_run(tag: str) -> None:
    """Add `tag` and the running process (for `end_orphans`) to the running flow run's tags."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    tags = list(flow_run.tags or [])
    new = [t for t in (tag, f"process:{socket.gethostname()}:{os.getpid()}") if t not in tags]
    if new:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=[*tags, *new])


def end_orphans(tag: str) -> list[str]:
    """Mark Crashed this project's flow runs left RUNNING by a process of this host that is gone
    (killed by -9: it never reported its end); their names. A run elsewhere may be alive."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter
    from prefect.runtime import flow_run
    from prefect.states import Crashed

    host = f"process:{socket.gethostname()}:"
    ended = []
    running = {"type": {"any_": ["RUNNING"]}}  # the filters' nested models, validated from dicts
    with get_client(sync_client=True) as client:
        for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(tags={"all_": [tag]}, state=running)):
            pids = [int(t[len(host) :]) for t in r.tags if t.startswith(host) and t[len(host) :].isdigit()]
            if str(r.id) == str(flow_run.id) or not pids or any(map(psutil.pid_exists, pids)):
                continue
            why = f"its process (pid {pids[0]}) was killed; found by flow run {flow_run.name}"
            client.set_flow_run_state(r.id, Crashed(message=why), force=True)
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [r.id]}),
                task_run_filter=TaskRunFilter(state=running),
            )
            for t in tasks:
                client.set_task_run_state(t.id, Crashed(message=why), force=True)
            ended.append(r.name)
    return ended


def shown_value(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else ("-" if x is None else str(x))


def past_runs(tag: str, limit: int = 50) -> list[dict[str, str]]:
    """The table of this project's runs, newest first (at most `limit`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowFilter, FlowRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name={"any_": [FLOW_NAME]}),
            flow_run_filter=FlowRunFilter(tags={"all_": [tag]}),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
        wanted = ArtifactFilter(key={"any_": [RESULT_KEY]}, flow_run_id={"any_": [r.id for r in runs]})
        found = client.read_artifacts(artifact_filter=wanted) if runs else []
    results = {a.flow_run_id: _row(a.data) for a in found}
    table = []
    for r in runs:
        when = r.start_time or r.expected_start_time
        row = {"time": when.strftime("%Y-%m-%d %H:%M:%S") if when else "-", "flow_run": r.name}
        row["state"] = r.state_name or "-"
        result = results.get(r.id, {})
        table.append(row | {c: shown_value(result.get(c)) for c in COLUMNS[3:]})
    return table


def _row(data: Any) -> dict[str, Any]:
    """The one row of a `sagan-result` table artifact (stored as JSON text)."""
    try:
        rows = json.loads(data) if isinstance(data, str) else data
        return dict(rows[0]) if rows else {}
    except (ValueError, TypeError, KeyError, IndexError):
        return {}
