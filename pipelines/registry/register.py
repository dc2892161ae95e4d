"""`sagan register`: the run's generator becomes a version of `registry.model_name`; FID gate.

Which generator: `registry.candidate` (sagan_core.model.checkpoint.candidate). best: best.pt's,
logged as a LoggedModel while training ran (pipelines.tracking.best_model); last: checkpoint.pt's.

Lineage: every version is tagged with the FID/KID/IS it was evaluated at, the evaluation protocol
(and its id), the prepared data's content_hash (and DVC md5), the git commit and the run id, and it
points at the LoggedModel of its run, whose run holds the params and curves.

Promotion: the FID gate (promotion.py) gives a new version the alias `champion` or `challenger`,
comparing it with the champion on equal terms, and records the decision as version tags and in the
version's description, its model card (model_card.py).

Idempotence: one version per run and generator step. A run registered at the evaluated step is not
registered again, and a decision once recorded is kept (a person's promotion or rollback is never
undone by the next scheduled run); a version with no decision yet (a register interrupted before
the alias was set) is decided now. A run whose generator improved after it was registered (`sagan
train --resume`, then evaluate) gets a new version: the registered generator is always the one
evaluated. A version left in a failed state is deleted, never kept.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipelines.registry.model_card import model_description, sample_grid, version_card
from pipelines.registry.promotion import DECISION, current_standing, error_code, gate
from pipelines.results import Registered
from pipelines.tracking.best_model import logged_best
from pipelines.tracking.generator_model import log_checkpoint_and_generator
from pipelines.tracking.run_record import end_killed, recover, trained_record
from pipelines.tracking.store import artifact_error, call, connect, redact, scrub
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError
from sagan_core.evaluate.identity import protocol, protocol_id
from sagan_core.model.checkpoint import candidate, step_of

log = logging.getLogger("sagan.registry")


def load_eval(params: Params) -> dict[str, Any]:
    path = params.eval.record_file  # the scores with their protocol (eval.json has the numbers only)
    if not path.exists():
        raise ConfigError(f"sagan register: no evaluation at {path} (run `sagan evaluate` first)")
    try:
        ev = json.loads(path.read_text())
        float(ev["fid"])
        int(ev["generator_step"])
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
    }
    for k in ("kid_mean", "kid_std", "is_mean", "is_std"):
        if isinstance(ev.get(k), (int, float)):
            tags["kid" if k == "kid_mean" else k] = repr(float(ev[k]))
    if "sagan.data.dvc_md5" in t:
        tags["dvc_md5"] = t["sagan.data.dvc_md5"]
    if "weights_official" in ev:  # absent in records written before the check existed
        tags["weights_official"] = str(bool(ev["weights_official"])).lower()
    return tags


def _ensure_model(client, params: Params, run_id: str, record: dict[str, Any]) -> str:
    """The run's READY LoggedModel id; logs it from the local checkpoint when training could not."""
    from mlflow.entities import LoggedModelStatus

    # Both keys are really written: log_generator sets the run tag, then the record gets model_id;
    # the tag still names the model if the process died between the two writes.
    model_id = record.get("model_id") or client.get_run(run_id).data.tags.get("sagan.model_id")
    if model_id:
        model = client.get_logged_model(model_id)
        if model.status == LoggedModelStatus.READY:
            return model_id
        log.warning("logged model %s of run %s is %s: logging it again", model_id, run_id, model.status)
    log.info("uploading the checkpoint and the generator of run %s from %s", run_id, params.train.checkpoint)
    return log_checkpoint_and_generator(client, run_id, params, params.train.checkpoint)


def _existing_version(client, name: str, run_id: str, step: int):
    """This run's version of `name` at generator step `step`, if any; failed registrations are
    deleted (no partial entries)."""
    found = None
    for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if mv.status == "FAILED_REGISTRATION":
            client.delete_model_version(name, mv.version)
        elif (mv.tags or {}).get("generator_step") != str(step):
            continue  # the run's generator at another step: another version
        elif found is None or int(mv.version) < int(found.version):
            found = mv
    return found


def _create_version(client, name: str, model_id: str, run_id: str, tags: dict[str, str], description: str):
    mv = None
    try:
        mv = client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags=tags,
            model_id=model_id,
            description=description,
        )
        if mv.status != "READY":
            raise SaganError(f"model version {name} v{mv.version} ended {mv.status}: {mv.status_message}")
        return mv
    except BaseException:
        if mv is not None:  # never leave a version behind that does not load
            try:
                client.delete_model_version(name, mv.version)
            except Exception as e:  # noqa: BLE001
                log.warning("could not delete failed version %s v%s: %s", name, mv.version, scrub(str(e)))
        raise


def register(params: Params) -> Registered:
    """Register the recorded run's generator and apply the promotion gate; returns the decision."""
    record = trained_record(params, "sagan register")
    ev = load_eval(params)
    client, uri = connect(params)
    if killed := record.pop("killed", None):
        end_killed(client, uri, killed)
    return call(uri, _register, client, uri, params, record, ev)


def _register(client, uri: str, params: Params, record: dict[str, Any], ev: dict[str, Any]) -> Registered:
    run_id, name = record["run_id"], params.registry.model_name
    run = _recorded_run(client, uri, params, run_id)
    step = int(ev["generator_step"])
    path, which, why = candidate(params)
    # the candidate's step: its local checkpoint, else (another machine) the run's last logged step
    want = step_of(path) if path.exists() else record.get("step")
    if want is not None and step != int(want):
        raise ConfigError(
            f"sagan register: {params.eval.record_file} evaluated the generator at step {step}, the "
            f"{which} checkpoint ({path}) is at step {want} (run `sagan evaluate` again)"
        )
    recover(client, uri, params, run_id, end=True)  # what an MLflow outage during training lost
    if which == "best":
        model_id, score = call(uri, logged_best, client, run_id, record, path, step)
        why = f"{why}: {score}"
    else:
        model_id = _upload_model(client, uri, params, run_id, record)
    _describe_model(client, params, name)
    mv = _existing_version(client, name, run_id, step)
    created = mv is None
    if created:
        tags = _version_tags(ev, run) | {"candidate": which, "candidate.reason": why, "model_id": model_id}
        pending = version_card(params, name, 0, run, ev, "pending", "decided once registered")
        mv = _create_version(client, name, model_id, run_id, tags, pending)
        _link_version(client, model_id, name, mv.version)
    else:
        log.info(
            "run %s is already registered at step %d as %s v%s: not registering again",
            run_id,
            step,
            name,
            mv.version,
        )
        mv = client.get_model_version(name, mv.version)
    if DECISION in mv.tags:  # decided before (by the gate or by a person): kept as it is
        decision, reason = current_standing(client, name, mv)
    else:
        decision, reason = gate(client, params, name, mv)
    grid = sample_grid(client, run_id, step)  # the card shows it
    card = version_card(params, name, int(mv.version), run, ev, decision, reason, grid)
    client.update_model_version(name, mv.version, description=card)
    return Registered(
        model_name=name,
        version=int(mv.version),
        created=created,
        decision=decision,
        reason=reason,
        fid=float(mv.tags["fid"]),  # the version's own: a rerun reports the FID it was registered with
        generator_step=int(mv.tags.get("generator_step", step)),
        run_id=run_id,
        model_uri=f"models:/{name}/{mv.version}",
        tracking_uri=redact(uri),
    )


def _describe_model(client, params: Params, name: str) -> None:
    """Create the registered model if needed; its description is kept current (model_card)."""
    from mlflow.exceptions import MlflowException

    description = model_description(params, name)
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in error_code(e):
            raise
        if client.get_registered_model(name).description != description:
            client.update_registered_model(name, description=description)


def _recorded_run(client, uri: str, params: Params, run_id: str):
    """The run named by the run record; a one-line ConfigError when the store does not have it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in error_code(e):
            raise ConfigError(
                f"sagan register: MLflow run {run_id} (from {params.train.run_record}) does not exist "
                f"at {redact(uri)}"
            ) from None
        raise


def _upload_model(client, uri: str, params: Params, run_id: str, record: dict[str, Any]) -> str:
    """_ensure_model with every artifact-store failure (MLflow, OS or boto) as one line."""
    from mlflow.exceptions import MlflowException

    try:
        return _ensure_model(client, params, run_id, record)
    except (MlflowException, OSError) as e:
        raise artifact_error(uri, e, client, run_id) from None
    except Exception as e:
        # S3 uploads raise boto's own exceptions (no common base with MLflow's or OSError); matching
        # by module avoids importing botocore just to name them
        if type(e).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise artifact_error(uri, e, client, run_id) from None
        raise


def _link_version(client, model_id: str, name: str, version: str) -> None:
    """Mark the LoggedModel as registered (the UI's "Registered" column), as `mlflow.register_model`
    does: the open-source registry stores no model_id on the version itself (its source
    `models:/<model_id>` and the version tag `model_id` name the model)."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    model = client.get_logged_model(model_id)
    versions = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    if {"name": name, "version": str(version)} not in versions:
        versions.append({"name": name, "version": str(version)})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
