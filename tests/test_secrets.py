"""The flow's webhook URL is a secret: named in params (`pipeline.notify_secret`), read from the
environment or a Prefect Secret block at send time, and stored, logged or shown nowhere.

Local HTTP servers stand in for the chat service: one that records what reaches it, one that
redirects, ones that trickle bytes. The end-to-end test plants a marker in the URL, runs a tracked
training and a flow run through the CLI, and looks for the marker in every file they left.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import pipeline_project, run_cli

from pipelines.flow import notify
from sagan_core.config import Params
from sagan_core.errors import ConfigError
from sagan_core.params_file import load_params

pytestmark = pytest.mark.unit

NAME = "SAGAN_TEST_NOTIFY_WEBHOOK"


class _Server:
    """A local HTTP server whose handler answers `reply(handler)`; `hits` lists the paths requested."""

    def __init__(self, reply):
        self.hits: list[str] = []
        self.bodies: list[dict] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                outer.hits.append(self.path)
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                reply(self, outer)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _answer(status: int, headers: dict | None = None):
    def reply(handler, server):
        handler.send_response(status)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return reply


@pytest.fixture
def servers():
    started: list[_Server] = []

    def start(reply=_answer(204)) -> _Server:
        started.append(_Server(reply))
        return started[-1]

    yield start
    for s in started:
        s.close()


def _flow_run(name: str | None = NAME, **pipeline) -> SimpleNamespace:
    params = Params.model_validate({"pipeline": {"notify_secret": name, **pipeline}})
    return SimpleNamespace(
        name="brave-fox", id=uuid.uuid4(), parameters={"params": params.model_dump(mode="json")}
    )


def _state(name: str, message: str | None = None, result=None) -> SimpleNamespace:
    return SimpleNamespace(name=name, message=message, result=lambda raise_on_failure=True: result)


# ---- params hold a name, never the URL -----------------------------------------------------------------
@pytest.mark.e2e
def test_notify_url_in_params_is_exit_2_naming_the_key_and_the_way_instead(tmp_path):
    marker = "tok-params-5be1c3"
    (tmp_path / "params.yaml").write_text(f"pipeline:\n  notify_url: https://hooks.example.com/{marker}\n")
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "params.yaml")
    assert "pipeline.notify_url" in str(e.value) and "pipeline.notify_secret" in str(e.value)
    assert "env var" in str(e.value) and "Prefect Secret block" in str(e.value) and marker not in str(e.value)
    (tmp_path / "cli").mkdir()
    r = run_cli(
        ["config", "--set", f"pipeline.notify_url=https://hooks.example.com/{marker}"], tmp_path / "cli"
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pipeline.notify_url" in r.stderr, r.stderr
    assert marker not in r.stderr + r.stdout


def test_notify_secret_takes_a_name_and_never_echoes_a_url():
    marker = "tok-name-77a0d2"
    with pytest.raises(ConfigError) as e:
        load_params("params.yaml", [f"pipeline.notify_secret=https://hooks.example.com/{marker}"])
    assert str(e.value).startswith("pipeline.notify_secret: expected the NAME") and marker not in str(e.value)
    assert load_params("params.yaml", ["pipeline.notify_secret=sagan-webhook"]).pipeline.notify_secret


# ---- the POST ------------------------------------------------------------------------------------------
def test_url_with_user_info_is_refused_unsent_and_unshown(servers, monkeypatch, caplog):
    marker = "pw-userinfo-2c94e8"
    server = servers()
    monkeypatch.setenv(NAME, server.url.replace("http://", f"http://bot:{marker}@") + "/hook")
    with caplog.at_level(logging.WARNING, "sagan.notify"):
        assert notify.post(NAME, {"text": "hi"}, 5) is False
    assert server.hits == []
    assert f"could not notify (webhook from {NAME}): refused a URL with user-info" in caplog.text
    assert marker not in caplog.text


def test_redirect_is_not_followed(servers, monkeypatch, caplog):
    target = servers()
    redirect = servers(_answer(302, {"Location": target.url + "/stolen"}))
    monkeypatch.setenv(NAME, redirect.url + "/hook/tok-redirect-0d1f")
    with caplog.at_level(logging.WARNING, "sagan.notify"):
        assert notify.post(NAME, {"text": "hi"}, 5) is False
    assert redirect.hits == ["/hook/tok-redirect-0d1f"] and target.hits == []
    assert "HTTP 302 (a redirect, not followed)" in caplog.text and "tok-redirect" not in caplog.text


def _trickle(head: bool):
    """Reply one byte every 0.2 s for up to 20 s: in the status line/headers (head) or the body."""

    def reply(handler, server):
        raw = handler.wfile
        data = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100 if head else b"x" * 100
        if not head:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            raw.flush()
        for i in range(len(data)):
            if server.stop.wait(0.2):
                return
            try:
                raw.write(data[i : i + 1])
                raw.flush()
            except OSError:  # the client gave up
                return

    return reply


@pytest.mark.parametrize("head", [True, False], ids=["slow-headers", "slow-body"])
def test_total_timeout_bounds_a_server_that_trickles_bytes(servers, monkeypatch, caplog, head):
    server = servers(_trickle(head))
    monkeypatch.setenv(NAME, server.url + "/hook/tok-slow-8e2a")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, "sagan.notify"):
        assert notify.post(NAME, {"text": "hi"}, 1.0) is False
    took = time.monotonic() - start
    assert server.hits and took < 3.0, took  # the server would take 20 s; each byte resets a socket timeout
    assert "no complete answer within 1 s" in caplog.text and "tok-slow" not in caplog.text


# ---- the hooks -----------------------------------------------------------------------------------------
def test_hooks_are_registered_for_every_end_state_and_each_posts(servers, monkeypatch):
    from pipelines.flow.pipeline import sagan_pipeline

    assert sagan_pipeline.on_completion_hooks == [notify.on_completion]
    assert sagan_pipeline.on_failure_hooks == [notify.on_failure]
    assert sagan_pipeline.on_crashed_hooks == [notify.on_crashed]
    assert sagan_pipeline.on_cancellation_hooks == [notify.on_cancellation]
    server = servers()
    monkeypatch.setenv(NAME, server.url + "/hook")
    notify.on_failure(None, _flow_run(), _state("Failed", "stage train failed: boom"))
    notify.on_crashed(None, _flow_run(), _state("Crashed", "Execution was aborted by an interrupt"))
    notify.on_cancellation(None, _flow_run(), _state("Cancelled", "cancelled by the user"))
    notify.on_completion(None, _flow_run(), _state("Completed", result="not a summary"))
    states = [(b["state"], b["text"]) for b in server.bodies]
    assert states == [
        ("Failed", "sagan pipeline brave-fox failed: stage train failed: boom"),
        ("Crashed", "sagan pipeline brave-fox crashed: Execution was aborted by an interrupt"),
        ("Cancelled", "sagan pipeline brave-fox cancelled: cancelled by the user"),
        ("Completed", "sagan pipeline brave-fox: completed"),
    ]
    server.bodies.clear()  # off when no name is set
    notify.on_crashed(None, _flow_run(None), _state("Crashed", "x"))
    assert server.bodies == []


@pytest.mark.e2e
def test_the_url_comes_from_a_prefect_secret_block_when_no_env_var_is_set(prefect_api, servers, caplog):
    from prefect.blocks.system import Secret

    server = servers()
    Secret(value=server.url + "/hook/from-block").save("sagan-test-webhook", overwrite=True)
    assert notify.post("sagan-test-webhook", {"text": "hi"}, 5) is True
    assert server.hits == ["/hook/from-block"]
    with caplog.at_level(logging.WARNING, "sagan.notify"):
        assert notify.post("sagan-test-no-such-webhook", {"text": "hi"}, 5) is False
    assert "no env var sagan-test-no-such-webhook and no readable Prefect Secret block" in caplog.text


# ---- end to end: the marker is nowhere -----------------------------------------------------------------
@pytest.mark.e2e
def test_webhook_url_is_stored_and_shown_nowhere_after_training_and_a_flow_run(
    tmp_path, prefect_api, standin_torch_home, prepared_demo, servers
):
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    marker = f"tok-e2e-{uuid.uuid4().hex[:12]}"
    server = servers(_answer(500))  # the hook's warning (which must not quote the URL) is logged too
    tracked = {"registry__tracking_uri": f"sqlite:///{tmp_path / 'proj/mlflow.db'}"}
    tracked |= {"registry__artifact_location": str(tmp_path / "proj/artifacts")}
    proj = pipeline_project(
        tmp_path / "proj",
        dvc=False,
        train__steps=2,
        train__eval_every=2,
        **tracked,
    )
    text = (proj / "params.yaml").read_text()  # pipeline_project never writes pipeline.* keys
    (proj / "params.yaml").write_text(re.sub(r"(?m)^  notify_secret:.*$", f"  notify_secret: {NAME}", text))
    shutil.copytree(prepared_demo, proj / "data/prepared")
    env = {"SAGAN_TRACKING": "1", "TORCH_HOME": str(standin_torch_home), "PREFECT_API_URL": prefect_api}
    env[NAME] = f"{server.url}/hook/{marker}"
    out = []
    for args in (["train"], ["pipeline", "run"]):
        r = run_cli(args, proj, env, 600)
        out += [r.stdout, r.stderr]
        assert r.returncode == 0, f"sagan {' '.join(args)}: {r.stderr[-3000:]}"
    assert server.hits == [f"/hook/{marker}"], out[-1][-6000:]  # the flow's completion hook used the URL
    assert f"could not notify (webhook from {NAME}): HTTP 500" in "\n".join(out)
    assert marker not in "\n".join(out)
    files = [p for p in proj.rglob("*") if p.is_file()]
    names = {p.relative_to(proj).as_posix() for p in files}
    assert {"params.yaml", "mlflow.db", "models/checkpoint.pt", "models/best.pt"} <= names, names
    assert any(n.startswith("artifacts/") for n in names) and any(n.startswith(".sagan/") for n in names)
    assert [p.relative_to(proj).as_posix() for p in files if marker.encode() in p.read_bytes()] == []
    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    prefect_files = list(db.parent.glob(db.name + "*"))  # the database and its -wal/-shm companions
    assert db in prefect_files and all(marker.encode() not in f.read_bytes() for f in prefect_files)
