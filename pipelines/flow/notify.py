"""Flow hooks that call a saved Prefect notification block when a run completes, fails, crashes or is
cancelled. `pipeline.notify_block: TYPE/NAME` (e.g. `slack-webhook/team`) names it; the block holds
the URL and its tokens, so no secret is a param.

The flow tags its run `notify:TYPE/NAME`; a hook reads the tag back from Prefect, since a runner
runs crashed/cancelled hooks in another process, without the flow's params. A failed notification
is one warning naming the block and the error's type, never its text (httpx's quotes the URL), and
never changes the run's outcome.
"""

from __future__ import annotations

import logging

from pipelines.quoting import chat

log = logging.getLogger("sagan.notify")
TAG = "notify:"


def send(block: str, subject: str, body: str) -> bool:
    """`body` (names and reasons escaped so they cannot ping or link: quoting.chat) to `block`."""
    import prefect.blocks.notifications  # noqa: F401 - registers the block types Block.load returns
    from prefect.blocks.core import Block

    try:
        notifier = Block.load(block)
        with notifier.raise_on_failure():  # Apprise blocks only log a failure by default
            notifier.notify(chat(body), chat(subject))
        return True
    except Exception as e:  # noqa: BLE001 - never fails the run; the text may quote the URL
        status = getattr(getattr(e, "response", None), "status_code", None)
        log.warning(
            "could not notify (block %s): %s%s", block, type(e).__name__, f" (HTTP {status})" * bool(status)
        )
        return False


def _notify(flow_run, state, text: str) -> None:
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            tags = client.read_flow_run(flow_run.id).tags
    except Exception as e:  # noqa: BLE001 - e.g. the server is gone; never fails the run
        log.warning("could not notify: the flow run's tags are unreadable (%s)", type(e).__name__)
        return
    if block := next((t.removeprefix(TAG) for t in tags if t.startswith(TAG)), None):
        send(block, f"sagan pipeline {flow_run.name}: {state.name}", f"sagan pipeline {flow_run.name}{text}")


def on_completion(flow, flow_run, state) -> None:
    s = state.result(raise_on_failure=False)
    if not hasattr(s, "fid"):
        text = ": completed"
    elif s.version is None:  # tracking off: nothing registered
        text = f": completed, FID {s.fid:.4g}, not registered ({s.reason})"
    else:
        text = f": FID {s.fid:.4g}, {s.model_name} v{s.version}: {s.decision} ({s.reason})"
    _notify(flow_run, state, text)


def on_failure(flow, flow_run, state) -> None:
    _notify(flow_run, state, f" failed: {state.message or state.name}")


def on_crashed(flow, flow_run, state) -> None:
    _notify(flow_run, state, f" crashed: {state.message or state.name}")


def on_cancellation(flow, flow_run, state) -> None:
    _notify(flow_run, state, f" cancelled: {state.message or state.name}")
