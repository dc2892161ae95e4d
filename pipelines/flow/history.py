"""Past pipeline runs of this project, from Prefect's own records (no file of ours).

Every flow run is tagged with its project (`project_tag`: the folder's name and a hash of host and
path, so two projects sharing one Prefect server, or two checkouts of one project, are told apart),
and each finished run leaves a one-row table artifact `sagan-result` (its scores and decision).
`past_runs` joins the two: every run of the `sagan-pipeline` flow with this project's tag, newest
first, with its state (failed and crashed runs included) and, where it got that far, its result.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

FLOW_NAME = "sagan-pipeline"
RESULT_KEY = "sagan-result"
COLUMNS = ["time", "flow_run", "state", "data_hash", "trained_steps", "fid", "kid", "version", "decision"]


def project_tag(project_dir: str | Path = ".") -> str:
    here = Path(project_dir).resolve()
    digest = hashlib.sha256(f"{socket.gethostname()}:{here}".encode()).hexdigest()[:8]
    return f"project:{here.name}-{digest}"


def tag_flow_run(tag: str) -> None:
    """Add `tag` to the running flow run (tags are Prefect's own filterable field)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    tags = list(flow_run.tags or [])
    if tag not in tags:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=[*tags, tag])


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else ("-" if x is None else str(x))


def past_runs(tag: str, limit: int = 50) -> list[dict[str, str]]:
    """The table of this project's runs, newest first (at most `limit`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
        found = (
            client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[RESULT_KEY]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs]),
                )
            )
            if runs
            else []
        )
    results = {a.flow_run_id: _row(a.data) for a in found}
    table = []
    for r in runs:
        when = r.start_time or r.expected_start_time
        row = {"time": when.strftime("%Y-%m-%d %H:%M:%S") if when else "-", "flow_run": r.name}
        row["state"] = r.state_name or "-"
        result = results.get(r.id, {})
        table.append(row | {c: _fmt(result.get(c)) for c in COLUMNS[3:]})
    return table


def _row(data: Any) -> dict[str, Any]:
    """The one row of a `sagan-result` table artifact (stored as JSON text)."""
    try:
        rows = json.loads(data) if isinstance(data, str) else data
        return dict(rows[0]) if rows else {}
    except (ValueError, TypeError, KeyError, IndexError):
        return {}
