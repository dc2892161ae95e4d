"""The files that take sagan beyond one machine, checked as far as this machine allows: no Docker
daemon, no Kubernetes cluster, no Prefect Docker/Kubernetes worker and no network here, so nothing
is built, pulled, applied or deployed. What is checked: the Dockerfile's instructions line by line,
.dockerignore, prefect.yaml's keys, its flow loaded from the entrypoint with its parameters, its steps' signatures, the
Kubernetes pool template rendered by Prefect's own templating, the multi-node manifests' structure
and that deploy/k8s/ is what pipelines/flow/kubernetes_train.py renders, and the Job status reading."""

from __future__ import annotations

import inspect
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from pipelines.flow import kubernetes_train as k8s
from sagan_core.errors import ConfigError
from sagan_core.params_file import apply_override, validate

pytestmark = pytest.mark.unit

SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL)", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction: continuations joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, args = pending.strip().partition(" ")
            out.append((word.upper(), args.strip()))
            pending = ""
    assert not pending, "a continued instruction runs off the end"
    return out


def pinned(name: str) -> str:
    return next(
        line.split("==")[1]
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.startswith(f"{name}==")
    )


def test_dockerfile():
    steps = instructions(REPO / "Dockerfile")
    known = {"FROM", "RUN", "ENV", "WORKDIR", "COPY", "USER", "VOLUME", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    assert {word for word, _ in steps} <= known
    assert steps[0][0] == "FROM"
    # The CUDA runtime the base image carries matches the CUDA of the pinned torch wheels.
    base = steps[0][1]
    cuda = re.match(r"nvidia/cuda:(\d+\.\d+)\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+$", base)
    assert cuda, base
    assert pinned("nvidia-cuda-runtime").startswith(cuda.group(1) + "."), (
        base,
        pinned("nvidia-cuda-runtime"),
    )
    runs = [args for word, args in steps if word == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert installs and all("-c constraints.txt" in r for r in installs)  # every install pinned
    copies = [shlex.split(args) for word, args in steps if word in ("COPY", "ADD")]
    assert all(word != "ADD" for word, _ in steps)  # no remote URLs or archives unpacked
    sources = [s for c in copies for s in c[:-1] if not s.startswith("--")]
    assert "constraints.txt" in sources
    for s in sources:
        assert (REPO / s).exists(), s  # copies only what the repository has...
        assert s not in (".", "./") and not re.search(r"(^|/)(\.env|mlflow\.db|\.git|\.venv)", s), (
            s
        )  # ...never secrets
    # No secret baked in: no token-like ENV/ARG names, no values that look like credentials.
    for word, args in steps:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]:
                assert not SECRETISH.search(name), (word, args)
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    env = " ".join(args for word, args in steps if word == "ENV")
    torch_home = re.search(r"TORCH_HOME=(\S+)", env).group(1)
    volumes = [json.loads(args) for word, args in steps if word == "VOLUME"]
    assert [torch_home] in volumes  # the Inception weights are mounted, never baked in
    entry = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    assert entry == [["sagan"]]  # exec form: signals reach sagan


def test_dockerignore_keeps_secrets_and_outputs_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {
        ".git",
        ".venv",
        "mlflow.db",
        ".env",
        "models",
        "data/prepared",
        ".sagan",
        ".dvc/cache",
    } <= ignored
    copied = {
        s
        for word, args in instructions(REPO / "Dockerfile")
        if word == "COPY"
        for s in shlex.split(args)[:-1]
    }
    assert not copied & ignored  # what the image needs is in the context


def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def keys(node) -> list[str]:
    """Every mapping key in a YAML tree."""
    if isinstance(node, dict):
        return [*node, *(k for v in node.values() for k in keys(v))]
    return [k for v in node for k in keys(v)] if isinstance(node, list) else []


def step_functions(steps: list[dict]):
    """Each step's function, imported, and its inputs (less Prefect's own `id`/`requires`)."""
    import importlib

    for step in steps:
        ((name, inputs),) = step.items()
        module, _, func = name.rpartition(".")
        yield (
            getattr(importlib.import_module(module), func),
            {k: v for k, v in inputs.items() if k not in ("id", "requires")},
        )


# prefect.yaml's documented keys (docs.prefect.io, "prefect.yaml"); Prefect has no public validator
# for the file (`prefect deploy` uses its CLI's private model), so a typo'd key must fail here.
TOP_KEYS = {"name", "prefect-version", "build", "push", "pull", "deployments"}
DEPLOYMENT_KEYS = {"name", "version", "tags", "description", "schedules", "entrypoint", "parameters"}
DEPLOYMENT_KEYS |= {"work_pool", "concurrency_limit", "enforce_parameter_schema", "build", "push", "pull"}


def test_prefect_yaml_is_a_valid_deployment_file():
    from prefect.flows import load_flow_from_entrypoint

    raw = prefect_yaml()
    assert set(raw) <= TOP_KEYS and raw["prefect-version"] == pinned("prefect")
    steps = raw["pull"]
    for fn, inputs in step_functions(steps):
        inspect.signature(fn).bind(**inputs)  # every input is a parameter of the step
    names = [next(iter(s)) for s in steps]
    assert names[0] == "prefect.deployments.steps.git_clone"
    assert any(i.get("script", "").startswith("dvc pull") for _, i in step_functions(steps))
    assert {d["name"] for d in raw["deployments"]} == {"sagan-docker-gpu", "sagan-k8s-gpu"}
    for d in raw["deployments"]:
        assert set(d) <= DEPLOYMENT_KEYS and set(d["work_pool"]) <= {
            "name",
            "work_queue_name",
            "job_variables",
        }
        path, _, func = d["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(f"{REPO / path}:{func}")  # what a worker loads
        assert flow.name == "sagan-pipeline"
        flow.validate_parameters(d["parameters"])  # raises on an unknown or mistyped parameter
        assert d["work_pool"]["name"] and d["work_pool"]["job_variables"]["image"] == "{{ $SAGAN_IMAGE }}"
    # No credentials: no key that would hold one (`secret` names a Kubernetes Secret, it holds none),
    # no git access token or credentials block in the clone step.
    assert not [k for k in keys(raw) if SECRETISH.search(k) and k != "secret"]


def test_kubernetes_pool_template_renders_gpu_requests():
    from prefect.utilities.templating import apply_values, find_placeholders

    template = json.loads((REPO / "deploy/prefect/kubernetes-gpu-pool.json").read_text())
    declared = template["variables"]["properties"]
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= set(declared), used - set(declared)
    k8s_deploy = next(d for d in prefect_yaml()["deployments"] if d["name"] == "sagan-k8s-gpu")
    job_vars = k8s_deploy["work_pool"]["job_variables"]
    assert set(job_vars) <= set(declared)
    values = {k: v["default"] for k, v in declared.items() if "default" in v} | job_vars
    values |= {"command": "prefect flow-run execute", "name": "sagan", "env": {}, "labels": {}}
    rendered = apply_values(template["job_configuration"], values)
    (container,) = rendered["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "{{ $SAGAN_IMAGE }}"  # left for `prefect deploy` to fill
    assert container["envFrom"][0]["secretRef"]["name"] == "sagan-env"


def test_multinode_manifests_fit_together():
    service, job = k8s.render(
        image="img:1", repository="https://example.com/r.git", nnodes=3, nproc_per_node=2
    )
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # DNS before readiness: rendezvous first
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert pod["subdomain"] == service["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2} == container["resources"]["requests"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == container["ports"][0]["containerPort"]
    # The arguments are valid sagan params, and they name pod 0 of this Job at the Service's port.
    args = container["args"]
    raw: dict = {}
    for i, a in enumerate(args):
        if a == "--set":
            apply_override(raw, args[i + 1])
    train = validate(raw).train
    assert (train.nnodes, train.nproc_per_node) == (3, 2)
    host, port_s = train.rdzv_endpoint.rsplit(":", 1)
    assert (
        host == f"{job['metadata']['name']}-0.{service['metadata']['name']}" and int(port_s) == port["port"]
    )
    assert "dvc pull prepare" in container["command"][2] and container["command"][2].endswith(
        'sagan train "$@"'
    )
    assert not SECRETISH.search(yaml.safe_dump(container["env"]))


def test_committed_manifest_is_what_render_gives():
    committed = list(yaml.safe_load_all((REPO / "deploy/k8s/train-multinode.yaml").read_text()))
    assert committed == k8s.render(
        image="registry.example.com/sagan:0.1.0", repository="https://git.example.com/you/sagan.git", nnodes=2
    )


def test_resume_from_travels_as_an_argument_not_shell():
    (_, job) = k8s.render(image="i", repository="r", nnodes=2, resume_from="runs:/abc; rm -rf /")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--resume-from") + 1] == "runs:/abc; rm -rf /"  # "$@": one argv element


@pytest.mark.parametrize("bad", [{"name": "Sagan_Train"}, {"image": ""}, {"nnodes": 0}])
def test_render_refuses_bad_values(bad):
    with pytest.raises(ConfigError):
        k8s.render(**({"image": "i", "repository": "r", "nnodes": 2} | bad))


def test_job_outcome_reads_job_conditions():
    assert k8s.job_outcome({"status": {"active": 2}}) is None
    done = {"status": {"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]}}
    assert k8s.job_outcome(done) == "succeeded"
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "BackoffLimitExceeded",
        "message": "Job has reached the specified backoff limit",
    }
    assert (
        k8s.job_outcome({"status": {"conditions": [failed]}})
        == "failed: Job has reached the specified backoff limit"
    )
    assert k8s.job_outcome({"status": {"conditions": [failed | {"status": "False"}]}}) is None
