"""MLflow tracking: one MLflow run per experiment run, shared by train, evaluate and register.

`sagan train` creates the run and records its id in `<train.out_dir>/mlflow_run.json` (written
atomically, next to the checkpoint); `sagan evaluate`, `sagan register` and `sagan train --resume`
reopen that run, so params, curves, images, the checkpoint, the generator model and FID all live in
one place.

Where things go:
- embedded default: tracking store `sqlite:///<project>/mlflow.db`, artifacts in `<project>/mlartifacts`
  (MLflow 3.13+ refuses the plain `./mlruns` file store);
- team mode: `registry.tracking_uri` or `$MLFLOW_TRACKING_URI` = an `mlflow server` (which stores
  artifacts on S3 with `--artifacts-destination s3://...`); credentials come from the environment
  (AWS_* / MLFLOW_S3_ENDPOINT_URL / MLFLOW_TRACKING_TOKEN) and are never logged: params are only the
  validated params.yaml, and URIs are shown without their user-info part.

Logging must not slow training: metrics are buffered by the trainer to one call per `train.log_every`
steps and sent with one asynchronous `log_batch`; images are uploaded every `train.sample_every` steps;
the checkpoint and the model are uploaded once at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sagan_core.atomic import write_json
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError
from sagan_core.evaluate import protocol_id
from sagan_core.trainer import Callback

log = logging.getLogger("sagan.mlflow")

MODEL_NAME = "generator"  # name of the logged generator model inside the run
CHECKPOINT_DIR = "checkpoint"  # artifact folder holding the full training checkpoint

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
    """Tracking on: registry.tracking and not SAGAN_TRACKING=0 (the test suite's default)."""
    env = os.environ.get("SAGAN_TRACKING", "").strip().lower()
    return params.registry.tracking and env not in ("0", "off", "false", "no")


# ---- URIs and connection -------------------------------------------------------------------------
def redact(uri: str) -> str:
    """The URI without user:password@ (never print or log credentials)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=host))
    return uri


def tracking_uri(params: Params) -> str:
    """registry.tracking_uri, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
    uri = params.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "postgresql", "mysql", "mssql", "file:")) or "://" not in uri


def connect(params: Params):
    """Point MLflow at the configured store; returns (client, uri). Checks the server answers."""
    for k, v in _HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import mlflow
    from mlflow import MlflowClient

    # urllib3 warns on every retry; the retries are expected and the final failure is reported once.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    return client, uri


def unreachable(uri: str, e: BaseException) -> TrackingError:
    reason = " ".join(str(e).split())
    for hint in ("Connection refused", "Name or service not known", "timed out", "Max retries exceeded"):
        if hint in reason:  # the one phrase that says why, not urllib3's whole retry history
            reason = hint
            break
    if len(reason) > 200:
        reason = reason[:200] + "..."
    return TrackingError(
        f"MLflow tracking server {redact(uri)} unreachable or failing after "
        f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries ({type(e).__name__}: {reason}); "
        "local checkpoints and metrics are intact, rerun the command when the server is back"
    )


def call(uri: str, fn, *args, **kwargs):
    """Run one MLflow client call, turning connection failures into a one-line TrackingError."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        return fn(*args, **kwargs)
    except (RequestException, ConnectionError, TimeoutError) as e:
        raise unreachable(uri, e) from None
    except MlflowException as e:
        msg = str(e)
        if "API request to" in msg and ("Max retries" in msg or "Connection" in msg or "failed" in msg):
            raise unreachable(uri, e) from None
        raise


def experiment_id(client, params: Params, uri: str) -> str:
    """The experiment `registry.experiment`, created on first use.

    With a local (sqlite) store its artifacts go to `<project>/mlartifacts` explicitly; with a server,
    to `registry.artifact_location` when set, else the server's default (its --artifacts-destination).
    """
    from mlflow.exceptions import MlflowException

    name = params.registry.experiment
    exp = call(uri, client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(f"registry.experiment: experiment {name!r} is deleted in {redact(uri)}")
        return exp.experiment_id
    location = params.registry.artifact_location
    if location is None and _is_local_store(uri):
        location = (Path.cwd().resolve() / "mlartifacts").as_uri()
    try:
        return call(uri, client.create_experiment, name, artifact_location=location)
    except MlflowException as e:  # created by a concurrent process in the meantime
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
        return client.get_experiment_by_name(name).experiment_id


# ---- the run record ------------------------------------------------------------------------------
def run_file(params: Params) -> Path:
    return params.train.run_record


def read_run_record(params: Params) -> dict[str, Any] | None:
    path = run_file(params)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SaganError(f"{path}: unreadable MLflow run record ({e}); delete it and train again") from None


def write_run_record(params: Params, record: dict[str, Any]) -> None:
    """Atomic write: a crash never leaves a half-written record that loses the run id."""
    write_json(run_file(params), record)


def require_run(params: Params, what: str) -> dict[str, Any]:
    record = read_run_record(params)
    if record is None:
        raise ConfigError(
            f"{what}: no MLflow run recorded at {run_file(params)} (run `sagan train` with tracking on first)"
        )
    return record


# ---- lineage -------------------------------------------------------------------------------------
def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the working tree, ('unknown', False) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        )
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def data_lineage(params: Params) -> dict[str, str]:
    """content_hash of the prepared data, plus the DVC md5 of its folder when DVC tracks it."""
    prepared = Path(params.data.prepared_dir)
    out = {"path": str(prepared)}
    try:
        manifest = json.loads((prepared / "manifest.json").read_text())
        out["content_hash"] = str(manifest.get("content_hash", "unknown"))
        out["num_images"] = str(manifest.get("num_images", ""))
    except (OSError, ValueError):
        out["content_hash"] = "unknown"
    dvc = _dvc_md5(prepared)
    if dvc:
        out["dvc_md5"] = dvc
    return out


def _dvc_md5(prepared: Path) -> str | None:
    """The md5 `dvc.lock` (or a `.dvc` file) records for the prepared folder; None without DVC."""
    import yaml

    target = os.path.normpath(str(prepared))
    candidates = [Path("dvc.lock"), prepared.with_name(prepared.name + ".dvc")]
    for path in candidates:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        outs = []
        if "stages" in doc:
            for stage in (doc.get("stages") or {}).values():
                outs += stage.get("outs", []) if isinstance(stage, dict) else []
        outs += doc.get("outs", []) or []
        for o in outs:
            path_ok = isinstance(o, dict) and os.path.normpath(str(o.get("path", ""))) in (
                target,
                prepared.name,
            )
            if path_ok and o.get("md5"):
                return str(o["md5"])
    return None


# ---- the training callback -----------------------------------------------------------------------
class MlflowCallback(Callback):
    """Records a training run in MLflow (see the module docstring).

    Created before the trainer so an unreachable server fails the command before any training;
    afterwards a logging failure never stops training: it is reported once and re-raised at the end
    (local checkpoint, samples and metrics/train.csv are written regardless).
    """

    def __init__(self, params: Params, resume: bool = False):
        from mlflow.entities import RunStatus

        self.params, self.resume = params, resume
        self.client, self.uri = connect(params)
        self.pending: list[Any] = []  # async log_batch operations, awaited at the end
        self.error: BaseException | None = None
        self.monitor = None
        self.ended = False
        record = read_run_record(params) if resume else None
        if record and record.get("tracking_uri") != redact(self.uri):
            log.warning(
                "--resume: the run was tracked at %s, now tracking at %s: starting a new MLflow run",
                record.get("tracking_uri"),
                redact(self.uri),
            )
            record = None
        if record:
            self.run_id = record["run_id"]
            call(self.uri, self.client.update_run, self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.experiment_id = record["experiment_id"]
        else:
            self.experiment_id = experiment_id(self.client, params, self.uri)
            run = call(
                self.uri,
                self.client.create_run,
                self.experiment_id,
                tags={"mlflow.source.type": "LOCAL", "mlflow.source.name": "sagan train"},
            )
            self.run_id = run.info.run_id
        write_run_record(
            params,
            {
                "run_id": self.run_id,
                "experiment_id": self.experiment_id,
                "tracking_uri": redact(self.uri),
            },
        )
        log.info("MLflow run %s at %s", self.run_id, redact(self.uri))

    # -- helpers --
    def _guard(self, what: str, fn, *args, **kwargs):
        """Run a logging call; the first failure is kept and reported, later calls are skipped."""
        if self.error is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never kill a training run midway
            self.error = e
            log.warning("MLflow logging stopped (%s failed: %s); training continues", what, e)
            return None

    def _log_params(self) -> None:
        from mlflow.entities import Param, RunTag

        flat = {k: ("null" if v is None else str(v)) for k, v in self.params.flat().items()}
        logged = self.client.get_run(self.run_id).data.params
        new = [Param(k, v[:6000]) for k, v in flat.items() if k not in logged]
        # MLflow params are immutable: a --resume with other values (e.g. more steps) is kept as tags.
        changed = [RunTag(f"sagan.resume.{k}", v) for k, v in flat.items() if k in logged and logged[k] != v]
        for i in range(0, max(len(new), 1), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=new[i : i + 100], tags=changed if i == 0 else [])

    def _log_lineage(self, info: dict[str, Any]) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag, RunTag

        commit, dirty = git_commit()
        data = data_lineage(self.params)
        tags = {
            "mlflow.source.git.commit": commit,
            "sagan.git_commit": commit,
            "sagan.git_dirty": str(dirty).lower(),
            "sagan.data.content_hash": data["content_hash"],
            "sagan.spec": json.dumps(info.get("spec", {}), sort_keys=True),
            "sagan.device": str(info.get("device")),
            "sagan.world_size": str(info.get("world_size")),
        }
        if "dvc_md5" in data:
            tags["sagan.data.dvc_md5"] = data["dvc_md5"]
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(Path(data["path"]).resolve()))
        dataset = MetaDataset(source, name="prepared", digest=data["content_hash"][:36])
        input_tags = [
            InputTag("mlflow.data.context", "training"),
            InputTag("content_hash", data["content_hash"]),
        ]
        if "dvc_md5" in data:
            input_tags.append(InputTag("dvc_md5", data["dvc_md5"]))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(), input_tags)])

    # -- Callback --
    def on_start(self, info: dict[str, Any]) -> None:
        self._guard("logging params", self._log_params)
        self._guard("logging lineage", self._log_lineage, info)
        try:  # system metrics (CPU, memory, disk, network, GPU) sampled in a background thread
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=10, resume_logging=self.resume, tracking_uri=self.uri
            )
            self.monitor.start()
        except Exception as e:  # noqa: BLE001 - optional (needs psutil); never worth failing over
            log.warning("MLflow system metrics unavailable: %s", e)
            self.monitor = None

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        op = self._guard(
            "logging metrics", self.client.log_batch, self.run_id, metrics=batch, synchronous=False
        )
        if op is not None:
            self.pending.append(op)

    def on_image(self, step: int, key: str, path: Path) -> None:
        from PIL import Image

        def upload():
            with Image.open(path) as im:
                self.client.log_image(self.run_id, im.convert("RGB"), key=key, step=step)

        self._guard(f"logging image {key}", upload)

    def on_end(self, summary: dict[str, Any]) -> None:
        self.ended = True
        self._guard("flushing metrics", self._flush)
        self._stop_monitor()
        if self.error is None:
            self._guard("uploading the checkpoint and model", self._log_final, summary)
        status = "FINISHED" if self.error is None else "FAILED"
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:  # noqa: BLE001 - the error below is the one to report
            log.debug("could not close MLflow run: %s", e)
        if self.error is not None:
            raise artifact_error(self.uri, self.error, self.client, self.run_id) from None

    def close(self) -> None:
        """After training: a run with nothing left to train (on_end never ran) is closed as finished."""
        if not self.ended:
            self.fail(status="FINISHED")

    def fail(self, status: str = "FAILED") -> None:
        """Training raised: mark the run failed (best effort), stop the monitor."""
        self._stop_monitor()
        try:
            self._flush()
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:  # noqa: BLE001 - the training error is the one to report
            log.debug("could not mark MLflow run failed: %s", e)

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            with contextlib.suppress(Exception):  # best effort: it only samples CPU/GPU load
                self.monitor.finish()
            self.monitor = None

    def _flush(self) -> None:
        for op in self.pending:
            op.wait()
        self.pending.clear()

    def _log_final(self, summary: dict[str, Any]) -> None:
        from sagan_core import checkpoint as ckpt_io

        ckpt = Path(summary["checkpoint"])
        self.client.log_artifact(self.run_id, str(ckpt), CHECKPOINT_DIR)
        metrics_csv = Path(self.params.train.metrics_file)
        if metrics_csv.exists():
            self.client.log_artifact(self.run_id, str(metrics_csv), "metrics")
        attention = Path(summary.get("attention", ""))
        if attention.is_file():
            self.client.log_artifact(self.run_id, str(attention), "figures")
        generator, meta = ckpt_io.load_generator(ckpt, use_ema=True, device="cpu")
        model_id = log_generator(self.client, self.run_id, generator, meta)
        record = read_run_record(self.params) or {}
        write_run_record(self.params, record | {"model_id": model_id, "step": int(summary["step"])})


def artifact_error(uri: str, e: BaseException, client=None, run_id: str | None = None) -> SaganError:
    """One line naming where the upload went (bucket and endpoint for S3) and why it failed."""
    if isinstance(e, SaganError):
        return e
    reason = " ".join(str(e).split())[:300]
    where = ""
    try:
        location = client.get_run(run_id).info.artifact_uri if client and run_id else ""
    except Exception:  # noqa: BLE001
        location = ""
    if location.startswith("s3://"):
        bucket = urlsplit(location).netloc
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL", "the AWS default endpoint")
        where = f" to S3 bucket {bucket!r} at {endpoint}"
    elif location:
        where = f" to {redact(location)}"
    if "API request to" in reason and "Max retries" in reason:
        return unreachable(uri, e)
    return TrackingError(
        f"MLflow logging failed{where} ({type(e).__name__}: {reason}); check the bucket and the "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/MLFLOW_S3_ENDPOINT_URL environment; the local checkpoint "
        "and metrics are intact"
    )


# ---- the generator as an MLflow model ------------------------------------------------------------
def _packed_module_class():
    import torch

    class LatentToImage(torch.nn.Module):
        """G as one-input module: x = [z (z_dim columns) | class id (1 column)] -> images in [-1, 1].

        MLflow's PyTorch pyfunc passes exactly one float32 array to the model, so z and the class
        ids travel in one N x (z_dim+1) float32 matrix (class ids are small integers, exact in
        float32); the last column is ignored by an unconditional generator.
        """

        def __init__(self, g):
            super().__init__()
            self.g = g
            self.z_dim = g.spec.z_dim
            self.conditional = g.spec.num_classes > 0

        def forward(self, x):
            z = x[:, : self.z_dim]
            y = x[:, self.z_dim].round().long() if self.conditional else None
            return self.g(z, y)

    return LatentToImage


def pack_inputs(z, y=None):
    """numpy float32 [z | y] as the logged model expects (see LatentToImage)."""
    import numpy as np

    z = np.asarray(z, dtype=np.float32)
    y = np.zeros(len(z), dtype=np.float32) if y is None else np.asarray(y).astype(np.float32)
    return np.concatenate([z, y[:, None]], axis=1)


def log_generator(client, run_id: str, generator, meta: dict[str, Any]) -> str:
    """Log the (EMA) generator as an MLflow model; returns the LoggedModel id.

    Serialization: `pt2` (torch.export), MLflow 3.17's default, chosen explicitly. Verified for this
    model: in eval mode the spectral-norm parametrizations use their stored u/v (no power
    iteration) and the attention block is plain tensor ops, so the export traces cleanly with a
    dynamic batch dimension and reproduces the eager outputs exactly (tests/test_mlflow.py checks
    pyfunc output == local EMA generator output). pt2 also needs neither pickle (MLflow refuses
    pickle deserialization unless allowed) nor the sagan package at load time.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    spec = generator.spec
    module = _packed_module_class()(generator.cpu().float().eval()).eval()
    rng = np.random.default_rng(0)
    n = 2  # > 1 so the exported batch dimension stays dynamic
    y = rng.integers(0, max(spec.num_classes, 1), n)
    example = pack_inputs(rng.standard_normal((n, spec.z_dim)), y)
    with torch.no_grad():
        out = module(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, out)
    metadata = {
        "z_dim": spec.z_dim,
        "num_classes": spec.num_classes,
        "class_names": list(meta.get("class_names", [])),
        "resolution": spec.resolution,
        "channels": spec.channels,
        "step": int(meta.get("step", 0)),
        "input": f"float32 N x {spec.z_dim + 1}: z in columns 0..{spec.z_dim - 1}, class id in the last",
        "output": "float32 N x C x H x W images in [-1, 1]",
    }
    # The LoggedModel is created in the run's experiment explicitly: log_model alone would put it
    # in the fluent "current" experiment (Default, ./mlruns) since no fluent run is active here.
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params=dict(run.data.params),
        tags={"sagan.serialization": "pt2"},
    )
    info = mlflow.pytorch.log_model(
        module,
        name=MODEL_NAME,
        run_id=run_id,
        model_id=logged.model_id,
        # MLflow would reload and run the model here; tests/test_mlflow.py checks pyfunc == eager G
        validate_serving_input=False,
        serialization_format="pt2",
        signature=signature,
        input_example=example,
        metadata=metadata,
        # explicit requirements: MLflow's inference would load the model once more in a subprocess
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        step=int(meta.get("step", 0)),
    )
    client.set_tag(run_id, "sagan.model_id", info.model_id)
    return info.model_id


# ---- evaluation ----------------------------------------------------------------------------------
METRIC_KEYS = ("fid", "is_mean", "is_std", "kid_mean", "kid_std")


def log_evaluation(params: Params, eval_metrics: dict[str, Any]) -> str | None:
    """Add FID/IS/KID and the protocol fields to the training run (skipped when tracking is off)."""
    if not enabled(params):
        return None
    from mlflow.entities import Metric, RunTag

    record = read_run_record(params)
    if record is None:
        log.warning("no MLflow run recorded at %s: evaluation not tracked", run_file(params))
        return None
    client, uri = connect(params)
    run_id = record["run_id"]
    step = int(eval_metrics.get("generator_step", eval_metrics.get("step", 0)) or 0)
    now = int(time.time() * 1000)
    metrics = [
        Metric(k, float(v), now, step)
        for k, v in eval_metrics.items()
        if k in METRIC_KEYS and isinstance(v, (int, float))
    ]
    # Protocol fields are tags, not params: params are immutable and evaluation may be rerun.
    tags = [
        RunTag(f"sagan.eval.{k}", json.dumps(v) if not isinstance(v, str) else v)
        for k, v in eval_metrics.items()
        if k not in METRIC_KEYS
    ]
    tags.append(RunTag("sagan.eval.protocol_id", protocol_id(eval_metrics)))
    call(uri, client.log_batch, run_id, metrics=metrics, tags=tags)
    eval_file = Path(params.eval.metrics_file)
    if eval_file.exists():
        try:
            client.log_artifact(run_id, str(eval_file), "metrics")
        except Exception as e:  # noqa: BLE001
            raise artifact_error(uri, e, client, run_id) from None
    return run_id
