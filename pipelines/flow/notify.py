"""Flow hooks that POST a message to a chat webhook when a run completes, fails, crashes or is cancelled.

A webhook URL carries its token, so it is a secret and never a param: `pipeline.notify_secret`
holds a NAME (null: off), and the URL is read at send time from env var NAME if set, else from the
Prefect Secret block NAME. The URL is never logged, stored or shown: a failed POST logs
`could not notify (webhook from NAME): <reason>` with a reason written here, never an exception's
text (requests' messages quote the URL). A URL with user-info (`user:password@`) is refused, as
for `registry.tracking_uri`. The POST follows no redirect (the token would travel on) and is
bounded in total by `pipeline.notify_timeout_s`, from connecting to the last byte (a server that
trickles bytes cannot hold the hook longer).

The body is JSON with a `text` line (what Slack, Mattermost and Teams incoming webhooks display;
its `&`, `<`, `>` escaped as Slack asks, so a name or reason cannot ping or link: quoting.py) plus
the details: flow run name and id, state, and for a completed run the FID and the promotion
decision. A webhook that is down never changes the run's outcome: the failure is logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.quoting import chat

log = logging.getLogger("sagan.notify")

_BODY_LIMIT = 1 << 16  # bytes of a reply read (and dropped) before the connection is released


class NotifyError(Exception):
    """Why a message was not sent, in words that never contain the URL."""


def _settings(flow_run) -> tuple[str | None, float]:
    """(pipeline.notify_secret, pipeline.notify_timeout_s) of the run's project, as the flow read them."""
    from pipelines.flow.settings import to_overrides
    from sagan_core.config import PipelineConfig
    from sagan_core.errors import SaganError
    from sagan_core.params_file import load_params

    p = flow_run.parameters or {}
    if isinstance(p.get("params"), dict):  # the validated params the CLI passed, as JSON
        try:
            cfg = PipelineConfig.model_validate(p["params"].get("pipeline") or {})
        except ValueError:  # pydantic's ValidationError: not the params this code validates
            return None, 0.0
        return cfg.notify_secret, cfg.notify_timeout_s
    path = Path(p.get("project_dir", ".")) / p.get("params_file", "params.yaml")
    try:
        params = load_params(path, [*to_overrides(p.get("settings")), *(p.get("overrides") or [])])
    except SaganError:  # the run failed on its own params: no name to trust
        return None, 0.0
    return params.pipeline.notify_secret, params.pipeline.notify_timeout_s


def resolve(name: str) -> str:
    """The webhook URL: env var NAME if set, else the Prefect Secret block NAME; checked, never shown."""
    url = os.environ.get(name)
    if not url:
        try:
            from prefect.blocks.system import Secret

            url = Secret.load(name, _sync=True).get()
        except Exception as e:  # noqa: BLE001 - any failure to load is "no such secret"; the text may hold it
            raise NotifyError(
                f"no env var {name} and no readable Prefect Secret block {name} ({type(e).__name__})"
            ) from None
    if not isinstance(url, str):
        raise NotifyError("the secret is not a string")
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise NotifyError("the secret is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise NotifyError("the secret is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise NotifyError(
            "refused a URL with user-info (user:password@); put the token where the "
            "webhook service expects it (its path or a query parameter)"
        )
    return url


def _send(url: str, body: dict[str, Any], deadline: float, done: dict[str, Any]) -> None:
    import requests

    left = max(0.1, deadline - time.monotonic())
    try:
        with requests.post(url, json=body, timeout=(left, left), allow_redirects=False, stream=True) as r:
            read = 0
            for chunk in r.iter_content(4096):
                read += len(chunk)
                if time.monotonic() > deadline or read > _BODY_LIMIT:
                    break
            done["status"] = r.status_code
    except requests.Timeout:
        done["error"] = "timed out"
    except requests.ConnectionError:
        done["error"] = "could not connect"
    except requests.RequestException as e:
        done["error"] = type(e).__name__


def post_url(url: str, body: dict[str, Any], timeout_s: float) -> None:
    """POST `body` as JSON, no redirects, at most `timeout_s` in all; NotifyError says why not."""
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    worker = threading.Thread(target=_send, args=(url, body, deadline, done), daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():  # left behind: a daemon thread whose sockets time out on their own
        raise NotifyError(f"no complete answer within {timeout_s:g} s")
    if "error" in done:
        raise NotifyError(done["error"])
    status = done.get("status")
    if status is None or not 200 <= status < 300:
        redirect = " (a redirect, not followed)" if status and 300 <= status < 400 else ""
        raise NotifyError(f"HTTP {status}{redirect}")


def post(name: str, body: dict[str, Any], timeout_s: float) -> bool:
    """Send to the webhook named `name`; a failure is one warning naming `name`, never the URL."""
    try:
        post_url(resolve(name), body, timeout_s)
        return True
    except NotifyError as e:
        log.warning("could not notify (webhook from %s): %s", name, e)
        return False


def _body(flow_run, state, text: str, **extra: Any) -> dict[str, Any]:
    body = {"flow_run": flow_run.name, "flow_run_id": str(flow_run.id), "state": state.name}
    # the run's name, model name, reason and error message are user-named: shown as text in the chat
    return body | extra | {"text": chat(f"sagan pipeline {flow_run.name}{text}")}


def on_completion(flow, flow_run, state) -> None:
    name, timeout_s = _settings(flow_run)
    if not name:
        return
    summary = state.result(raise_on_failure=False)
    if hasattr(summary, "fid") and summary.version is None:  # tracking off: nothing registered
        text = f": completed, not registered ({summary.reason})"
        post(name, _body(flow_run, state, text, fid=summary.fid, kid=summary.kid), timeout_s)
    elif hasattr(summary, "fid"):
        extra = {"fid": summary.fid, "kid": summary.kid, "model": summary.model_name}
        extra |= {"version": summary.version, "decision": summary.decision, "reason": summary.reason}
        text = f": {summary.model_name} v{summary.version}: {summary.decision} ({summary.reason})"
        post(name, _body(flow_run, state, text, **extra), timeout_s)
    else:
        post(name, _body(flow_run, state, ": completed"), timeout_s)


def _on_end(flow_run, state, what: str) -> None:
    name, timeout_s = _settings(flow_run)
    if not name:
        return
    message = state.message or state.name
    post(name, _body(flow_run, state, f" {what}: {message}", message=message), timeout_s)


def on_failure(flow, flow_run, state) -> None:
    _on_end(flow_run, state, "failed")


def on_crashed(flow, flow_run, state) -> None:
    _on_end(flow_run, state, "crashed")


def on_cancellation(flow, flow_run, state) -> None:
    _on_end(flow_run, state, "cancelled")
