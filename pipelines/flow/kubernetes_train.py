"""The flow's train stage with train.launcher kubernetes: a headless Service and an Indexed Job (one
pod per node) applied and awaited with `kubectl`, then the final checkpoint fetched from MLflow so
evaluate and register continue here. `kubectl` never ran against a real cluster (docs/scale-out.md).

Each pod clones the project at a git revision, `dvc pull`s prepare's outs and runs `sagan train` with
every params key of the flow as a `--set` (the params.yaml at that revision does not matter), meeting
pod 0 at `<name>-0.<name>:PORT`. Credentials come from a Secret in envFrom, never the manifests. The
Job's name (random suffix) is the run's train.rdzv_id, by which the flow finds the pods' MLflow run:
the pods and the flow must track to the same server.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from pipelines.results import Trained
from sagan_core.atomic import copy_atomic
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")
# The one definition of the Service and Job (deploy/k8s/train-multinode.yaml links to it): render fills it in.
TEMPLATE = files("pipelines.flow").joinpath("train-multinode.yaml")
PORT = next(yaml.safe_load_all(TEMPLATE.read_text()))["spec"]["ports"][0]["port"]
# Keys the manifests set themselves (or only the flow reads): never passed to the pods.
_NOT_PASSED = {f"train.{k}" for k in ("launcher", "nnodes", "nproc_per_node", "rdzv_endpoint", "rdzv_id")}


def render(
    *,
    image: str,
    repository: str,
    nnodes: int,
    nproc_per_node: int = 1,
    revision: str = "main",
    name: str = "sagan-train",
    secret: str = "sagan-env",
    overrides: list[str] | None = None,
    resume_from: str | None = None,
) -> list[dict[str, Any]]:
    """The Service and the Indexed Job: the template filled with these values."""
    if not _DNS_LABEL.match(name):
        raise ConfigError(f"name: expected a DNS label (a-z, 0-9, -; at most 52 characters), got {name!r}")
    if not image or not repository:
        raise ConfigError("image and repository are required (the pods pull the project from git)")
    if nnodes < 1 or nproc_per_node < 1:
        raise ConfigError(f"nnodes and nproc_per_node: expected >= 1, got {nnodes}, {nproc_per_node}")
    service, job = yaml.safe_load_all(TEMPLATE.read_text())
    pod = job["spec"]["template"]["spec"]
    for obj in (service, job, job["spec"]["template"]):
        obj["metadata"]["labels"]["sagan/job"] = name
    service["metadata"]["name"] = job["metadata"]["name"] = pod["subdomain"] = name
    service["spec"]["selector"]["sagan/job"] = name
    job["spec"]["completions"] = job["spec"]["parallelism"] = nnodes
    sets = [f"train.nnodes={nnodes}", f"train.nproc_per_node={nproc_per_node}"]
    sets += [f"train.rdzv_endpoint={name}-0.{name}:{PORT}", f"train.rdzv_id={name}"]
    sets += ["train.launcher=local", *(overrides or [])]  # each pod trains here, as one node
    args = [a for s in sets for a in ("--set", s)] + (["--resume-from", resume_from] if resume_from else [])
    (container,) = pod["containers"]
    container["image"], container["args"] = image, [*args, "--quiet"]
    container["env"] = [
        {"name": "SAGAN_REPOSITORY", "value": repository},
        {"name": "SAGAN_REVISION", "value": revision},
    ]
    container["envFrom"][0]["secretRef"]["name"] = secret
    gpus = {"nvidia.com/gpu": nproc_per_node}
    container["resources"] = {"limits": gpus, "requests": dict(gpus)}
    return [service, job]


def job_outcome(job: dict[str, Any]) -> str | None:
    """None while the Job runs, "succeeded" or "failed: <reason>" (batch/v1 Job status conditions)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if cond.get("type") in ("Failed", "FailureTarget"):
            return f"failed: {cond.get('message') or cond.get('reason') or 'no reason given'}"
    return None


def _kubectl(*args: str, stdin: str | None = None) -> str:
    try:
        r = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SaganError("kubectl not found: install kubectl and point it at the cluster") from None
    if r.returncode != 0:
        raise SaganError(f"kubectl {args[0]}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}")
    return r.stdout


def _failed_pods(name: str, namespace: str) -> str:
    """'pod P (index I): reason' for each failed pod of the Job (I: its completion index)."""
    try:
        out = _kubectl("get", "pods", "--namespace", namespace, "-l", f"sagan/job={name}", "-o", "json")
        pods = json.loads(out).get("items", [])
    except (SaganError, ValueError):
        return "its pods could not be listed"
    failed = []
    for pod in pods:
        status, meta = pod.get("status") or {}, pod.get("metadata") or {}
        if status.get("phase") != "Failed":
            continue
        index = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "?")
        ended = [c.get("state", {}).get("terminated") for c in status.get("containerStatuses") or []]
        t = next(filter(None, ended), None)  # the first container that ended
        why = f"{t.get('reason', 'exit')} (exit code {t.get('exitCode')})" if t else "failed"
        failed.append(f"pod {meta.get('name')} (index {index}): {why}")
    return "; ".join(failed) or "no failed pod listed"


def _last_lines(name: str, namespace: str) -> str:
    try:  # best effort: a failed listing must not hide why the Job failed
        out = _kubectl("logs", "--namespace", namespace, "-l", f"sagan/job={name}", "--tail=3", "--prefix")
        return " | ".join(out.strip().splitlines()) or "none"
    except SaganError:
        return "not available"


def wait(
    name: str, namespace: str, timeout_s: float | None, poll_s: float = 10, log: Callable = print
) -> None:
    """Until the Job ends, a line whenever its pod counts change. A failed Job is a SaganError naming
    the failed pods; past timeout_s the Job and Service are deleted (their pods would hold GPUs)."""
    started, last = time.monotonic(), None
    while True:
        job = json.loads(_kubectl("get", "job", name, "--namespace", namespace, "-o", "json"))
        elapsed = time.monotonic() - started
        st, n = job.get("status") or {}, (job.get("spec") or {}).get("completions", "?")
        counts = ", ".join(f"{st.get(k) or 0} {k}" for k in ("active", "ready", "succeeded", "failed"))
        if (line := f"job {name}: {counts} of {n} pods") != last:
            log(f"{line} ({elapsed:.0f} s)")
            last = line
        outcome = job_outcome(job)
        if outcome == "succeeded":
            log(f"job {name} succeeded")
            return
        if outcome:
            raise SaganError(
                f"kubernetes job {name} {outcome}: {_failed_pods(name, namespace)}; "
                f"last lines: {_last_lines(name, namespace)}"
            )
        if timeout_s is not None and elapsed > timeout_s:
            lines = _last_lines(name, namespace)  # before the delete takes the pods' logs with them
            _kubectl("delete", "job,service", name, "--namespace", namespace, "--ignore-not-found")
            raise SaganError(
                f"kubernetes job {name} not done after {timeout_s:.0f} s: deleted (with its pods); "
                f"last lines: {lines}"
            )
        time.sleep(poll_s)


def submit(params: Params, resume_from: str | None, log: Callable[[str], None]) -> str:
    """Render and `kubectl apply` the Service and Job; their name (also the run's rdzv_id)."""
    t = params.train
    rev = t.k8s_revision
    if not rev:  # this checkout's HEAD commit: the pods clone it, so it must be pushed
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        if r.returncode != 0:
            raise ConfigError("train.k8s_revision: null and this project is no git checkout; set a revision")
        rev = r.stdout.strip()
    name = f"{t.k8s_name}-{secrets.token_hex(3)}"
    overrides = [  # values as JSON, which YAML reads
        f"{k}={json.dumps(v)}"
        for k, v in params.flat().items()
        if k not in _NOT_PASSED and not k.startswith(("pipeline.", "train.k8s_"))
    ]
    manifests = render(
        image=t.k8s_image or "",
        repository=t.k8s_repository or "",
        revision=rev,
        nnodes=t.nnodes,
        nproc_per_node=t.nproc_per_node,
        name=name,
        secret=t.k8s_secret,
        overrides=overrides,
        resume_from=resume_from,
    )
    docs = yaml.safe_dump_all(manifests, sort_keys=False)
    _kubectl("apply", "--namespace", t.k8s_namespace, "-f", "-", stdin=docs)
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
        f"kubernetes job {name} succeeded but no run in experiment {params.tracking.experiment} at "
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
    """The whole train stage on Kubernetes; a resuming run passes its run's checkpoint to the pods."""
    from pipelines import stages
    from pipelines.fetch_checkpoint import fetch
    from pipelines.tracking.run_record import read_run_record
    from sagan_core.train import resume

    if not params.tracking.enabled:
        raise ConfigError(
            "tracking.enabled: train.launcher kubernetes fetches the checkpoint from MLflow, got false"
        )
    record = read_run_record(params) if do_resume else None
    resume_from = f"runs:/{record.run_id}" if record else None
    start = resume.start_step(params.train.checkpoint) if record else 0
    name = submit(params, resume_from, log)
    t = params.train
    wait(name, t.k8s_namespace, t.k8s_timeout_s, poll_s=t.k8s_poll_s, log=log)
    run_id = find_run(params, name)
    fetch(params, f"runs:/{run_id}")
    _fetch_extras(params, run_id)
    log(f"fetched the final checkpoint of MLflow run {run_id} to {params.train.checkpoint}")
    return stages.trained(params, start_step=start)
