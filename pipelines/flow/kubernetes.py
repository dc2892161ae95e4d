"""Training on several Kubernetes nodes: the manifests (a headless Service for the rendezvous and an
Indexed Job, one pod per node), their submission and the wait for the Job's end, with `kubectl`.

Each pod clones the project at a git revision, `dvc pull`s the prepare stage's outs (the prepared
data, from the DVC remote) and runs the same `sagan train` with train.nnodes = the Job's
completions, meeting pod 0 at `<name>-0.<name>:<port>` (the Service gives the pods DNS names; it
publishes them before they are ready, since the rendezvous happens before any is). Credentials
(S3/DVC remote, MLflow) come from a Secret named in the pods' envFrom, never from these manifests.

`render` is pure (tests check its output and deploy/k8s/train-multinode.yaml is its output);
`apply` and `wait` call kubectl and were never run against a cluster where this was written
(docs/scale-out.md). `job_outcome` reads a Job's status as the Kubernetes API documents it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from sagan_core.errors import ConfigError, SaganError

PORT = 29400  # torchrun's usual c10d port
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")

# Runs in each pod: "$@" are `sagan train`'s own arguments (a list, never parsed by the shell).
SCRIPT = (
    "set -eu; "
    'git clone --quiet --depth 1 --branch "$SAGAN_REVISION" "$SAGAN_REPOSITORY" . ; '
    "dvc pull prepare; "
    'exec sagan train "$@"'
)


def train_args(nnodes: int, nproc: int, name: str, port: int, overrides: list[str], resume_from: str | None):
    """`sagan train`'s arguments, the same in every pod."""
    sets = [
        f"train.nnodes={nnodes}",
        f"train.nproc_per_node={nproc}",
        f"train.rdzv_endpoint={name}-0.{name}:{port}",
        f"train.rdzv_id={name}",
        "train.launcher=local",  # each pod trains here, as one node
        *overrides,
    ]
    args = [a for s in sets for a in ("--set", s)]
    return [*args, *(["--resume-from", resume_from] if resume_from else []), "--quiet"]


def _container(image: str, repository: str, revision: str, secret: str, port: int, gpus: int, args):
    """The pod's one container: clone, `dvc pull`, `sagan train ARGS`, with `gpus` GPUs."""
    return {
        "name": "sagan",
        "image": image,
        "command": ["bash", "-c", SCRIPT, "sagan-train"],
        "args": args,
        "workingDir": "/work/project",
        "env": [
            {"name": "SAGAN_REPOSITORY", "value": repository},
            {"name": "SAGAN_REVISION", "value": revision},
        ],
        "envFrom": [{"secretRef": {"name": secret, "optional": True}}],
        "ports": [{"name": "rdzv", "containerPort": port}],
        "resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}},
        "volumeMounts": [
            {"name": "project", "mountPath": "/work/project"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }


def render(
    *,
    image: str,
    repository: str,
    nnodes: int,
    nproc_per_node: int = 1,
    revision: str = "main",
    name: str = "sagan-train",
    secret: str = "sagan-env",
    port: int = PORT,
    overrides: list[str] | None = None,
    resume_from: str | None = None,
) -> list[dict[str, Any]]:
    """The Service and the Indexed Job (one pod per node, nproc_per_node GPUs each)."""
    if not _DNS_LABEL.match(name):
        raise ConfigError(f"name: expected a DNS label (a-z, 0-9, -; at most 52 characters), got {name!r}")
    if not image or not repository:
        raise ConfigError("image and repository are required (the pods pull the project from git)")
    if nnodes < 1 or nproc_per_node < 1:
        raise ConfigError(f"nnodes and nproc_per_node: expected >= 1, got {nnodes}, {nproc_per_node}")
    labels = {"app.kubernetes.io/name": "sagan", "sagan/job": name}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"sagan/job": name},
            "ports": [{"name": "rdzv", "port": port, "targetPort": port}],
        },
    }
    args = train_args(nnodes, nproc_per_node, name, port, list(overrides or []), resume_from)
    container = _container(image, repository, revision, secret, port, nproc_per_node, args)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "completionMode": "Indexed",
            "completions": nnodes,
            "parallelism": nnodes,
            "backoffLimit": 0,  # a lost node ends the run; a new Job resumes (docs/scale-out.md)
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "subdomain": name,  # pod i is <name>-i.<name>: pod 0 hosts the rendezvous
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {"name": "project", "emptyDir": {}},
                        {"name": "shm", "emptyDir": {"medium": "Memory"}},  # NCCL's shared memory
                    ],
                },
            },
        },
    }
    return [service, job]


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(manifests, sort_keys=False)


def job_outcome(job: dict[str, Any]) -> str | None:
    """None while the Job runs; "succeeded"; or "failed: <reason>" (its conditions, as documented
    for batch/v1 Job status: type Complete/Failed with status "True")."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if cond.get("type") in ("Failed", "FailureTarget"):
            why = cond.get("message") or cond.get("reason") or "no reason given"
            return f"failed: {why}"
    return None


def _kubectl(args: list[str], stdin: str | None = None, kubectl: str = "kubectl") -> str:
    try:
        r = subprocess.run([kubectl, *args], input=stdin, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SaganError(f"{kubectl} not found: install kubectl and point it at the cluster") from None
    if r.returncode != 0:
        raise SaganError(f"kubectl {args[0]}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}")
    return r.stdout


def apply(manifests: list[dict[str, Any]], namespace: str, kubectl: str = "kubectl") -> None:
    _kubectl(["apply", "--namespace", namespace, "-f", "-"], stdin=to_yaml(manifests), kubectl=kubectl)


def _progress(job: dict[str, Any], elapsed: float) -> str:
    st, n = job.get("status") or {}, (job.get("spec") or {}).get("completions", "?")
    counts = ", ".join(f"{st.get(k) or 0} {k}" for k in ("active", "ready", "succeeded", "failed"))
    return f"job {job.get('metadata', {}).get('name')}: {counts} of {n} pods ({elapsed:.0f} s)"


def failed_pods(name: str, namespace: str, kubectl: str = "kubectl") -> str:
    """'pod P (index I): reason' for each failed pod of the Job (index: its completion index)."""
    try:
        pods = json.loads(
            _kubectl(
                ["get", "pods", "--namespace", namespace, "-l", f"sagan/job={name}", "-o", "json"],
                kubectl=kubectl,
            )
        ).get("items", [])
    except (SaganError, ValueError):
        return "its pods could not be listed"
    out = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Failed":
            continue
        meta = pod.get("metadata") or {}
        index = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "?")
        states = [
            c.get("state", {}).get("terminated") or {} for c in pod["status"].get("containerStatuses") or []
        ]
        why = next(
            (f"{t.get('reason', 'exit')} (exit code {t.get('exitCode')})" for t in states if t), "failed"
        )
        out.append(f"pod {meta.get('name')} (index {index}): {why}")
    return "; ".join(out) or "no failed pod listed"


def _last_lines(name: str, namespace: str, kubectl: str) -> str:
    try:  # best effort: a failed listing must not hide why the Job failed
        args = ["logs", "--namespace", namespace, "-l", f"sagan/job={name}", "--tail=3", "--prefix"]
        return " | ".join(_kubectl(args, kubectl=kubectl).strip().splitlines()) or "none"
    except SaganError:
        return "not available"


def wait(
    name: str,
    namespace: str,
    timeout_s: float | None,
    poll_s: float = 10,
    kubectl: str = "kubectl",
    log: Callable[[str], None] = print,
) -> None:
    """Until the Job ends, with a progress line whenever its pod counts change. A failed Job is a
    SaganError naming the failed pods (and their indexes); past timeout_s the Job and its Service
    are deleted (its pods would hold their GPUs) and that is a SaganError too."""
    started = time.monotonic()
    last = None
    while True:
        job = json.loads(
            _kubectl(["get", "job", name, "--namespace", namespace, "-o", "json"], kubectl=kubectl)
        )
        elapsed = time.monotonic() - started
        line = _progress(job, elapsed)
        if line.split(" (")[0] != last:
            log(line)
            last = line.split(" (")[0]
        outcome = job_outcome(job)
        if outcome == "succeeded":
            log(f"job {name} succeeded")
            return
        if outcome:
            raise SaganError(
                f"kubernetes job {name} {outcome}: {failed_pods(name, namespace, kubectl)}; "
                f"last lines: {_last_lines(name, namespace, kubectl)}"
            )
        if timeout_s is not None and elapsed > timeout_s:
            lines = _last_lines(name, namespace, kubectl)
            _kubectl(
                ["delete", "job,service", name, "--namespace", namespace, "--ignore-not-found"],
                kubectl=kubectl,
            )
            raise SaganError(
                f"kubernetes job {name} not done after {timeout_s:.0f} s: deleted (with its pods); "
                f"last lines: {lines}"
            )
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.flow.kubernetes render|run --image ... --repository ... --nnodes N`."""
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.flow.kubernetes", description=__doc__.split("\n")[0]
    )
    ap.add_argument("action", choices=["render", "run"])
    ap.add_argument("--image", required=True)
    ap.add_argument("--repository", required=True)
    ap.add_argument("--revision", default="main")
    ap.add_argument("--nnodes", type=int, required=True)
    ap.add_argument("--nproc-per-node", type=int, default=1)
    ap.add_argument("--name", default="sagan-train")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--secret", default="sagan-env")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="like sagan --set")
    ap.add_argument("--resume-from", default=None)
    ap.add_argument("--timeout-s", type=float, default=None)
    a = ap.parse_args(argv)
    try:
        manifests = render(
            image=a.image,
            repository=a.repository,
            revision=a.revision,
            nnodes=a.nnodes,
            nproc_per_node=a.nproc_per_node,
            name=a.name,
            secret=a.secret,
            overrides=a.overrides,
            resume_from=a.resume_from,
        )
        if a.action == "render":
            sys.stdout.write(to_yaml(manifests))
            return 0
        apply(manifests, a.namespace)
        wait(a.name, a.namespace, a.timeout_s)
        return 0
    except SaganError as e:
        print(f"sagan: {'error: ' if isinstance(e, ConfigError) else ''}{e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
