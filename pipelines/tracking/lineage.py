"""A training run's lineage: the code's git commit, the prepared data's content_hash and DVC md5 (as
run tags and its dataset input), so a registered version traces back to the images it learned from.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from sagan_core.config import Params


def git_commit(params: Params | None = None) -> tuple[str, bool]:
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
    own = [Path("dvc.lock"), Path("sagan-version.yaml")]
    if params is not None:
        curves = Path(params.train.metrics_file)
        own += [curves, curves.with_name(f"{curves.stem}_eval.csv"), Path(params.eval.metrics_file), params.eval.record_file]
    own = {f.resolve() for f in own}
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
