"""`sagan register`: the evaluated candidate checkpoint's generator becomes a version of
`registry.model_name`, with its scores and lineage as tags, then the FID gate (promotion.py).

One version per run and generator step: a rerun registers nothing again and keeps a recorded
decision (a person's promotion is never undone); an undecided version is decided now.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipelines.registry.model_card import model_description, sample_grid, version_card
from pipelines.registry.promotion import DECISION, current_standing, gate
from pipelines.results import Registered
from pipelines.tracking.generator_model import log_generator
from pipelines.tracking.run_record import reopen
from pipelines.tracking.store import artifact_error, call, redact
from pipelines.tracking.uploads import CHECKPOINT_DIR
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError
from sagan_core.evaluate.identity import protocol, protocol_id
from sagan_core.model import checkpoint as ckpt_io

log = logging.getLogger("sagan.registry")


def load_eval(params: Params) -> dict[str, Any]:
    path = params.eval.record_file  # the scores with their protocol (eval.json has the numbers only)
    if not path.exists():
        raise ConfigError(f"sagan register: no evaluation at {path} (run `sagan evaluate` first)")
    try:
        ev = json.loads(path.read_text())
        float(ev["fid"]), int(ev["generator_step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SaganError(f"{path}: not a sagan evaluation (no numeric fid or generator_step: {e})") from None
    return ev


def _version_tags(ev: dict[str, Any], run) -> dict[str, str]:
    t = run.data.tags
    tags = {
        "fid": repr(float(ev["fid"])),
        "protocol": json.dumps(protocol(ev), sort_keys=True, default=str),
        "protocol_id": protocol_id(ev),
        "content_hash": t.get("sagan.data.content_hash", "unknown"),
        "git_commit": t.get("sagan.git_commit", "unknown"),
        "git_dirty": t.get("sagan.git_dirty", "unknown"),
        "run_id": run.info.run_id,
        "generator_step": str(ev["generator_step"]),
        "weights_official": str(ev.get("weights_official", "unknown")).lower(),
    }
    scores = ("kid_mean", "kid_std", "is_mean", "is_std")
    tags |= {k.replace("kid_mean", "kid"): repr(float(ev[k])) for k in scores if isinstance(ev.get(k), (int, float))}
    return tags | ({"dvc_md5": t["sagan.data.dvc_md5"]} if "sagan.data.dvc_md5" in t else {})


def _existing_version(client, name: str, run_id: str, step: int):
    """This run's version of `name` at generator step `step`, if any; failed ones are deleted."""
    ours = []
    for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if mv.status == "FAILED_REGISTRATION":
            client.delete_model_version(name, mv.version)
        elif (mv.tags or {}).get("generator_step") == str(step):
            ours.append(mv)
    return min(ours, key=lambda mv: int(mv.version), default=None)


def register(params: Params) -> Registered:
    """Register the recorded run's evaluated generator and apply the promotion gate."""
    ev = load_eval(params)
    record, client, uri = reopen(params, "sagan register")
    return call(uri, _register, client, uri, params, record.run_id, ev)


def _register(client, uri: str, params: Params, run_id: str, ev: dict[str, Any]) -> Registered:
    import mlflow
    from mlflow.exceptions import MlflowException

    name, step = params.registry.model_name, int(ev["generator_step"])
    path, which, why = ckpt_io.candidate(params)
    if not path.exists():
        raise ConfigError(f"sagan register: no {which} checkpoint at {path} (run `sagan train` first)")
    if (at := ckpt_io.step_of(path)) != step:
        raise ConfigError(f"sagan register: {params.eval.record_file} evaluated the generator at step {step}, the "
                          f"{which} checkpoint ({path}) is at step {at} (run `sagan evaluate` again)")
    run, mv = client.get_run(run_id), _existing_version(client, name, run_id, step)
    if created := mv is None:
        generator, meta = ckpt_io.load_generator(path, use_ema=True, device="cpu")  # loads before uploading
        try:  # the checkpoint (resumable from the version) and its EMA generator; store failures: one line
            client.log_artifact(run_id, str(path), CHECKPOINT_DIR)
            model_id = log_generator(client, run_id, generator, meta)
        except Exception as e:
            # S3 uploads raise boto's own exceptions (no common base with MLflow's or OSError)
            if isinstance(e, (MlflowException, OSError)) or type(e).__module__.startswith(("botocore", "boto3", "s3transfer")):
                raise artifact_error(uri, e, client, run_id) from None
            raise
        if which == "best":
            why += f": {meta.get('best_metric')} {meta.get('best_value'):.6g} at step {step}, the best in-training score"
        tags = _version_tags(ev, run) | {"candidate": which, "candidate.reason": why, "model_id": model_id}
        # mlflow.register_model also creates the registered model and links the LoggedModel to the version
        mv = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
        if mv.status != "READY":
            client.delete_model_version(name, mv.version)
            raise SaganError(f"model version {name} v{mv.version} ended {mv.status}: {mv.status_message}")
    else:
        log.info("run %s is already registered at step %d as %s v%s: not registering again", run_id, step, name, mv.version)
    description = model_description(params, name)
    if client.get_registered_model(name).description != description:
        client.update_registered_model(name, description=description)
    mv = client.get_model_version(name, mv.version)
    # decided before (by the gate or by a person): kept as it is
    decision, reason = current_standing(client, name, mv) if DECISION in mv.tags else gate(client, params, name, mv)
    card = version_card(params, name, int(mv.version), run, ev, decision, reason, sample_grid(client, run_id, step))
    client.update_model_version(name, mv.version, description=card)
    # the version's own FID: a rerun reports the one it was registered with
    return Registered(model_name=name, version=int(mv.version), created=created, decision=decision, reason=reason,
                      fid=float(mv.tags["fid"]), generator_step=int(mv.tags.get("generator_step", step)),
                      run_id=run_id, model_uri=f"models:/{name}/{mv.version}", tracking_uri=redact(uri))
