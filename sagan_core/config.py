"""params.yaml, validated: one pydantic model per section, one `Params` object that flows everywhere.

Reading the file and `--set` overrides: params_file.py; what each key means: params.yaml's comments.
Longer than 300 lines: every section and its bounds in one place, the one reference for params.yaml.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from sagan_core.errors import shown
from sagan_core.model.arch import D_ARCH, G_ARCH, attention_slots, default_attention, feature_maps

# DiffAugment's operations (train/diffaug.py), named here so that validation needs no torch.
DIFFAUG_OPERATIONS = ("color", "translation", "cutout")

# Field types whose values pydantic's lax mode would also take as a boolean (true -> 1).
_NUMBER_KINDS = {int: "an integer", int | None: "an integer", float: "a number", float | None: "a number"}


INT64_MAX = 2**63 - 1  # seeds beyond it overflow inside torch ("Overflow when unpacking long long")
MAX_STR = 4096  # every string (paths: Linux's PATH_MAX); a 1 MiB data.source is a mistake


def _device(v: str) -> str:
    if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {shown(v)}")
    return v


Device = Annotated[str, AfterValidator(_device)]


# Paths stages write: none may overlap data.source.
_OUTPUTS = ("data.prepared_dir", "train.out_dir", "train.samples_dir", "train.metrics_file")
_OUTPUTS += ("eval.metrics_file", "eval.cache_dir")


class Section(BaseModel):
    # No inf/NaN anywhere: `lr_d: .inf` would pass `> 0` and only surface as a diverged run.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, str_max_length=MAX_STR
    )

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_number(cls, v: Any, info: Any) -> Any:  # info: pydantic's ValidationInfo
        """`--set train.steps=true` is a mistake, not one step; strings of digits stay accepted."""
        if isinstance(v, bool) and (what := _NUMBER_KINDS.get(cls.model_fields[info.field_name].annotation)):
            raise ValueError(f"expected {what}, got {v}")
        return v


class DataConfig(Section):
    source: str = "demo"
    resolution: Literal[32, 64, 128, 256] = 32
    channels: Literal[1, 3] = 1
    hflip: bool = False
    max_rejected_fraction: float = Field(0.05, ge=0, le=1)
    min_size: int = Field(16, ge=1, le=100_000)
    # at most 10^9: one such RGB image is 3 GB in memory, per decoding process
    max_pixels: int = Field(50_000_000, gt=0, le=1_000_000_000)
    workers: int = Field(0, ge=0, le=512)
    prepared_dir: str = "data/prepared"

    @property
    def manifest_file(self) -> Path:
        return Path(self.prepared_dir) / "manifest.json"


class ModelConfig(Section):
    # Bounds on sizes that allocate, far above any published setting (BigGAN: z_dim 120, widths 64-96).
    z_dim: int = Field(128, gt=0, le=4096)
    g_ch: int = Field(32, gt=0, le=1024)
    d_ch: int = Field(32, gt=0, le=1024)
    # one block per feature map at most (a 256-px generator has 7); null: model/arch.py's default
    g_attn: list[int] | None = Field(None, max_length=8)
    d_attn: list[int] | None = Field(None, max_length=8)
    conditional: Literal["auto", "yes", "no"] = "auto"
    sn_eps: float = Field(1e-6, gt=0)
    bn_eps: float = Field(1e-5, gt=0)
    cbn_init: Literal["orthogonal", "official"] = "orthogonal"

    @field_validator("g_attn", "d_attn")
    @classmethod
    def _powers_of_two(cls, v: list[int] | None) -> list[int] | None:
        for r in v or []:
            if r < 4 or r > 256 or r & (r - 1):  # 256: the largest output (and no 4,000-digit 2**13000)
                raise ValueError(
                    f"expected feature-map resolutions (powers of two, 4 to 256), got {shown(r)}"
                )
        return v


class TrainConfig(Section):
    # counts of steps and seeds are int64 in torch and numpy: bounded to 64 bits
    steps: int = Field(2000, gt=0, le=INT64_MAX)
    batch_size: int = Field(64, gt=0, le=8192)  # per process; BigGAN used 2048 in all
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)
    n_dis: int = Field(1, gt=0, le=100)
    seed: int = Field(0, ge=0, le=INT64_MAX)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_start: int = Field(0, ge=0, le=INT64_MAX)
    checkpoint_every: int = Field(500, gt=0, le=INT64_MAX)
    sample_every: int = Field(500, gt=0, le=INT64_MAX)
    log_every: int = Field(50, gt=0, le=INT64_MAX)
    device: Device = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # train/precision.py
    channels_last: Literal["auto", "yes", "no"] = "auto"
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    nproc_per_node: int = Field(1, gt=0, le=256)
    nnodes: int = Field(1, gt=0, le=4096)  # several machines: docs/scale-out.md
    launcher: Literal["local", "kubernetes"] = "local"
    rdzv_endpoint: str | None = Field(None, validate_default=True)
    rdzv_id: str = Field("sagan", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    dist_timeout_s: int = Field(1800, ge=10, le=86400)
    # No credentials here: the pods get them from the Secret k8s_secret names.
    k8s_image: str | None = Field(None, validate_default=True)
    k8s_repository: str | None = Field(None, validate_default=True)
    k8s_revision: str | None = None
    k8s_namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    k8s_name: str = Field("sagan-train", pattern=r"^[a-z0-9]([-a-z0-9]{0,42}[a-z0-9])?$")  # + a suffix
    k8s_secret: str = Field("sagan-env", pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
    k8s_timeout_s: float = Field(86400, gt=0)
    k8s_poll_s: float = Field(30, gt=0, le=3600)
    out_dir: str = "models"
    samples_dir: str = "samples"
    metrics_file: str = "metrics/train.csv"
    eval_every: int = Field(0, ge=0, le=INT64_MAX)  # train/periodic_eval.py
    eval_samples: int = Field(250, ge=10, le=1_000_000)
    select_metric: Literal["kid", "fid"] = "kid"
    keep_checkpoints: int = Field(0, ge=0, le=INT64_MAX)
    standing_stats: int = Field(16, ge=0, le=10000)  # train/standing_stats.py
    diffaug: str = ""  # small-data regularisers: docs/training.md
    lecam_weight: float = Field(0.0, ge=0)
    lecam_decay: float = Field(0.99, ge=0, lt=1)

    @property
    def checkpoint(self) -> Path:
        return Path(self.out_dir) / "checkpoint.pt"

    @property
    def best_checkpoint(self) -> Path:
        return Path(self.out_dir) / "best.pt"

    def step_checkpoint(self, step: int) -> Path:
        return Path(self.out_dir) / f"step_{step:06d}.pt"

    @property
    def run_record(self) -> Path:
        return Path(self.out_dir) / "mlflow_run.json"

    @property
    def latest_samples(self) -> Path:
        return Path(self.samples_dir) / "latest.png"

    @property
    def latest_attention(self) -> Path:
        return Path(self.samples_dir) / "attention.png"

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None, info: Any) -> str | None:
        host, _, port = (v or "").rpartition(":")
        if v is not None and not (host and port.isdigit() and 0 < int(port) < 65536 and " " not in v):
            raise ValueError(f"expected host:port, got {shown(v)}")
        if v is None and info.data.get("nnodes", 1) > 1 and info.data.get("launcher") != "kubernetes":
            raise ValueError("train.nnodes > 1 needs the rendezvous host:port (the same on every node)")
        return v

    @field_validator("k8s_image", "k8s_repository")
    @classmethod
    def _k8s(cls, v: str | None, info: Any) -> str | None:
        if v is None and info.data.get("launcher") == "kubernetes":
            raise ValueError(
                "train.launcher kubernetes needs it (the pods' image and the git URL they clone), got null"
            )
        if v is not None and (not v.strip() or any(c.isspace() for c in v)):
            raise ValueError("expected a non-empty value without spaces")
        host = v.split("://", 1)[1].split("/", 1)[0] if v and "://" in v else ""
        if info.field_name == "k8s_repository" and "@" in host:  # user:token@host (never echoed)
            raise ValueError(
                "got a URL with credentials (not shown): the pods get them from train.k8s_secret"
            )
        return v

    @field_validator("diffaug")
    @classmethod
    def _diffaug(cls, v: str) -> str:
        ops = [p.strip() for p in v.split(",") if p.strip()]
        for op in ops:
            if op not in DIFFAUG_OPERATIONS:
                valid = ", ".join(DIFFAUG_OPERATIONS)
                raise ValueError(f"unknown DiffAugment operation {shown(op)}; valid: {valid}")
        return ",".join(ops)


class EvalConfig(Section):
    """`sagan evaluate` (evaluate/protocol.py); every value is recorded in metrics/eval.record.json."""

    # >= 10: the Inception Score's 10 splits; sizes that allocate bounded far above the paper's 50,000
    num_samples: int = Field(1000, ge=10, le=1_000_000)
    batch_size: int = Field(50, gt=0, le=4096)  # 4096 at 299 px is ~4 GiB of input alone
    seed: int = Field(0, ge=0, le=INT64_MAX)
    reference_split: str = "prepared"  # or a pytorch-fid .npz statistics file
    reference_size: int | None = Field(1000, ge=2, le=INT64_MAX)
    inception_weights: str | None = None
    dims: Literal[64, 192, 768, 2048] = 2048
    kid_subsets: int = Field(100, gt=0, le=10_000)
    kid_subset_size: int = Field(500, ge=2, le=10_000)  # KID builds subset_size^2 kernel matrices
    use_ema: bool = True
    device: Device = "auto"
    cache_dir: str = ".sagan/fid-stats"
    metrics_file: str = "metrics/eval.json"  # the scores only: what `dvc metrics show` lists
    checkpoint: Literal["best", "last"] = "best"  # best: models/best.pt, else the last checkpoint

    @property
    def record_file(self) -> Path:
        path = Path(self.metrics_file)
        return path.with_name(f"{path.stem}.record.json")

    @field_validator("reference_split")
    @classmethod
    def _reference(cls, v: str) -> str:
        if v != "prepared" and not v.endswith(".npz"):
            raise ValueError(f"expected 'prepared' or a .npz statistics file, got {shown(v)}")
        return v


class TrackingConfig(Section):
    """MLflow tracking (pipelines/tracking/): where runs, metrics and generators are recorded."""

    enabled: bool = True  # env SAGAN_TRACKING=0 also turns it off
    uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "sagan"
    artifact_location: str | None = None

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        """A password in params.yaml would be versioned by git/DVC and become a flow parameter; the
        message says "got" itself so the error line never echoes the URI."""
        if uri and "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "got a URI with user-info (user:password@); remove it and set MLFLOW_TRACKING_USERNAME/"
                "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the environment instead"
            )
        return uri


# Keys an earlier sagan read, refused with where they live now (a silently ignored old key would
# change where runs are recorded or which checkpoint is registered).
MOVED = {
    "tracking_uri": "tracking.uri",
    "experiment": "tracking.experiment",
    "artifact_location": "tracking.artifact_location",
    "tracking": "tracking.enabled",
    "candidate": "eval.checkpoint",
}


class RegistryConfig(Section):
    """The MLflow model registry (pipelines/registry/): versions and the champion alias."""

    model_name: str = "sagan-demo"
    min_improvement: float = Field(0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        moved = [f"registry.{k} is now {MOVED[k]}" for k in MOVED if isinstance(raw, dict) and k in raw]
        if moved:
            raise ValueError("; ".join(moved) + " (got the old key: rename it)")  # "got": no value echoed
        return raw

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, name: str) -> str:
        """What MLflow refuses at `sagan register`, said before training; no control characters."""
        if not name.strip() or "/" in name or ":" in name or not name.isprintable():
            raise ValueError(f"expected a printable name without '/' or ':', got {name!r}")
        return name


class PipelineConfig(Section):
    """Settings of the Prefect flow (`sagan pipeline run|serve`), not of any stage's result."""

    force: bool = False  # run every stage even when DVC says nothing changed (scheduled runs: retrain)
    train_retries: int = Field(1, ge=0, le=1000)  # a retried train resumes from its checkpoint
    register_retries: int = Field(3, ge=0, le=1000)  # transient MLflow/upload errors
    retry_delay_s: float = Field(2.0, ge=0)  # first retry delay; doubles on each further retry
    train_timeout_s: float | None = Field(None, gt=0)  # null: no limit
    # 6 h: a stage stuck on a server or a filesystem must not hold the project forever
    stage_timeout_s: float | None = Field(21600.0, gt=0)
    lock_timeout_s: float = Field(0.0, ge=0)  # wait this long for a concurrent run's project lock
    dvc: Literal["auto", "yes", "no"] = "auto"  # auto: keep dvc.lock current when dvc.yaml exists
    # TYPE/NAME of a saved Prefect notification block (e.g. slack-webhook/team) told when a flow run
    # completes, fails, crashes or is cancelled (pipelines/flow/notify.py); the block holds the URL.
    notify_block: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_webhook_keys(cls, raw: Any) -> Any:
        """Removed keys (one held the URL: named, never echoed; the message says "got" itself)."""
        for old in ("notify_url", "notify_secret", "notify_timeout_s"):
            if isinstance(raw, dict) and old in raw:
                raise ValueError(
                    f"pipeline.{old} is removed (got it in params); save the webhook as a Prefect "
                    "notification block and set pipeline.notify_block: TYPE/NAME (e.g. slack-webhook/team)"
                )
        return raw

    @field_validator("notify_block")
    @classmethod
    def _a_block_slug(cls, v: str | None) -> str | None:
        """Prefect's block slug; a URL here would be the secret itself (not echoed)."""
        if v is not None and not re.fullmatch(r"[a-z0-9-]{1,100}/[a-z0-9-]{1,100}", v):
            raise ValueError(
                "expected TYPE/NAME of a saved Prefect notification block (e.g. slack-webhook/team), "
                "got something else (not shown: it may be the webhook URL itself)"
            )
        return v


class Params(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _attention_fits(self) -> Params:
        """Each attention block's channels are a multiple of 8 (C/8 query/key channels)."""
        res = self.data.resolution
        for key, width_key, mults in (("g_attn", "g_ch", G_ARCH[res][1]), ("d_attn", "d_ch", D_ARCH[res][0])):
            wanted = getattr(self.model, key)
            wanted = default_attention(res) if wanted is None else wanted
            width = getattr(self.model, width_key)
            for i in sorted(attention_slots(key, res, wanted)):
                ch = mults[i] * width  # the block's output channels: what its attention block gets
                if ch % 8:
                    r = feature_maps(key, res)[i]
                    raise ValueError(
                        f"model.{width_key}: got {width}, which gives the {r}x{r}"
                        f" self-attention block (model.{key}) {ch} channels; it needs "
                        f"a multiple of 8: make model.{width_key} a multiple of {8 // math.gcd(8, mults[i])} "
                        f"or move model.{key}"
                    )
        return self

    @model_validator(mode="after")
    def _outputs_apart_from_the_source(self) -> Params:
        """No output may be, contain or sit inside data.source: prepare replaces data.prepared_dir
        whole, and outputs written among the images would be read back as images."""
        source = self.data.source
        if source == "demo" or source.startswith("torchvision:"):
            return self
        src, flat = Path(source).expanduser().resolve(), self.flat()
        for key in _OUTPUTS:
            value = flat[key]
            out = Path(value).expanduser().resolve()
            inside, contains = out.is_relative_to(src), src.is_relative_to(out)  # both: the same path
            if inside or contains:
                where = "is" if inside and contains else "lies inside" if inside else "contains"
                raise ValueError(
                    f"{key}: got {shown(value)}, which {where} data.source {shown(source)}; outputs and images "
                    f"must not overlap (prepare replaces data.prepared_dir whole): move {key} elsewhere"
                )
        return self

    def flat(self) -> dict[str, Any]:
        """{'train.lr_g': 0.0001, ...}: the shape MLflow params and DVC want."""
        return {f"{s}.{k}": v for s, values in self.model_dump().items() for k, v in values.items()}
