"""Flow hooks that post a message to `pipeline.notify_url` (off when null) when a run fails or completes.

The body is JSON with a `text` line (what Slack, Mattermost and Teams incoming webhooks display)
plus the details: flow run name and id, state, and for a completed run the FID and the promotion
decision. A webhook that is down never changes the run's outcome: the failure is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("sagan.notify")


def _notify_url(flow_run) -> str | None:
    """pipeline.notify_url of the run's project (its params file and overrides, as the flow read them)."""
    from pipelines.flow.settings import to_overrides
    from sagan_core.errors import SaganError
    from sagan_core.params_file import load_params

    p = flow_run.parameters or {}
    if isinstance(p.get("params"), dict):  # the validated params the CLI passed, as JSON
        return (p["params"].get("pipeline") or {}).get("notify_url")
    path = Path(p.get("project_dir", ".")) / p.get("params_file", "params.yaml")
    try:
        params = load_params(path, [*to_overrides(p.get("settings")), *(p.get("overrides") or [])])
    except SaganError:  # the run failed on its own params: no URL to trust
        return None
    return params.pipeline.notify_url


def post(url: str, body: dict[str, Any]) -> None:
    import requests

    try:
        requests.post(url, json=body, timeout=10).raise_for_status()
    except requests.RequestException as e:
        log.warning("could not notify %s: %s", url, e)


def on_completion(flow, flow_run, state) -> None:
    url = _notify_url(flow_run)
    if not url:
        return
    body: dict[str, Any] = {"flow_run": flow_run.name, "flow_run_id": str(flow_run.id), "state": state.name}
    summary = state.result(raise_on_failure=False)
    if hasattr(summary, "fid"):
        body |= {
            "fid": summary.fid,
            "kid": summary.kid,
            "model": summary.model_name,
            "version": summary.version,
        }
        body |= {"decision": summary.decision, "reason": summary.reason}
        text = f"{summary.model_name} v{summary.version}: {summary.decision} ({summary.reason})"
    else:
        text = "completed"
    post(url, body | {"text": f"sagan pipeline {flow_run.name}: {text}"})


def on_failure(flow, flow_run, state) -> None:
    url = _notify_url(flow_run)
    if not url:
        return
    message = state.message or state.name
    body = {
        "flow_run": flow_run.name,
        "flow_run_id": str(flow_run.id),
        "state": state.name,
        "message": message,
    }
    post(url, body | {"text": f"sagan pipeline {flow_run.name} failed: {message}"})
