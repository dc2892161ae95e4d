"""What each stage returns (pipelines.stages): small typed records of paths, hashes and numbers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prepared:
    content_hash: str
    num_images: int
    num_classes: int
    rejected: int
    prepared_dir: str


@dataclass(frozen=True)
class Trained:
    checkpoint: str
    step: int  # the checkpoint's step
    trained_steps: int  # steps trained by this call (0: nothing to do, or skipped)
    samples: str  # latest sample grid


@dataclass(frozen=True)
class Evaluated:
    fid: float
    is_mean: float
    is_std: float
    kid_mean: float | None  # None: the reference statistics hold no features
    kid_std: float | None
    generator_step: int
    num_samples: int
    metrics_file: str  # eval.json: these numbers (the protocol is in eval.record.json next to it)


@dataclass(frozen=True)
class NotRegistered:
    """The flow's register stage did not run: tracking is off, so no MLflow run holds a model."""

    model_name: str
    reason: str  # e.g. "tracking off: SAGAN_TRACKING=0"


@dataclass(frozen=True)
class Registered:
    model_name: str
    version: int
    created: bool  # false: the run was registered before; its promotion was re-decided
    decision: str  # the alias it got: champion | challenger
    reason: str
    fid: float  # the version's own FID, at generator_step
    run_id: str
    model_uri: str
    tracking_uri: str  # redacted (no user-info)
    generator_step: int = -1  # the step of the generator the version holds
