"""Prefect fixtures (a pytest plugin, registered in conftest.py), one of each per session: the
temporary test server (in this process) and a real `prefect server start` process; `wait_for`, the
poll their users share (a server's health, a deployment, a flow run's end)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import REPO, free_port, stop_process_group


def wait_for(what: str, check, timeout: float = 240, every: float = 1.0):
    """Poll `check()` until it returns something true (returned); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A temporary Prefect server for the whole session (each start costs ~20 s); its API URL.

    Subprocesses reach the same server by setting PREFECT_API_URL to the returned URL.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> dict[str, str]:
    """A real `prefect server start` on a free port, with its own PREFECT_HOME (schedules, served
    deployments and work pools need one; the temporary server cannot serve them).

    Yields the environment that reaches it: os.environ without PREFECT_* settings, plus
    PREFECT_HOME, PREFECT_API_URL and PYTHONPATH (this checkout)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    env |= {"PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        assert server.poll() is None, (home / "server.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for("the Prefect server", healthy)
        yield env
    finally:
        stop_process_group(server)
        log.close()
