"""The one implementation of each pipeline stage, called by the CLI, by dvc.yaml and by Prefect.

Stages take validated Params and return small JSON-able summaries (paths, hashes, numbers), never
models or tensors, so orchestration can pass them between processes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sagan_core.config import Params

log = logging.getLogger("sagan")


def prepare(params: Params, progress: bool = True) -> dict[str, Any]:
    from sagan_core.prepare import prepare as run_prepare
    from sagan_core.prepare import rejection_summary

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
    return {k: manifest[k] for k in ("num_images", "num_classes", "content_hash")} | {
        "rejected": len(manifest["rejected"]),
        "prepared_dir": params.data.prepared_dir,
    }


def train(params: Params, resume: bool = False, progress: bool = True, callbacks=()) -> dict[str, Any]:
    from sagan_core.data import open_prepared
    from sagan_core.errors import ConfigError
    from sagan_core.trainer import train as run_train

    # User mistakes first, as one-line errors, before an MLflow run is opened for nothing.
    open_prepared(params.data.prepared_dir)
    checkpoint = Path(params.train.out_dir) / "checkpoint.pt"
    if resume and not checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint at {checkpoint} (train without --resume first)")
    callbacks = list(callbacks)
    tracker = None
    if os.environ.get("RANK", "0") == "0":  # DDP: rank 0 alone records the run
        from . import tracking

        if tracking.enabled(params):
            tracker = tracking.MlflowCallback(params, resume=resume)  # fails fast if MLflow is down
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
    return summary


def register(params: Params) -> dict[str, Any]:
    """Register the run's generator in the MLflow registry and apply the FID promotion gate."""
    from . import registry

    result = registry.register(params)
    log.info(
        "%s v%d%s: %s (%s)",
        result["model_name"],
        result["version"],
        "" if result["created"] else " (already registered)",
        result["decision"],
        result["reason"],
    )
    return result


def evaluate(params: Params, progress: bool = True, checkpoint=None) -> dict[str, Any]:
    """FID / IS / KID of the checkpoint's (EMA) generator; writes `eval.metrics_file` (eval.json)."""
    from sagan_core.evaluate import evaluate as run_evaluate

    result = run_evaluate(params, checkpoint=checkpoint, progress=progress)
    if checkpoint is None:  # the run's own checkpoint: FID/IS/KID join its MLflow run
        from .tracking import log_evaluation

        log_evaluation(params, result)
    log.info(
        "FID %.4f  IS %.3f ± %.3f  KID %s  (%d samples vs %s %s, step %d, cache %s) -> %s",
        result["fid"],
        result["is_mean"],
        result["is_std"],
        "n/a" if result["kid_mean"] is None else f"{result['kid_mean']:.5f} ± {result['kid_std']:.5f}",
        result["num_samples"],
        result["reference_split"],
        result["reference_size"],
        result["generator_step"],
        result["stats_cache"],
        params.eval.metrics_file,
    )
    return result
