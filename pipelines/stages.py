"""The one implementation of each pipeline stage (the CLI, dvc.yaml and the flow call it): validated
Params in, a small typed record out (pipelines.results), never models or tensors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pipelines.results import Evaluated, Prepared, Registered, Trained
from sagan_core.config import Params

log = logging.getLogger("sagan")


# The `check` stage's output, a prepare dep (so `dvc repro` checks before DVC hashes the data folder);
# no timestamp in it, so an unchanged source leaves prepare unchanged.
SOURCE_CHECKED = "data/source.checked"


def check_source(params: Params, record: bool = False) -> None:
    """Refuse a data.source folder holding anything DVC would block on or read through
    (sagan_core.data.safe_folder); `record`: write SOURCE_CHECKED (the `check` stage's output)."""
    from sagan_core.atomic import write_atomic
    from sagan_core.data.safe_folder import check_folder

    source = Path(params.data.source).expanduser()
    if source.is_dir():
        check_folder(source, params.data.source)
    line = f"data.source {params.data.source}: checked by `sagan prepare --check-only`\n"
    marker = Path(SOURCE_CHECKED)
    if record and (not marker.exists() or marker.read_text() != line):
        write_atomic(marker, lambda f: f.write(line.encode()))


def prepare(params: Params, progress: bool = True) -> Prepared:
    from sagan_core.data.prepare import prepare as run_prepare
    from sagan_core.data.rejections import rejection_summary

    manifest = run_prepare(params.data, progress=progress)
    by_reason = rejection_summary(manifest)
    why = f" ({', '.join(f'{k}: {v}' for k, v in by_reason.items())}; see manifest.json)" if by_reason else ""
    facts = dict(manifest, dir=params.data.prepared_dir, n=len(manifest["rejected"]), why=why)
    log.info("prepared %(num_images)d images (%(num_classes)d classes, %(resolution)dpx, %(channels)d ch) into "
             "%(dir)s; %(n)d rejected%(why)s; content_hash %(content_hash).12s", facts)
    return prepared(params, manifest)


def prepared(params: Params, manifest: dict | None = None) -> Prepared:
    """data.prepared_dir as a result; without `manifest`, read back (a stage the flow skipped)."""
    from sagan_core.data.dataset import open_prepared

    m = manifest or open_prepared(params.data.prepared_dir).manifest
    return Prepared(m["content_hash"], m["num_images"], m["num_classes"], len(m["rejected"]), params.data.prepared_dir)


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
    tracker = None
    if os.environ.get("RANK", "0") == "0":  # DDP: rank 0 alone writes checkpoints and records the run
        from pipelines.tracking.callback import MlflowCallback
        from pipelines.tracking.store import enabled
        from sagan_core.atomic import remove_stale_temps

        remove_stale_temps(params.train.checkpoint.parent)  # what a kill mid-write left behind
        if enabled(params):
            tracker = MlflowCallback(params, resume=resume)  # fails fast if MLflow is down
    try:
        callbacks = [*callbacks, tracker] if tracker is not None else list(callbacks)
        summary = run_train(params, resume=resume, callbacks=callbacks, progress=progress)
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise
    if tracker is not None:
        tracker.close()
    step, ckpt, samples = summary["step"], summary["checkpoint"], summary["samples"]
    log.info("trained to step %d; checkpoint %s; samples %s", step, ckpt, samples)
    return Trained(ckpt, step, step - start, samples)


def trained(params: Params, start_step: int | None = None) -> Trained:
    """train.checkpoint as a result, trained from `start_step` (None: by an earlier run, skipped)."""
    from sagan_core.model.checkpoint import step_of

    t, step = params.train, step_of(params.train.checkpoint) or 0
    done = 0 if start_step is None else step - start_step
    return Trained(str(t.checkpoint), step, done, str(t.latest_samples))


def evaluate(params: Params, progress: bool = True, checkpoint: str | Path | None = None) -> Evaluated:
    """FID / IS / KID of a checkpoint's (EMA) generator into eval.metrics_file; `checkpoint`: "best",
    "last" or a path, None: eval.checkpoint."""
    from pipelines.tracking.evaluation import log_evaluation, reopen_run
    from sagan_core.evaluate.protocol import evaluate as run_evaluate
    from sagan_core.model.checkpoint import resolve

    own = checkpoint is None or str(checkpoint) in ("best", "last")  # FID/IS/KID join the run
    path = resolve(params.train, params.eval.checkpoint if checkpoint is None else checkpoint)
    if own:
        reopen_run(params)  # fail in seconds, not after the Inception pass
    result = run_evaluate(params, checkpoint=path, progress=progress)
    if own:
        log_evaluation(params, result)
    kid = "n/a" if result["kid_mean"] is None else f"{result['kid_mean']:.5f} ± {result['kid_std']:.5f}"
    log.info("FID %(fid).4f  IS %(is_mean).3f ± %(is_std).3f  KID %(kid)s  (%(num_samples)d samples vs "
             "%(reference_split)s %(reference_size)s, step %(generator_step)d, cache %(stats_cache)s) -> %(out)s",
             {**result, "kid": kid, "out": params.eval.metrics_file})
    return evaluated(params, result)


def evaluated(params: Params, record: dict | None = None) -> Evaluated:
    """An evaluation record as a result; without `record`, eval.record.json (a stage the flow skipped)."""
    r = record or json.loads(params.eval.record_file.read_text())
    keys = ("fid", "is_mean", "is_std", "kid_mean", "kid_std", "generator_step", "num_samples")
    return Evaluated(*(r[k] for k in keys), metrics_file=params.eval.metrics_file)


def register(params: Params) -> Registered:
    """Register the run's generator in the MLflow registry and apply the FID promotion gate."""
    from pipelines.registry import register as registry

    result = registry.register(params)
    again = "" if result.created else " (already registered)"
    log.info("%s v%d%s: %s (%s)", result.model_name, result.version, again, result.decision, result.reason)
    return result
