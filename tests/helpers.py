"""Helpers shared by the tests (fixtures live in conftest.py and the plugins it registers).

Tests run on CPU, in temporary project directories, with tiny models.
Longer than 300 lines: the small helpers every lane shares, one section per concern (the CLI, training
checkpoints, evaluation, the flow, image folders, DVC and git); split, they would be seven tiny modules.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

from sagan_core.config import Params

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAGAN = [sys.executable, "-m", "pipelines.cli"]


def tiny_overrides(**extra: object) -> dict:
    """Params for a model small enough to take a few steps per second on one CPU core.

    extra: `section__key=value` overrides, e.g. train__steps=8."""
    raw = {
        "model": {"g_ch": 4, "d_ch": 4, "z_dim": 16},
        # in-training evaluation off (params.yaml turns it on): tests that want it set train.eval_every
        "train": {
            "steps": 4,
            "batch_size": 8,
            "checkpoint_every": 2,
            "sample_every": 2,
            "log_every": 1,
            "eval_every": 0,
        },
        "eval": {"num_samples": 64, "batch_size": 32, "dims": 64, "kid_subsets": 10, "kid_subset_size": 32},
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        raw.setdefault(section, {})[name] = value
    return raw


# The same tiny model as `sagan` CLI flags, for tests that run the command itself.
TINY_CLI = [
    "--set",
    "model.g_ch=4",
    "--set",
    "model.d_ch=8",
    "--set",
    "model.z_dim=16",
    "--set",
    "train.batch_size=8",
]


def project_params(project: Path, raw: dict | None = None, **extra: object) -> Params:
    """Validated params whose outputs all lie inside `project` (tests call stages in this process).

    raw: a params mapping (e.g. a project's params.yaml); default: the tiny preset plus `extra`."""
    raw = copy.deepcopy(raw) if raw is not None else tiny_overrides(**extra)
    raw.setdefault("data", {})["prepared_dir"] = str(project / "data/prepared")
    raw.setdefault("train", {}).update(
        out_dir=str(project / "models"),
        samples_dir=str(project / "samples"),
        metrics_file=str(project / "metrics/train.csv"),
    )
    raw.setdefault("eval", {})["metrics_file"] = str(project / "metrics/eval.json")
    return Params.model_validate(raw)


def run_cli(
    args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`sagan ARGS` in a subprocess, as a user would run it."""
    full_env = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run(
        SAGAN + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`sagan ARGS` in this process (the CLI's own entry point, main(argv)), for the many checks of
    one-line messages and exit codes: ~4 s of imports cheaper than run_cli. stdout and stderr are what
    the command printed; the environment and working directory are restored afterwards. One test per
    exit code runs the real command (run_cli), so the process boundary is proven too."""
    import io
    import logging

    from pipelines.cli.main import main

    before = dict(os.environ)
    here = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    # The command's log lines go to stderr as in its own process (there, main() configures logging;
    # here pytest's handlers came first, so logging.basicConfig inside main() leaves them be).
    root, handler = logging.getLogger(), logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    os.environ.update(env or {})
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(before)
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(["sagan", *args], code, out.getvalue(), err.getvalue())


def run_two_rank_worker(project: Path, env: dict | None = None) -> tuple[dict, dict]:
    """torchrun 2 processes of ddp_worker.py on `project`; returns each rank's final weights."""
    full_env = os.environ | {"PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"} | (env or {})
    worker = Path(__file__).parent / "ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker)]
    r = subprocess.run([*cmd, str(project)], env=full_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = (torch.load(project / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    for net in ("G", "D"):
        assert r0[net].keys() == r1[net].keys()
        for k in r0[net]:
            assert torch.equal(r0[net][k], r1[net][k]), f"{net}.{k} differs between ranks"
    return r0, r1


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a process we started with start_new_session=True, and its children."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_overrides(raw: dict) -> list[str]:
    return [f"{section}.{k}={v}" for section, values in raw.items() for k, v in values.items()]


def pipeline_project(root: Path, dvc: bool, **extra: object) -> Path:
    """A project folder: the repo's params.yaml with the tiny preset written in, and, with `dvc`,
    a git + DVC repository holding the repo's dvc.yaml and the code its stages depend on."""
    from pipelines.flow.params_writeback import write_overrides

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    # Samples (with their attention figure) only at the end: they cost more than a tiny step.
    # FID on 20 generated vs 20 reference images: Inception costs ~0.1-0.2 s per image on CPU.
    small = {"train__sample_every": 4, "eval__num_samples": 20, "eval__reference_size": 20}
    small |= {"eval__kid_subset_size": 10, "eval__batch_size": 20}
    write_overrides(root / "params.yaml", flat_overrides(tiny_overrides(**(small | extra))))
    if not dvc:
        return root  # no dvc.yaml: pipeline.dvc=auto leaves DVC out
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "sagan_core", root / "sagan_core", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text("/.sagan/\n/mlflow.db\n/mlruns/\n/mlartifacts/\n")
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)
    return root


def dvc_status(root: Path) -> str:
    """`dvc status` as a user runs it (a separate process: an independent check of the flow's view)."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# ---- training: checkpoints compared bit for bit ------------------------------------------------------
STATE_KEYS = ("generator", "generator_ema", "discriminator")


def subset_prepared(src: Path, dst: Path, n: int) -> None:
    """The first n images of a prepared dataset, as a prepared dataset of its own."""
    import json

    import numpy as np

    from sagan_core.data.dataset import content_hash

    dst.mkdir(parents=True)
    np.save(dst / "images.npy", np.load(src / "images.npy")[:n])
    np.save(dst / "labels.npy", labels := np.load(src / "labels.npy")[:n])
    manifest = json.loads((src / "manifest.json").read_text()) | {"num_images": n}
    manifest["content_hash"] = content_hash(dst / "images.npy", labels, manifest["class_names"])
    (dst / "manifest.json").write_text(json.dumps(manifest))


def assert_same_tensors(a, b, path: str = "") -> None:
    """Bitwise equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tensors(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


# ---- evaluation: a checkpoint without training, small evaluation params ------------------------------
def write_checkpoint(path, seed: int, resolution: int = 32, channels: int = 1, num_classes: int = 10) -> None:
    """A checkpoint as the trainer lays it out (untrained tiny networks: evaluation cares not)."""
    from sagan_core.model import checkpoint as ckpt_io
    from sagan_core.model.networks import ModelSpec, build_models

    torch.manual_seed(seed)
    spec = ModelSpec(resolution, channels, num_classes, z_dim=16, g_ch=4, d_ch=4)
    g, d = build_models(spec)
    ckpt_io.save_atomic(
        {
            "step": 7,
            "spec": spec.to_dict(),
            "generator": g.state_dict(),
            "generator_ema": g.state_dict(),
            "discriminator": d.state_dict(),
        },
        path,
    )


def eval_params(project: Path, **eval_overrides: object) -> Params:
    """project_params with an evaluation small enough for CPU (20 images), its cache inside `project`."""
    ev = {
        "eval__num_samples": 20,
        "eval__reference_size": 20,
        "eval__batch_size": 10,
        "eval__dims": 64,
        "eval__kid_subsets": 5,
        "eval__kid_subset_size": 10,
        "eval__cache_dir": str(project / "cache"),
        "eval__metrics_file": str(project / "metrics/eval.json"),
        "eval__device": "cpu",
    }
    return project_params(project, **(ev | eval_overrides))


# ---- the flow: a checkpoint's step, stand-ins for the stages after training --------------------------
def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint, read here (not through the code under test); None when it is missing,
    truncated or foreign."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # missing, truncated (e.g. while being written) or not a checkpoint
        return None


def fake_downstream(monkeypatch) -> None:
    """Stand-ins for evaluate/register where a test is about orchestration, not about FID or MLflow.

    monkeypatch: the test's `monkeypatch` fixture (the stand-ins are undone after the test)."""
    from pipelines import stages
    from pipelines.results import Evaluated, Registered

    def evaluate(params, progress=True):
        step = checkpoint_step(params.train.checkpoint)
        return Evaluated(float(step), 1.0, 0.0, None, None, step, 1, params.eval.metrics_file)

    def register(params):
        name = params.registry.model_name
        return Registered(name, 1, True, "champion", "t", 0.0, "run", f"models:/{name}/1", "sqlite://")

    monkeypatch.setattr(stages, "evaluate", evaluate)
    monkeypatch.setattr(stages, "register", register)


# ---- a user's own images: a folder of class folders of JPEGs ---------------------------------------
def jpeg(path: Path, seed: int, size: int = 32) -> None:
    """A one-colour size x size JPEG (its colour from `seed`)."""
    from PIL import Image

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3))).save(path, quality=90)


def image_folder(root: Path, classes: int = 2, per_class: int = 12, size: int = 32) -> Path:
    """root/class<c>/<i>.jpg: `classes` folders of `per_class` images each."""
    for c in range(classes):
        for i in range(per_class):
            jpeg(root / f"class{c}/{i:02d}.jpg", seed=100 * c + i, size=size)
    return root


# ---- DVC and git as a user runs them (the venv's own `dvc`) ------------------------------------------
BIN = Path(sys.executable).parent


def sh(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def dvc(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return sh([str(BIN / "dvc"), *args], cwd, env, check)


def git(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return sh(["git", *args], cwd, env)


def letters_archive(path: Path, classes: int = 26, per_class: int = 6, size: int = 28) -> Path:
    """A newcomer's own data (issue 32): a .tar.gz of `classes` folders named A, B, C, ... of small
    grayscale PNGs (a letter drawn at a few offsets), like a handwritten-letters set."""
    import io
    import tarfile

    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for c in range(classes):
            name = chr(ord("A") + c)
            for i in range(per_class):
                img = Image.new("L", (size, size), 0)
                ImageDraw.Draw(img).text((6 + i % 5, 4 + i % 7), name, fill=255)
                buf = io.BytesIO()
                img.save(buf, "PNG")
                info = tarfile.TarInfo(f"letters/{name}/{i:03d}.png")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return path


# ---- `sagan init` projects at toy size ----------------------------------------------------------------
# An `sagan init` project's `dvc status` when everything is recorded: its `check` stage (the data
# folder and the project lock, before DVC hashes the images) is always_changed, and says only that.
INIT_UP_TO_DATE = "check:\n\talways changed"
# Toy sizes for any preset (their own resolution kept): 32-px images upsampled (data.min_size), a
# width-8 model (attention needs 8 channels), 2 steps with one in-training evaluation at the end, 16-sample FID at 64 dims.
INIT_TOY = [
    "data.min_size=16",
    "model.g_ch=8",
    "model.d_ch=8",
    "model.z_dim=16",
    "train.steps=2",
    "train.batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.sample_every=2",
    "train.eval_every=2",
    "train.eval_samples=16",
    "train.standing_stats=1",
    "eval.num_samples=16",
    "eval.batch_size=16",
    "eval.dims=64",
    "eval.kid_subsets=2",
    "eval.kid_subset_size=8",
]
