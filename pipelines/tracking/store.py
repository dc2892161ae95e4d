"""The tracking store: is tracking on, where it is, how to reach it, and its failures as one line.

Every tracking module goes through `connect` and `call`: a failing server or artifact store ends the
command with one TrackingError naming the server (no credentials), not a retry history.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from filelock import FileLock

from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError, os_cause, storage_cause

# Fail in well under a minute when the server is down (MLflow's own default retries for minutes).
# Users who want more patience set these variables themselves; setdefault never overrides them.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingError(SaganError):
    """The tracking server or the artifact store failed (exit code 1)."""


def enabled(params: Params) -> bool:
    """Tracking on: tracking.enabled and not SAGAN_TRACKING=0 (the test suite's default)."""
    env = os.environ.get("SAGAN_TRACKING", "").strip().lower()
    return params.tracking.enabled and env not in ("0", "off", "false", "no")


def redact(uri: str) -> str:
    """The URI without user:password@ (never print or log credentials)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    # the host after the last "@", as written (an IPv6 literal keeps its brackets)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc else uri


# scheme://user:password@ anywhere in a message (MLflow's and requests' errors quote the full URL)
_USER_INFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")


def scrub(text: str) -> str:
    """`text` with the user-info of every URL in it removed (for messages that quote URLs)."""
    return _USER_INFO.sub(r"\1", text)


def _scrub_record(record: logging.LogRecord) -> bool:
    """Log filter: rewrites a record whose text carries user-info (MLflow logs request URLs on failures)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
        return True
    if _USER_INFO.search(message):
        record.msg, record.args = scrub(message), None
    return True


def project_root() -> Path:
    """$DVC_ROOT when DVC runs the stage (`dvc exp run --queue/--temp` run in a copy that is thrown
    away: experiments record into the project's store), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(params: Params) -> str:
    uri = params.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{project_root() / 'mlflow.db'}"


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "postgresql", "mysql", "mssql", "file:")) or "://" not in uri


def connect(params: Params):
    """Point MLflow at the configured store; returns (client, uri). Checks the server answers."""
    for k, v in _HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import mlflow

    # urllib3 warns on every retry; the retries are expected and the final failure is reported once.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # MLflow logs each database error with its traceback (90 lines for a full disk), then raises it.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    uri = tracking_uri(params)
    # Keep a user-info URI out of every line MLflow prints: its "View run ... at: <URL>" goes to
    # stdout with no logger to filter (so the public switch turns it off); its loggers end in the
    # "mlflow" logger's own handler (propagate=False), which gets the filter, as does urllib3's.
    if uri != redact(uri):
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    for name in ("mlflow", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            target.addFilter(_scrub_record)  # added once: addFilter skips a filter already there
    # set_*_uri also export $MLFLOW_TRACKING_URI/$MLFLOW_REGISTRY_URI; left there, the next project
    # connected in this process (a worker serving several, the tests) would record into this one.
    kept = {n: os.environ.get(n) for n in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in kept.items():
        os.environ.pop(name, None) if value is None else os.environ.update({name: value})
    # Two processes creating one new sqlite store (two queued DVC experiments) would both run
    # MLflow's schema migrations, and one would fail: they take turns (MLflow has no lock of its own).
    db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    if db:
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock") if db else contextlib.nullcontext():
        try:
            client = mlflow.MlflowClient(uri, registry_uri=uri)
        except Exception as e:  # a new sqlite store on a full disk; anything else keeps its traceback
            if local := local_write_failure(uri, e):
                raise local from None
            raise
    return client, uri


def experiment_id(client, params: Params, uri: str) -> str:
    """The experiment `tracking.experiment`, created on first use (a local store's artifacts in
    `<project>/mlartifacts`; a server's in tracking.artifact_location, else its default)."""
    from mlflow.exceptions import MlflowException

    name = params.tracking.experiment
    exp = call(uri, client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(f"tracking.experiment: experiment {name!r} is deleted in {redact(uri)}")
        if exp.tags.get(EXPERIMENT_KIND) is None:  # made before sagan tagged its experiments
            call(uri, client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return exp.experiment_id
    location = params.tracking.artifact_location
    if location is None and _is_local_store(uri):
        location = (project_root() / "mlartifacts").as_uri()
    try:
        tags = {EXPERIMENT_KIND: MODEL_TRAINING, "mlflow.note.content": EXPERIMENT_NOTE}
        return call(uri, client.create_experiment, name, artifact_location=location, tags=tags)
    except MlflowException as e:  # created by a concurrent process in the meantime
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
        return client.get_experiment_by_name(name).experiment_id


# The experiment type the MLflow 3 UI reads (what its "experiment type" selector sets): a model
# training experiment opens on its runs; untagged, the UI infers one and may open GenAI traces.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
EXPERIMENT_NOTE = (
    "SAGAN training runs (sagan train / evaluate / register): curves, sample grids and attention figures"
    " per step, FID/KID/IS, the EMA generator as a model."
)


# ---- failures as one line: classified by exception types and codes, never by their text ---------
def _chain(e: BaseException | None) -> list[BaseException]:
    """`e` and what it was raised from or during (MLflow wraps requests, which wraps urllib3)."""
    found: list[BaseException] = []
    while e is not None and e not in found:
        found.append(e)
        e = e.__cause__ or e.__context__
    return found


def _transport(e: BaseException) -> bool:
    """No answer, or no usable one, from the server: a connection, timeout or retries-exhausted error."""
    from requests.exceptions import RequestException  # wraps urllib3's own errors

    return any(isinstance(c, (RequestException, ConnectionError, TimeoutError)) for c in _chain(e))


def _proxy_failed(e: BaseException, answered: bool = False) -> bool:
    """A request to the server's artifact proxy (/mlflow-artifacts/) failed with HTTP 5xx (or
    retries exhausted on it); `answered`: the server answered just now, so any failure counts."""
    from requests.exceptions import RequestException, RetryError

    for c in _chain(e):
        if isinstance(c, RequestException) and "/mlflow-artifacts/" in str(getattr(c.request, "url", "")):
            status = c.response.status_code if c.response is not None else 0
            return answered or isinstance(c, RetryError) or status >= 500
    return False


def unreachable(uri: str, e: BaseException) -> TrackingError:
    root = _chain(e)[-1]  # the socket's own error (refused, unknown host, timed out), not the retry history
    reason = scrub(" ".join(str(root).split()))[:200]
    return TrackingError(
        f"MLflow tracking server {redact(uri)} unreachable or failing after "
        f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries ({type(root).__name__}: {reason}); "
        "local checkpoints and metrics are intact, rerun the command when the server is back"
    )


def server_store_error(uri: str) -> TrackingError:
    """The tracking server took the upload but could not store it: its artifact store is at fault."""
    return TrackingError(
        f"MLflow tracking server {redact(uri)} could not store the artifact (its artifact proxy failed); on the "
        "server's side, check its artifact store: the --artifacts-destination bucket exists, its S3 endpoint "
        "(MLFLOW_S3_ENDPOINT_URL) and credentials (AWS_*) are right; the local checkpoint and metrics are intact"
    )


_SQLITE_WRITE = {8, 10, 13}  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL: a write sqlite could not make


def local_write_failure(uri: str, e: BaseException, location: str = "") -> TrackingError | None:
    """The local side of MLflow could not write: the sqlite store, or a local artifact folder
    (`location`, a file: URI). One line naming the path and the cause; None for any other failure."""
    for c in _chain(e) if uri.startswith("sqlite:///") else []:
        if (getattr(c, "sqlite_errorcode", -1) & 0xFF) in _SQLITE_WRITE:  # the primary result code
            return TrackingError(
                f"{uri.removeprefix('sqlite:///')}: could not write the MLflow store (sqlite: {c}); "
                "the local checkpoint and metrics are intact, rerun the command when there is room"
            )
    os_error = storage_cause(e)
    local = location.startswith("file:") or (location and "://" not in location)
    if os_error is not None and local:
        where = os_error.filename or urlsplit(location).path or location
        return TrackingError(
            f"{where}: could not write an MLflow artifact ({os_cause(os_error)}); the local checkpoint "
            "and metrics are intact"
        )
    return None


def call(uri: str, fn, *args, **kwargs):
    """Run one MLflow client call, turning connection failures into a one-line TrackingError."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        return fn(*args, **kwargs)
    except (RequestException, ConnectionError, TimeoutError, MlflowException) as e:
        if _proxy_failed(e):
            raise server_store_error(uri) from None
        if local := local_write_failure(uri, e):
            raise local from None
        failing = isinstance(e, MlflowException) and e.get_http_status_code() >= 500
        if _transport(e) or (failing and not _is_local_store(uri)):  # a server's 5xx: "failing" as well
            raise unreachable(uri, e) from None
        raise


def artifact_error(uri: str, e: BaseException, client=None, run_id: str | None = None) -> SaganError:
    """One line naming where the upload went (bucket and endpoint for S3) and why it failed."""
    if isinstance(e, SaganError):
        return e
    reason = scrub(" ".join(str(e).split()))[:300]
    try:
        location = client.get_run(run_id).info.artifact_uri if client and run_id else ""
    except Exception:  # noqa: BLE001 - only decorates the message; the upload error is the one to report
        location = ""
    if local := local_write_failure(uri, e, location):
        return local
    if location.startswith("s3://"):  # this client uploads to S3 itself: the server is not involved
        bucket = urlsplit(location).netloc
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL", "the AWS default endpoint")
        return TrackingError(
            f"S3 upload to bucket {bucket!r} at {endpoint} failed ({type(e).__name__}: {reason}); check that "
            "the bucket exists, the endpoint answers and this machine's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/"
            "MLFLOW_S3_ENDPOINT_URL environment; the local checkpoint and metrics are intact"
        )
    # The server answered get_run just now, so a failed upload it proxies (HTTP 5xx, or the
    # connection reset when it answers 500 before reading the body) is its artifact store's failure.
    if _proxy_failed(e, answered=location.startswith("mlflow-artifacts:")):
        return server_store_error(uri)
    if not location and _transport(e):
        return unreachable(uri, e)
    where = f" to {redact(location)}" if location else ""
    return TrackingError(
        f"MLflow logging failed{where} ({type(e).__name__}: {reason}); check the artifact store and the "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/MLFLOW_S3_ENDPOINT_URL environment; the local checkpoint "
        "and metrics are intact"
    )
