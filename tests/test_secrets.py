"""Flow notifications go through a saved Prefect notification block named by `pipeline.notify_block`;
the block holds the webhook URL and its token, so params, logs and warnings never do. A local HTTP
server stands in for the chat service and receives the block's real POST."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from helpers import run_cli

from pipelines.flow import notify
from sagan_core.errors import ConfigError
from sagan_core.params_file import load_params

pytestmark = pytest.mark.unit

BLOCK = "custom-webhook/sagan-test-notify"
MARKER = "tok-block-5be1c3"


@pytest.fixture
def server():
    """A local chat service answering `server.status`; `server.hits` lists (path, JSON body)."""
    hits: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            hits.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(httpd.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.status, httpd.hits = 204, hits
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def save_block(url: str, name: str = BLOCK.split("/")[1]) -> None:
    """What a user does once: a Custom Webhook block whose token lives in the block's secrets."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    CustomWebhookNotificationBlock(
        name="sagan", url=url + "/hook/{{token}}", secrets={"token": MARKER},
        json_data={"text": "{{body}}", "subject": "{{subject}}"},
    ).save(name, overwrite=True)  # fmt: skip


# ---- params hold a block's name, never a URL ------------------------------------------------------------
@pytest.mark.parametrize("old", ["notify_url", "notify_secret", "notify_timeout_s"])
def test_the_old_webhook_keys_are_refused_naming_the_new_one(tmp_path, old):
    (tmp_path / "params.yaml").write_text(f"pipeline:\n  {old}: https://hooks.example.com/{MARKER}\n")
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "params.yaml")
    assert f"pipeline.{old} is removed" in str(e.value) and "pipeline.notify_block: TYPE/NAME" in str(e.value)
    assert MARKER not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("tracking_uri", "tracking.uri"),
        ("experiment", "tracking.experiment"),
        ("tracking", "tracking.enabled"),
        ("artifact_location", "tracking.artifact_location"),
        ("candidate", "eval.checkpoint"),
    ],
)
def test_keys_moved_out_of_registry_are_refused_naming_where_they_live_now(tmp_path, old, new):
    """An old key ignored would record runs elsewhere or register another checkpoint; its value may
    be a URI holding a password, so it is never echoed."""
    (tmp_path / "params.yaml").write_text(f"registry:\n  {old}: https://u:{MARKER}@host\n")
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "params.yaml")
    assert f"registry.{old} is now {new}" in str(e.value), str(e.value)
    assert MARKER not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.e2e
def test_the_old_url_key_is_exit_2_in_one_line_through_the_cli(tmp_path):
    r = run_cli(["config", "--set", f"pipeline.notify_url=https://hooks.example.com/{MARKER}"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pipeline.notify_block" in r.stderr, r.stderr
    assert MARKER not in r.stderr + r.stdout


def test_notify_block_takes_a_block_slug_and_never_echoes_a_url():
    with pytest.raises(ConfigError) as e:
        load_params("params.yaml", [f"pipeline.notify_block=https://hooks.example.com/{MARKER}"])
    assert str(e.value).startswith("pipeline.notify_block: expected TYPE/NAME") and MARKER not in str(e.value)
    assert load_params("params.yaml", [f"pipeline.notify_block={BLOCK}"]).pipeline.notify_block == BLOCK


# ---- the block -------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_the_block_posts_escaped_text_and_a_failure_is_one_warning_without_the_url(
    prefect_api, server, caplog
):
    save_block(server.url)
    assert notify.send(BLOCK, "sagan pipeline <!channel>", "failed: <https://x.example|click> & co")
    assert server.hits == [
        (f"/hook/{MARKER}", {"text": "failed: &lt;https://x.example|click&gt; &amp; co",
                             "subject": "sagan pipeline &lt;!channel&gt;"}),
    ]  # fmt: skip
    server.status = 500
    with caplog.at_level(logging.WARNING, "sagan.notify"):
        assert notify.send(BLOCK, "s", "b") is False  # a chat service that is down never fails the run
        assert notify.send("custom-webhook/sagan-no-such-block", "s", "b") is False
    assert f"could not notify (block {BLOCK}): HTTPStatusError (HTTP 500)" in caplog.text
    assert "could not notify (block custom-webhook/sagan-no-such-block): ValueError" in caplog.text
    assert MARKER not in caplog.text and server.url not in caplog.text


@pytest.mark.e2e
def test_every_end_state_hook_posts_to_the_block_its_flow_run_is_tagged_with(prefect_api, server):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from pipelines.flow.pipeline import sagan_pipeline

    assert sagan_pipeline.on_completion_hooks == [notify.on_completion]
    assert sagan_pipeline.on_failure_hooks == [notify.on_failure]
    assert sagan_pipeline.on_crashed_hooks == [notify.on_crashed]
    assert sagan_pipeline.on_cancellation_hooks == [notify.on_cancellation]
    save_block(server.url)

    @flow(name="sagan-notify-test")
    def nothing() -> None:
        pass

    def state(name, message=None, result=None):
        return SimpleNamespace(name=name, message=message, result=lambda raise_on_failure=True: result)

    with get_client(sync_client=True) as client:
        tagged = client.create_flow_run(nothing, name="brave-fox", tags=[notify.TAG + BLOCK])
        untagged = client.create_flow_run(nothing, name="calm-owl")
    notify.on_failure(None, tagged, state("Failed", "stage train failed: boom"))
    notify.on_crashed(None, tagged, state("Crashed", "Execution was aborted by an interrupt"))
    notify.on_cancellation(None, tagged, state("Cancelled", "cancelled by the user"))
    notify.on_completion(None, tagged, state("Completed", result="not a summary"))
    assert [(b["subject"], b["text"]) for _, b in server.hits] == [
        ("sagan pipeline brave-fox: Failed", "sagan pipeline brave-fox failed: stage train failed: boom"),
        ("sagan pipeline brave-fox: Crashed", "sagan pipeline brave-fox crashed: Execution was aborted by an interrupt"),
        ("sagan pipeline brave-fox: Cancelled", "sagan pipeline brave-fox cancelled: cancelled by the user"),
        ("sagan pipeline brave-fox: Completed", "sagan pipeline brave-fox: completed"),
    ]  # fmt: skip
    server.hits.clear()  # off when the run names no block
    notify.on_crashed(None, untagged, state("Crashed", "x"))
    assert server.hits == []
