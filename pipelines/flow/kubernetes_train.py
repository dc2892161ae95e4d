"""The flow's train stage with train.launcher kubernetes: submit the multi-node Job, await it, fetch
its final checkpoint.

`train_on_cluster` renders the headless Service and the Indexed Job (pipelines/flow/kubernetes.py)
for train.nnodes pods of train.nproc_per_node GPUs, `kubectl apply`s them, polls the Job (a progress
line in the Prefect log whenever its pod counts change) until it succeeds, fails (one line naming
the failed pods and their completion indexes) or passes train.k8s_timeout_s (the Job is deleted).

The pods train the flow's own params: every params key (but pipeline.* and the launcher's) is
passed as a `--set`, so the params.yaml at the pods' git revision does not matter. The Job's name
gets a random suffix and is the run's train.rdzv_id, which rank 0 logs as an MLflow param: after
the Job, the flow finds that run and fetches its checkpoint like `sagan train --resume-from
runs:/ID` does (pipelines/resume_from.py), so evaluate and register continue on this machine. The
pods and the flow must therefore track to the same MLflow server. A flow that would resume passes
its run's checkpoint the same way (`--resume-from runs:/ID`).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipelines.flow import kubernetes as k8s
from pipelines.results import Trained
from sagan_core.atomic import copy_atomic
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError

# Keys the manifests set themselves (or that only the flow reads): never passed to the pods.
_NOT_PASSED = {
    "train.launcher",
    "train.nnodes",
    "train.nproc_per_node",
    "train.rdzv_endpoint",
    "train.rdzv_id",
}


def pod_overrides(params: Params) -> list[str]:
    """`key=value` for every params key the pods train with (values as JSON, which YAML reads)."""
    return [
        f"{k}={json.dumps(v)}"
        for k, v in params.flat().items()
        if k not in _NOT_PASSED and not k.startswith(("pipeline.", "train.k8s_"))
    ]


def revision(params: Params) -> str:
    """train.k8s_revision, else this checkout's HEAD commit (the pods clone it: it must be pushed)."""
    if params.train.k8s_revision:
        return params.train.k8s_revision
    r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if r.returncode != 0:
        raise ConfigError("train.k8s_revision: null and this project is no git checkout; set a revision")
    return r.stdout.strip()


def submit(params: Params, resume_from: str | None, log: Callable[[str], None]) -> str:
    """Render and `kubectl apply` the Service and Job; their name (also the run's rdzv_id)."""
    t = params.train
    name, rev = f"{t.k8s_name}-{secrets.token_hex(3)}", revision(params)
    manifests = k8s.render(
        image=t.k8s_image or "",
        repository=t.k8s_repository or "",
        revision=rev,
        nnodes=t.nnodes,
        nproc_per_node=t.nproc_per_node,
        name=name,
        secret=t.k8s_secret,
        overrides=pod_overrides(params),
        resume_from=resume_from,
    )
    k8s.apply(manifests, t.k8s_namespace)
    log(
        f"submitted job {name} to namespace {t.k8s_namespace}: {t.nnodes} pods x {t.nproc_per_node} GPUs, "
        f"revision {rev}" + (f", resuming from {resume_from}" if resume_from else "")
    )
    return name


def find_run(params: Params, name: str) -> str:
    """The MLflow run whose train.rdzv_id is `name` (a resumed run keeps it as a sagan.resume tag)."""
    from pipelines.tracking.store import call, connect, experiment_id, redact

    client, uri = connect(params)
    exp = experiment_id(client, params, uri)
    for where in (f"params.`train.rdzv_id` = '{name}'", f"tags.`sagan.resume.train.rdzv_id` = '{name}'"):
        runs = call(uri, client.search_runs, [exp], filter_string=where, max_results=1)
        if runs:
            return runs[0].info.run_id
    raise SaganError(
        f"kubernetes job {name} succeeded but no run in experiment {params.registry.experiment} at "
        f"{redact(uri)} has train.rdzv_id {name}: the pods track elsewhere (their MLFLOW_TRACKING_URI); "
        "the final checkpoint is that run's checkpoints/checkpoint.pt"
    )


def _fetch_extras(params: Params, run_id: str) -> None:
    """best.pt (when in-training evaluation wrote one) and the newest sample grid, if the run has them."""
    from pipelines.tracking.store import call, connect
    from pipelines.tracking.uploads import CHECKPOINT_DIR

    client, uri = connect(params)
    t = params.train
    t.latest_samples.parent.mkdir(parents=True, exist_ok=True)  # the train stage's DVC out
    wanted = {f"{CHECKPOINT_DIR}/best.pt": t.best_checkpoint, "samples/latest.png": t.latest_samples}
    for folder in (CHECKPOINT_DIR, "samples"):
        for artifact in call(uri, client.list_artifacts, run_id, folder):
            if artifact.path in wanted:
                with tempfile.TemporaryDirectory() as tmp:
                    local = call(uri, client.download_artifacts, run_id, artifact.path, tmp)
                    copy_atomic(Path(local), wanted[artifact.path])


def train_on_cluster(params: Params, do_resume: bool, log: Callable[[str], None]) -> Trained:
    """The whole train stage on Kubernetes; the Trained result of the fetched checkpoint."""
    from pipelines import stages
    from pipelines.resume_from import fetch
    from pipelines.tracking.run_record import read_run_record
    from sagan_core.train import resume

    if not params.registry.tracking:
        raise ConfigError(
            "registry.tracking: train.launcher kubernetes fetches the checkpoint from MLflow, got false"
        )
    record = read_run_record(params) if do_resume else None
    resume_from = f"runs:/{record.run_id}" if record else None
    start = resume.start_step(params.train.checkpoint) if record else 0
    name = submit(params, resume_from, log)
    t = params.train
    k8s.wait(name, t.k8s_namespace, t.k8s_timeout_s, poll_s=t.k8s_poll_s, log=log)
    run_id = find_run(params, name)
    fetch(params, f"runs:/{run_id}")
    _fetch_extras(params, run_id)
    log(f"fetched the final checkpoint of MLflow run {run_id} to {params.train.checkpoint}")
    return stages.trained(params, start_step=start)
