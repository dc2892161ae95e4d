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
    differs from HEAD, other than what the pipeline itself rewrites as it runs (`pipeline_records`)."""
    try:
        commit = _git(["rev-parse", "HEAD"]).strip()
        top = Path(_git(["rev-parse", "--show-toplevel"]).strip())
        # staged or not, from the repository's root, unquoted (-z); a rename as its two paths
        changed = [top / p for p in _git(["diff", "HEAD", "--name-only", "--no-renames", "-z"]).split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    own = pipeline_records(params)
    return commit, any(p.name != ".gitignore" and p.resolve() not in own for p in changed)


def pipeline_records(params: Params | None) -> set[Path]:
    """Tracked files a run itself rewrites (they say what it made, not what it ran from); every
    .gitignore too (DVC adds its outputs there)."""
    files = [Path("dvc.lock"), Path("sagan-version.yaml")]
    if params is not None:
        curves = Path(params.train.metrics_file)
        files += [curves, curves.with_name(f"{curves.stem}_eval.csv")]
        files += [Path(params.eval.metrics_file), params.eval.record_file]
    return {f.resolve() for f in files}


def _git(args: list[str]) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, check=True).stdout


def data_lineage(params: Params) -> dict[str, str]:
    prepared = Path(params.data.prepared_dir)
    out = {"path": str(prepared)}
    try:
        manifest = json.loads(params.data.manifest_file.read_text())
        out["content_hash"] = str(manifest.get("content_hash", "unknown"))
        out["num_images"] = str(manifest.get("num_images", ""))
    except (OSError, ValueError):
        out["content_hash"] = "unknown"
    if dvc := dvc_md5(prepared):
        out["dvc_md5"] = dvc
    return out


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

    # described as MLflow's own local source describes itself; digests are capped at 36 characters
    source = json.dumps({"uri": str(Path(data["path"]).resolve())})
    dataset = Dataset(name="prepared", digest=data["content_hash"][:36], source_type="local", source=source)
    extra = {"dvc_md5": data["dvc_md5"]} if "dvc_md5" in data else {}
    tags = {"mlflow.data.context": "training", "content_hash": data["content_hash"]} | extra
    client.log_inputs(run_id, [DatasetInput(dataset, [InputTag(k, v) for k, v in tags.items()])])
