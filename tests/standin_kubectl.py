#!/usr/bin/env python3
"""A STAND-IN for `kubectl` (there is no cluster and no kubectl where these tests run): a test double
for the absent external binary, put on PATH as `kubectl` by tests/test_kubernetes_flow.py.

It records every call (argv, one JSON line each, in $STANDIN_KUBECTL_DIR/calls.jsonl) and what
`apply -f -` read (applied-N.yaml), and answers from $STANDIN_KUBECTL_DIR/script.json:
  "statuses": the Job's `status` for each `get job NAME -o json` in turn (the last one repeats:
              a status without a Complete/Failed condition repeated = a Job that never finishes);
  "pods":     the items of `get pods -o json`;
  "run_pod":  a folder: on `apply`, start the Job's `sagan train` arguments there, as pod 0 would
              (after copying $STANDIN_PROJECT/data/prepared, as its `dvc pull prepare` would); the
              Job is running until that process ends, then "statuses" follow.
It is not Kubernetes: no scheduling, DNS, rendezvous between pods or GPUs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def main(argv: list[str]) -> int:
    state = Path(os.environ["STANDIN_KUBECTL_DIR"])
    script = json.loads((state / "script.json").read_text())
    with open(state / "calls.jsonl", "a") as f:
        f.write(json.dumps(argv) + "\n")
    if argv[0] == "apply":
        text = sys.stdin.read()
        n = len(list(state.glob("applied-*.yaml")))
        (state / f"applied-{n}.yaml").write_text(text)
        if script.get("run_pod"):
            return run_pod(Path(script["run_pod"]), list(yaml.safe_load_all(text)))
        return 0
    if argv[:2] == ["get", "job"]:
        if script.get("run_pod") and not (Path(script["run_pod"]) / "exit_code").exists():
            print(
                json.dumps(
                    {"metadata": {"name": argv[2]}, "spec": {"completions": 2}, "status": {"active": 1}}
                )
            )
            return 0  # the pod still trains
        statuses = script["statuses"]
        seen = (state / "polls").read_text() if (state / "polls").exists() else ""
        (state / "polls").write_text(seen + ".")
        status = statuses[min(len(seen), len(statuses) - 1)]
        print(json.dumps({"metadata": {"name": argv[2]}, "spec": {"completions": 2}, "status": status}))
        return 0
    if argv[:2] == ["get", "pods"]:
        print(json.dumps({"items": script.get("pods", [])}))
        return 0
    if argv[0] == "logs":
        print("[pod/x-1/sagan] sagan: error: lost a peer")
        return 0
    if argv[0] == "delete":
        return 0
    print(f"stand-in kubectl: unexpected {argv}", file=sys.stderr)
    return 1


def run_pod(pod: Path, manifests: list[dict]) -> int:
    """Start the Job's `sagan train ARGS` in `pod` in the background (apply returns at once); its
    exit code lands in pod/exit_code, its output in pod/train.log."""
    job = next(m for m in manifests if m["kind"] == "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    shutil.copytree(Path(os.environ["STANDIN_PROJECT"]) / "data/prepared", pod / "data/prepared")
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "pipelines.cli", "train", *args])
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.Popen(  # not holding kubectl's own output open: `apply` returns now
        ["sh", "-c", f"{cmd} > train.log 2>&1; echo $? > exit_code"], cwd=pod, start_new_session=True, **quiet
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
