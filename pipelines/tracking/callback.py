"""MlflowCallback: the trainer's hooks, recording one training run in MLflow.

Logging must not slow training: metrics go in one asynchronous `log_batch` per `train.log_every`
steps, images every `train.sample_every`, checkpoints in the background (uploads.py). The run's
lineage (git commit, the prepared data's content_hash and DVC md5) traces a version to its images.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from pipelines.tracking import run_record as records
from pipelines.tracking.store import artifact_error, call, connect, local_write_failure, redact, scrub
from pipelines.tracking.uploads import CHECKPOINT_DIR, Uploader, snapshot
from sagan_core.config import Params
from sagan_core.train.progress import Callback

log = logging.getLogger("sagan.mlflow")


def git_commit(params: Params) -> tuple[str, bool]:
    """(commit, dirty) of the working tree, ('unknown', False) outside git. Dirty: a tracked file
    differs from HEAD, other than the pipeline's own records."""
    try:
        commit = _git(["rev-parse", "HEAD"]).strip()
        top = Path(_git(["rev-parse", "--show-toplevel"]).strip())
        # staged or not, from the repository's root, unquoted (-z); a rename as its two paths
        changed = [top / p for p in _git(["diff", "HEAD", "--name-only", "--no-renames", "-z"]).split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    # what the pipeline itself rewrites as it runs says what a run made, not what it ran from;
    # every .gitignore too (DVC adds its outputs there)
    curves = Path(params.train.metrics_file)
    own = [curves, curves.with_name(f"{curves.stem}_eval.csv"), Path(params.eval.metrics_file), params.eval.record_file]
    own = {f.resolve() for f in (*own, Path("dvc.lock"), Path("sagan-version.yaml"))}
    return commit, any(p.name != ".gitignore" and p.resolve() not in own for p in changed)


def _git(args: list[str]) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, check=True).stdout


def dvc_md5(prepared: Path) -> str | None:
    """The md5 `dvc.lock` (or a `.dvc` file) records for the prepared folder; None without DVC."""
    import yaml

    target = os.path.normpath(str(prepared))
    for path in (Path("dvc.lock"), prepared.with_name(prepared.name + ".dvc")):
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        # dvc.lock lists outs per stage; a `.dvc` file lists them at the top level
        stages = [st for st in (doc.get("stages") or {}).values() if isinstance(st, dict)]
        for o in [o for st in stages for o in st.get("outs") or []] + (doc.get("outs") or []):
            ours = isinstance(o, dict) and os.path.normpath(str(o.get("path", ""))) in (target, prepared.name)
            if ours and o.get("md5"):
                return str(o["md5"])
    return None


def log_lineage(client, run_id: str, params: Params, info: dict[str, Any]) -> None:
    """Tag the run with its lineage and what ran (`info`: the trainer's on_start: resolved spec,
    device, world_size, bf16...; the model card states them) and log the prepared data as its input."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag

    commit, dirty = git_commit(params)
    prepared = Path(params.data.prepared_dir)
    try:
        content_hash = str(json.loads(params.data.manifest_file.read_text()).get("content_hash", "unknown"))
    except (OSError, ValueError):
        content_hash = "unknown"
    dvc = {"dvc_md5": md5} if (md5 := dvc_md5(prepared)) else {}
    tags = {
        "mlflow.source.git.commit": commit,
        "sagan.git_commit": commit,
        "sagan.git_dirty": str(dirty).lower(),
        "sagan.data.content_hash": content_hash,
        "sagan.spec": json.dumps(info["spec"], sort_keys=True),
        "sagan.device": str(info["device"]),
        "sagan.world_size": str(info["world_size"]),
    }
    if "bf16" in info:  # what train.precision / channels_last: auto resolved to on this device
        tags["sagan.precision"] = "bf16" if info["bf16"] else "fp32"
        tags["sagan.channels_last"] = str(bool(info.get("channels_last"))).lower()
        tags["sagan.compile"] = str(bool(info.get("compile"))).lower()
    tags |= {f"sagan.data.{k}": v for k, v in dvc.items()}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    # described as MLflow's own local source describes itself; digests are capped at 36 characters
    source = json.dumps({"uri": str(prepared.resolve())})
    dataset = Dataset(name="prepared", digest=content_hash[:36], source_type="local", source=source)
    inputs = {"mlflow.data.context": "training", "content_hash": content_hash} | dvc
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag(k, v) for k, v in inputs.items()])])


class MlflowCallback(Callback):
    """Created before the trainer, so an unreachable server fails before any training; then a logging
    failure never stops training: it is reported once and re-raised at the end."""

    def __init__(self, params: Params, resume: bool = False):
        self.params, self.resume = params, resume
        self.client, self.uri = connect(params)
        self.pending: list[Any] = []  # async log_batch operations, awaited at the end
        self.error: BaseException | None = None
        self.monitor, self.ended = None, False
        # the learning rates last logged (run_record.to_log): the run's own params until one changes
        self.lr_seen = {k: float(getattr(params.train, k)) for k in records.LR_KEYS}
        self.run_id, self.experiment_id = self._open_run()
        records.opened(params, self.run_id, self.experiment_id, self.uri)
        self.uploads = Uploader()
        log.info("MLflow run %s at %s", self.run_id, redact(self.uri))

    def _open_run(self) -> tuple[str, str]:
        """(run_id, experiment_id): the recorded run reopened on --resume, else a new run."""
        from pipelines.tracking.store import experiment_id

        record = records.read_run_record(self.params) if self.resume else None
        if record and record.tracking_uri != redact(self.uri):
            log.warning("--resume: the run was tracked at %s, now tracking at %s: starting a new MLflow run",
                        record.tracking_uri, redact(self.uri))
            record = None
        if record:
            records.recover(self.client, self.uri, self.params, record.run_id, end=False)  # curves an outage lost
            call(self.uri, self.client.update_run, record.run_id, status="RUNNING")
            return record.run_id, record.experiment_id
        exp = experiment_id(self.client, self.params, self.uri)
        exp_name = os.environ.get("DVC_EXP_NAME")  # set by `dvc exp run`: the run is findable by it
        tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "sagan train"}
        tags |= {"sagan.dvc_exp": exp_name} if exp_name else {}
        run = call(self.uri, self.client.create_run, exp, tags=tags, run_name=exp_name)
        return run.info.run_id, exp

    def _guard(self, what: str, fn, *args, **kwargs):
        """Run a logging call; the first failure is kept and reported, later calls are skipped."""
        if self.error is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never kill a training run midway
            self.error = local_write_failure(self.uri, e) or e  # a full sqlite store: one line, not its SQL
            log.warning("MLflow logging stopped (%s failed: %s); training continues", what, scrub(str(self.error)))
            # Batches queued before the failure still fail in MLflow's async logging thread, one
            # ERROR line each, and could land after the command's one error line: said once above.
            logging.getLogger("mlflow.utils.async_logging").setLevel(logging.CRITICAL)
            return None

    def _log_params(self) -> None:
        from mlflow.entities import Param, RunTag

        flat = {k: ("null" if v is None else str(v)) for k, v in self.params.flat().items()}
        logged = self.client.get_run(self.run_id).data.params
        # a resumed run's params hold the rates it started with: a changed one is logged (on_metrics)
        self.lr_seen = {k: float(logged.get(f"train.{k}", flat[f"train.{k}"])) for k in records.LR_KEYS}
        new = [Param(k, v[:6000]) for k, v in flat.items() if k not in logged]
        # MLflow params are immutable: a --resume with other values (e.g. more steps) is kept as tags.
        changed = [RunTag(f"sagan.resume.{k}", v) for k, v in flat.items() if k in logged and logged[k] != v]
        for i in range(0, max(len(new), 1), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=new[i : i + 100], tags=changed if i == 0 else [])

    def on_start(self, info: dict[str, Any]) -> None:
        self._guard("logging params", self._log_params)
        self._guard("logging lineage", log_lineage, self.client, self.run_id, self.params, info)
        try:  # system metrics (CPU, memory, disk, network, GPU) sampled in a background thread
            import mlflow

            # MLflow's public switch: a fluent run with log_system_metrics (ended in _terminate)
            mlflow.set_system_metrics_sampling_interval(10)
            self.monitor = mlflow.start_run(run_id=self.run_id, log_system_metrics=True)
        except Exception as e:  # noqa: BLE001 - optional (needs psutil); never worth failing over
            log.warning("MLflow system metrics unavailable: %s", scrub(str(e)))

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        kept = records.to_log(self.lr_seen, metrics)  # rates only when they change (to_log says why)
        batch = [Metric(records.train_metric(k), float(v), now, step) for k, v in kept.items()]
        if (op := self._guard("logging metrics", self.client.log_batch, self.run_id, metrics=batch, synchronous=False)) is not None:
            self.pending.append(op)

    def on_image(self, step: int, key: str, path: Path) -> None:
        def upload():
            from PIL import Image

            with Image.open(path) as im:
                image = im.convert("RGB")
            side = 200 if key == "preview" else 768  # px: MLflow shows an image at its size; a card's preview: a few rows
            if (factor := -(-side // min(image.size))) > 1:  # enlarged by a whole factor: sharp pixels
                image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
            self.client.log_image(self.run_id, image, key=key, step=step)
            # the newest grid (each page: samples_p2 is latest_p2.png) and preview, also as plain files
            latest = path if key == "preview" else path.with_name(f"latest{key.removeprefix('samples')}.png")
            if (key.startswith("samples") or key == "preview") and latest.is_file():
                self.client.log_artifact(self.run_id, str(latest), "samples")

        self._guard(f"logging image {key}", upload)

    def on_checkpoint(self, step: int, path: Path) -> None:
        records.note(self.params, self.run_id, checkpoint_step=step)  # this run wrote it (run_record.trained_record)
        self._upload(f"the checkpoint of step {step}", path)

    def on_best(self, step: int, path: Path, scores: dict[str, float]) -> None:
        self._upload(f"the best checkpoint (step {step})", path)  # resumable: models:/NAME@ALIAS

    def _upload(self, what: str, path: Path) -> None:
        snap = snapshot(path)  # the trainer may replace the file at once
        self.uploads.submit(f"uploading {what}", lambda: self.client.log_artifact(self.run_id, str(snap), CHECKPOINT_DIR),
                            snap, key=path.name)

    def on_end(self, summary: dict[str, Any]) -> None:
        self.ended = True
        self.uploads.close()  # queued uploads finish first (failures were reported as they came)
        self._guard("flushing metrics", self._flush)
        self._guard("uploading the checkpoint", self._log_final, summary)  # skipped after a failure
        self._terminate("FINISHED" if self.error is None else "FAILED")
        if self.error is not None:
            raise artifact_error(self.uri, self.error, self.client, self.run_id) from None

    def close(self) -> None:
        """A run with nothing left to train (on_end never ran) is closed as finished."""
        if not self.ended:
            self.fail(status="FINISHED")

    def fail(self, status: str = "FAILED") -> None:
        self.uploads.close()  # the last checkpoint reaches the run: resumable from it
        with contextlib.suppress(Exception):  # the training error is the one to report
            self._flush()
        self._terminate(status)

    def _terminate(self, status: str) -> None:
        """End the fluent run sampling system metrics, then set the run's status (best effort)."""
        if self.monitor is not None:
            import mlflow

            with contextlib.suppress(Exception):
                mlflow.end_run()
            self.monitor = None
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:  # noqa: BLE001 - the error to report is another
            log.debug("could not end MLflow run %s: %s", status, scrub(str(e)))

    def _flush(self) -> None:
        for op in self.pending:
            op.wait()
        self.pending.clear()

    def _log_final(self, summary: dict[str, Any]) -> None:
        # how long this training session took (the model card's "training time")
        self.client.set_tag(self.run_id, "sagan.train_seconds", f"{float(summary['seconds']):.0f}")
        for path, folder in ((self.params.train.metrics_file, "metrics"), (summary["attention"], "figures")):
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path), folder)
        self.client.log_artifact(self.run_id, summary["checkpoint"], CHECKPOINT_DIR)
        records.note(self.params, self.run_id, step=int(summary["step"]))
