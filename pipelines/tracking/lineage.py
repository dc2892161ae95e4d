"""Lineage of a training run: the git commit of the code and the identity of the prepared data.

The prepared data is identified by the content_hash of its manifest and, when DVC tracks the
folder, by the md5 DVC records for it; both become run tags and tags of the run's dataset input, so
a registered version can be traced to the exact images it was trained on.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from sagan_core.config import Params


def git_commit(params: Params | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the working tree, ('unknown', False) outside git.

    Dirty: a file git tracks differs from HEAD (staged or not; untracked files do not count), other
    than the records the pipeline itself writes while it runs (`pipeline_records`). A run from a
    clean commit is clean although the flow and `dvc repro` rewrite dvc.lock before training starts;
    a `--set` that changes params.yaml (the flow writes it there) makes it dirty, as does any edit
    of code, dvc.yaml or params.yaml: what the run ran from is then not the commit.
    """
    try:
        commit = _git(["rev-parse", "HEAD"]).strip()
        top = Path(_git(["rev-parse", "--show-toplevel"]).strip())
        # -z: paths from the repository's root, unquoted; "XY path", a rename's old path after it
        entries = _git(["status", "--porcelain", "-z", "--untracked-files=no"]).split("\0")
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    changed, i = [], 0
    while i < len(entries):
        entry = entries[i]
        if entry:
            changed.append(top / entry[3:])
            i += "R" in entry[:2] or "C" in entry[:2]  # skip the old path
        i += 1
    own = pipeline_records(params)
    return commit, any(p.name != ".gitignore" and p.resolve() not in own for p in changed)


def pipeline_records(params: Params | None) -> set[Path]:
    """Files git may track that a run itself rewrites: what they differ in says what the run made,
    not what it ran from. dvc.lock (DVC's record of each stage's deps and outs), sagan-version.yaml
    (the installed sagan, recorded by the flow), and the metrics files: eval.json, its record and the
    training curves, kept in git by design (dvc.yaml), rewritten by every training and evaluation.
    Every .gitignore counts too (DVC adds an entry there for each output; ignore rules change nothing
    a run computes)."""
    files = [Path("dvc.lock"), Path("sagan-version.yaml")]
    if params is not None:
        curves = Path(params.train.metrics_file)
        files += [curves, curves.with_name(f"{curves.stem}_eval.csv")]
        files += [Path(params.eval.metrics_file), params.eval.record_file]
    return {f.resolve() for f in files}


def _git(args: list[str]) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, check=True).stdout


def data_lineage(params: Params) -> dict[str, str]:
    """content_hash of the prepared data, plus the DVC md5 of its folder when DVC tracks it."""
    prepared = Path(params.data.prepared_dir)
    out = {"path": str(prepared)}
    try:
        manifest = json.loads(params.data.manifest_file.read_text())
        out["content_hash"] = str(manifest.get("content_hash", "unknown"))
        out["num_images"] = str(manifest.get("num_images", ""))
    except (OSError, ValueError):
        out["content_hash"] = "unknown"
    dvc = dvc_md5(prepared)
    if dvc:
        out["dvc_md5"] = dvc
    return out


def dvc_md5(prepared: Path) -> str | None:
    """The md5 `dvc.lock` (or a `.dvc` file) records for the prepared folder; None without DVC."""
    import yaml

    target = os.path.normpath(str(prepared))
    candidates = [Path("dvc.lock"), prepared.with_name(prepared.name + ".dvc")]
    for path in candidates:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        # dvc.lock lists outs per stage; a `.dvc` file lists them at the top level
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


def log_lineage(client, run_id: str, params: Params, info: dict[str, Any]) -> None:
    """Tag the run with code and data lineage and log the prepared data as its dataset input.

    `info` is the trainer's on_start info: the spec (attention slots resolved from null/auto params),
    device, world_size and the step plan (bf16, ...), so the model card states what ran.
    """
    from mlflow.entities import RunTag

    commit, dirty = git_commit(params)
    data = data_lineage(params)
    tags = {
        "mlflow.source.git.commit": commit,
        "sagan.git_commit": commit,
        "sagan.git_dirty": str(dirty).lower(),
        "sagan.data.content_hash": data["content_hash"],
        "sagan.spec": json.dumps(info["spec"], sort_keys=True),
        "sagan.device": str(info["device"]),
        "sagan.world_size": str(info["world_size"]),
    }
    if "bf16" in info:  # what train.precision / channels_last: auto resolved to on this device
        tags["sagan.precision"] = "bf16" if info["bf16"] else "fp32"
        tags["sagan.channels_last"] = str(bool(info.get("channels_last"))).lower()
        tags["sagan.compile"] = str(bool(info.get("compile"))).lower()
    if "dvc_md5" in data:
        tags["sagan.data.dvc_md5"] = data["dvc_md5"]
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    _log_dataset(client, run_id, data)


def _log_dataset(client, run_id: str, data: dict[str, str]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    # The public Dataset entity, described as MLflow's own local-path source describes itself
    # (source type "local", {"uri": path}); MLflow caps digests at 36 characters, so the full
    # hash travels as an input tag.
    dataset = Dataset(
        name="prepared",
        digest=data["content_hash"][:36],
        source_type="local",
        source=json.dumps({"uri": str(Path(data["path"]).resolve())}),
    )
    input_tags = [
        InputTag("mlflow.data.context", "training"),
        InputTag("content_hash", data["content_hash"]),
    ]
    if "dvc_md5" in data:
        input_tags.append(InputTag("dvc_md5", data["dvc_md5"]))
    client.log_inputs(run_id, [DatasetInput(dataset, input_tags)])
