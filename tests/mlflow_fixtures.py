"""Real services for the MLflow tests (a pytest plugin, registered in conftest.py), one of each per session.

- an S3-compatible server on 127.0.0.1 (moto in server mode, ThreadedMotoServer(port=0)) with a bucket;
- an `mlflow server` process (sqlite backend) whose artifact destination is that bucket, reached by
  boto3 over HTTP (MLFLOW_S3_ENDPOINT_URL). Both are stopped at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port

BUCKET = "sagan-mlflow-test"
# Fake keys that moto accepts; tests check they never show up in MLflow (params, tags).
ACCESS_KEY = "AKIASAGANTESTKEY0001"
SECRET_KEY = "sagan-test-secret-do-not-log-7f3a9c"


@dataclass
class S3:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3(f"http://{host}:{port}", BUCKET)
    s3.client().create_bucket(Bucket=BUCKET)
    yield s3
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """URI of a running `mlflow server` (sqlite) storing artifacts in the moto bucket."""
    root: Path = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    # No background job runner (it starts ~8 worker processes we do not need on a 2-core machine).
    env = (
        os.environ
        | s3_server.env()
        | {"PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    )
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed in the finalizer below
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            f"s3://{s3_server.bucket}/artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:  # the server and its uvicorn worker share a new session: stop the whole group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


class MlflowServer:
    """Another `mlflow server` (its own sqlite in `root`) for tests that break or stop their server;
    the session's `mlflow_server` must keep running. `stop()` then `start()` keeps port and store."""

    def __init__(self, root: Path, s3: S3, destination: str):
        self.root, self.s3, self.destination = root, s3, destination
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        env = os.environ | self.s3.env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"]
        cmd += ["--artifacts-destination", self.destination, "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.root / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server not up: {(self.root / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                if r.status == 200:
                    return self
            time.sleep(0.5)

    def stop(self) -> None:
        """The whole process group (server and its uvicorn worker), as the session fixture does."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
