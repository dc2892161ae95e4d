"""The one implementation of each pipeline stage, called by the CLI, by dvc.yaml and by Prefect.

Stages take validated Params and return small typed records (pipelines.results: paths, hashes,
numbers), never models or tensors, so orchestration can pass them on and read them by attribute.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipelines.results import Evaluated, Prepared, Registered, Trained
from sagan_core.config import Params

log = logging.getLogger("sagan")


# What the `check` stage of an `sagan init` project writes (and prepare depends on, so `dvc repro`
# runs the check before DVC hashes the data folder): a line naming the checked source, no timestamp,
# so an unchanged source leaves prepare unchanged.
SOURCE_CHECKED = "data/source.checked"


def check_source(params: Params, record: bool = False) -> None:
    """Refuse a data.source folder holding anything DVC would block on or read through
    (sagan_core.data.safe_folder); `record`: write SOURCE_CHECKED (the `check` stage's output)."""
    from sagan_core.atomic import write_atomic
    from sagan_core.data.safe_folder import check_folder

    source = Path(params.data.source).expanduser()
    if source.is_dir():
        check_folder(source, params.data.source)
    if not record:
        return
    line = f"data.source {params.data.source}: checked by `sagan prepare --check-only`\n"
    marker = Path(SOURCE_CHECKED)
    if not marker.exists() or marker.read_text() != line:
        write_atomic(marker, lambda f: f.write(line.encode()))


def prepare(params: Params, progress: bool = True) -> Prepared:
    from sagan_core.data.prepare import prepare as run_prepare
    from sagan_core.data.rejections import rejection_summary

    manifest = run_prepare(params.data, progress=progress)
    by_reason = rejection_summary(manifest)
    log.info(
        "prepared %d images (%d classes, %dpx, %d ch) into %s; %d rejected%s; content_hash %s",
        manifest["num_images"],
        manifest["num_classes"],
        manifest["resolution"],
        manifest["channels"],
        params.data.prepared_dir,
        len(manifest["rejected"]),
        f" ({', '.join(f'{k}: {v}' for k, v in by_reason.items())}; see manifest.json)" if by_reason else "",
        manifest["content_hash"][:12],
    )
    return prepared(params, manifest)


def prepared(params: Params, manifest: dict | None = None) -> Prepared:
    """data.prepared_dir as a result; without `manifest`, read back (a stage the flow skipped)."""
    if manifest is None:
        from sagan_core.data.dataset import open_prepared

        manifest = open_prepared(params.data.prepared_dir).manifest
    m, where = manifest, params.data.prepared_dir
    return Prepared(m["content_hash"], m["num_images"], m["num_classes"], len(m["rejected"]), where)


def train(params: Params, resume: bool = False, progress: bool = True, callbacks=()) -> Trained:
    from sagan_core.data.dataset import open_prepared
    from sagan_core.train.resume import start_step
    from sagan_core.train.trainer import train as run_train

    # User mistakes first, as one-line errors, before an MLflow run is opened for nothing.
    open_prepared(params.data.prepared_dir)
    # Several nodes without a shared disk: a node may lack the checkpoint another holds; the
    # trainer hands every rank the newest one (sagan_core/train/distributed.py share_newest).
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    known = not ddp or params.train.checkpoint.exists()
    start = start_step(params.train.checkpoint) if resume and known else 0
    if os.environ.get("RANK", "0") == "0":  # one cleaner; rank 0 is the one that writes checkpoints
        from sagan_core.atomic import remove_stale_temps

        remove_stale_temps(params.train.checkpoint.parent)  # what a kill mid-write left behind
    callbacks = list(callbacks)
    tracker = None
    if os.environ.get("RANK", "0") == "0":  # DDP: rank 0 alone records the run
        from pipelines.tracking.callback import MlflowCallback
        from pipelines.tracking.store import enabled

        if enabled(params):
            tracker = MlflowCallback(params, resume=resume)  # fails fast if MLflow is down
            callbacks.append(tracker)
    try:
        summary = run_train(params, resume=resume, callbacks=callbacks, progress=progress)
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise
    if tracker is not None:
        tracker.close()
    log.info(
        "trained to step %d; checkpoint %s; samples %s",
        summary["step"],
        summary["checkpoint"],
        summary["samples"],
    )
    return Trained(
        checkpoint=summary["checkpoint"],
        step=summary["step"],
        trained_steps=summary["step"] - start,
        samples=summary["samples"],
        attention=summary["attention"],
    )


def trained(params: Params, start_step: int | None = None) -> Trained:
    """train.checkpoint as a result, trained from `start_step` (None: by an earlier run, skipped)."""
    from sagan_core.model.checkpoint import step_of

    t, step = params.train, step_of(params.train.checkpoint) or 0
    done = 0 if start_step is None else step - start_step
    return Trained(str(t.checkpoint), step, done, str(t.latest_samples), str(t.latest_attention))


def evaluate(params: Params, progress: bool = True, checkpoint: str | Path | None = None) -> Evaluated:
    """FID / IS / KID of a checkpoint's (EMA) generator; writes `eval.metrics_file` (eval.json).

    checkpoint: "best", "last" or a path; None: registry.candidate (sagan_core.model.checkpoint.resolve)."""
    from pipelines.tracking.evaluation import log_evaluation, reopen_run
    from sagan_core.evaluate.protocol import evaluate as run_evaluate
    from sagan_core.model.checkpoint import resolve

    own = checkpoint is None or str(checkpoint) in ("best", "last")  # FID/IS/KID join the run
    path = resolve(params.train, params.registry.candidate if checkpoint is None else checkpoint)
    if own:
        reopen_run(params)  # fail in seconds, not after the Inception pass
    result = run_evaluate(params, checkpoint=path, progress=progress)
    if own:
        log_evaluation(params, result)
    kid = "n/a" if result["kid_mean"] is None else f"{result['kid_mean']:.5f} ± {result['kid_std']:.5f}"
    log.info(
        "FID %.4f  IS %.3f ± %.3f  KID %s  (%d samples vs %s %s, step %d, cache %s) -> %s",
        result["fid"],
        result["is_mean"],
        result["is_std"],
        kid,
        result["num_samples"],
        result["reference_split"],
        result["reference_size"],
        result["generator_step"],
        result["stats_cache"],
        params.eval.metrics_file,
    )
    return evaluated(params, result)


def evaluated(params: Params, record: dict | None = None) -> Evaluated:
    """An evaluation record as a result; without `record`, eval.record.json (a stage the flow skipped)."""
    r = record or json.loads(params.eval.record_file.read_text())
    return Evaluated(
        **{
            k: r[k]
            for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "generator_step", "num_samples")
        },
        metrics_file=params.eval.metrics_file,
    )


def register(params: Params) -> Registered:
    """Register the run's generator in the MLflow registry and apply the FID promotion gate."""
    from pipelines.registry import register as registry

    result = registry.register(params)
    log.info(
        "%s v%d%s: %s (%s)",
        result.model_name,
        result.version,
        "" if result.created else " (already registered)",
        result.decision,
        result.reason,
    )
    return result
