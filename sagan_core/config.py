"""params.yaml, validated: one pydantic model per section, one `Params` object that flows everywhere.

Unknown keys and bad values are errors naming the key path (`train.lr_d: expected a number > 0,
got -1`). Reading the file and `--set` overrides live in params_file.py.

Longer than 300 lines: every params key with its bounds and its one-line meaning is here, section by
section, so that a key is documented where it is validated; splitting sections across files would
only scatter the one reference for params.yaml.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sagan_core.errors import shown
from sagan_core.model.arch import D_ARCH, G_ARCH, attention_slots, default_attention, feature_maps

# DiffAugment's operations (sagan_core/train/diffaug.py implements them; named here so that params
# validation needs no torch).
DIFFAUG_OPERATIONS = ("color", "translation", "cutout")


def diffaug_ops(policy: str) -> tuple[str, ...]:
    """`"color, translation"` -> ("color", "translation"); "" -> (). ValueError names the valid ones."""
    ops = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [op for op in ops if op not in DIFFAUG_OPERATIONS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment operation {shown(unknown[0])}; valid: {', '.join(DIFFAUG_OPERATIONS)}"
        )
    return ops


# Field types whose values pydantic's lax mode would also take as a boolean (true -> 1).
_NUMBER_KINDS = {int: "an integer", int | None: "an integer", float: "a number", float | None: "a number"}


INT64_MAX = 2**63 - 1  # seeds beyond it overflow inside torch ("Overflow when unpacking long long")
# Every string is at most this long (paths: Linux's PATH_MAX); a 1 MiB data.source is a mistake.
MAX_STR = 4096


class Section(BaseModel):
    # No inf/NaN anywhere: `lr_d: .inf` would pass `> 0` and only surface as a diverged run.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, str_max_length=MAX_STR
    )

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_number(cls, v: Any, info: Any) -> Any:  # info: pydantic's ValidationInfo
        """`--set train.steps=true` is a mistake, not one step; strings of digits stay accepted."""
        what = _NUMBER_KINDS.get(cls.model_fields[info.field_name].annotation) if info.field_name else None
        if isinstance(v, bool) and what:
            raise ValueError(f"expected {what}, got {v}")
        return v


class DataConfig(Section):
    source: str = "demo"  # "demo", a folder, an archive, or "torchvision:NAME"
    resolution: Literal[32, 64, 128, 256] = 32
    channels: Literal[1, 3] = 1
    hflip: bool = False  # random horizontal flips while training (off for digits: a flipped 7 is no 7)
    max_rejected_fraction: float = Field(0.05, ge=0, le=1)  # more rejected files than this fails prepare
    min_size: int = Field(16, ge=1, le=100_000)  # images with a shorter short side are rejected
    # Images with more pixels are rejected before decoding (decompression bombs; ~7000 x 7000).
    # (at most 1,000,000,000: one such RGB image is 3 GB in memory, per decoding process)
    max_pixels: int = Field(50_000_000, gt=0, le=1_000_000_000)
    workers: int = Field(0, ge=0, le=512)  # decoding processes for prepare; 0 = one per available core
    prepared_dir: str = "data/prepared"

    @property
    def manifest_file(self) -> Path:
        return Path(self.prepared_dir) / "manifest.json"


class ModelConfig(Section):
    # Upper bounds on sizes that allocate (z_dim=100000000 is a MemoryError or minutes of swapping),
    # far above any published setting (BigGAN: z_dim 120, width multipliers 64-96).
    z_dim: int = Field(128, gt=0, le=4096)
    g_ch: int = Field(32, gt=0, le=1024)  # generator width multiplier (the paper/BigGAN use 64 at 128px)
    d_ch: int = Field(32, gt=0, le=1024)
    # Feature-map resolutions with a self-attention block (one each, after the first block that
    # outputs it; sagan_core/model/arch.py); null = the paper's best placement for the output resolution
    # (16 for 32-px models, 32 for 64/128/256-px models).
    # At most one per feature map: a handful (8; a 256-px generator has 7 feature-map sizes).
    g_attn: list[int] | None = Field(None, max_length=8)
    d_attn: list[int] | None = Field(None, max_length=8)
    conditional: Literal["auto", "yes", "no"] = "auto"  # auto: conditional when the data has labels
    sn_eps: float = Field(1e-6, gt=0)
    bn_eps: float = Field(1e-5, gt=0)
    # Conditional-BN gains/biases: orthogonal = BigGAN-PyTorch (gain 1 + orthogonal rows, bias
    # orthogonal rows; classes differ from step 0); official = the official SAGAN code (gain 1, bias 0).
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
    # generator steps, each with `n_dis` discriminator steps. Every count of steps is bounded to 64 bits
    # (torch and numpy hold it as an int64: `Overflow when unpacking long long` otherwise).
    steps: int = Field(2000, gt=0, le=INT64_MAX)
    batch_size: int = Field(64, gt=0, le=8192)  # per process (DDP: per rank); BigGAN used 2048 in all
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)  # the paper says 0.9; the official code used 0.999
    n_dis: int = Field(1, gt=0, le=100)  # D steps per G step (the paper: 1; WGAN-GP: 5)
    seed: int = Field(0, ge=0, le=INT64_MAX)  # torch and numpy seeds are 64-bit
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_start: int = Field(0, ge=0, le=INT64_MAX)  # before this step the EMA copy just tracks G
    checkpoint_every: int = Field(500, gt=0, le=INT64_MAX)
    sample_every: int = Field(500, gt=0, le=INT64_MAX)
    log_every: int = Field(50, gt=0, le=INT64_MAX)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 units (AMX/AVX512-BF16), else fp32
    # (sagan_core/train/precision.py); spectral norm and FID/IS/KID stay fp32 in every case
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto", "yes", "no"] = "auto"  # auto: yes on CUDA and CPU (faster on both)
    compile: bool = False  # torch.compile the generator and discriminator
    # torch.compile mode; reduce-overhead = CUDA graphs on CUDA (no effect on CPU)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    nproc_per_node: int = Field(1, gt=0, le=256)  # >1: the train stage relaunches itself under torchrun
    # Several machines (docs/scale-out.md): the same `sagan train` on each of `nnodes` machines; they
    # meet at rdzv_endpoint (host:port on one of them, torchrun's c10d rendezvous; needed if nnodes > 1)
    nnodes: int = Field(1, gt=0, le=4096)
    # local: train on this machine (one node of nnodes when nnodes > 1). kubernetes: the flow's train
    # task submits an Indexed Job of nnodes pods (pipelines/flow/kubernetes_train.py; rdzv_endpoint/rdzv_id
    # are set for it), waits for it and fetches the final checkpoint from MLflow; `sagan train` refuses.
    launcher: Literal["local", "kubernetes"] = "local"
    rdzv_endpoint: str | None = Field(None, validate_default=True)
    rdzv_id: str = Field("sagan", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # two jobs at one endpoint: two ids
    dist_timeout_s: int = Field(1800, ge=10, le=86400)  # how long a rank waits for a lost one, then fails
    # train.launcher kubernetes (docs/scale-out.md). No credentials here: the pods get them from the
    # Secret k8s_secret names, and the URL of k8s_repository may not carry any.
    k8s_image: str | None = Field(None, validate_default=True)  # the pods' image (Dockerfile); required
    k8s_repository: str | None = Field(None, validate_default=True)  # git URL the pods clone; required
    k8s_revision: str | None = None  # git revision the pods check out; null: this checkout's HEAD commit
    k8s_namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    k8s_name: str = Field("sagan-train", pattern=r"^[a-z0-9]([-a-z0-9]{0,42}[a-z0-9])?$")  # + a suffix
    k8s_secret: str = Field("sagan-env", pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")  # its NAME
    k8s_timeout_s: float = Field(86400, gt=0)  # the flow waits this long for the Job, then deletes it
    k8s_poll_s: float = Field(30, gt=0, le=3600)  # between two looks at the Job's status
    out_dir: str = "models"
    samples_dir: str = "samples"
    metrics_file: str = "metrics/train.csv"
    # In-training evaluation (sagan_core/train/periodic_eval.py): KID + FID of the EMA generator every
    # eval_every steps and at the end, against `sagan evaluate`'s cached reference statistics.
    eval_every: int = Field(0, ge=0, le=INT64_MAX)  # 0 = off
    # generated images per in-training evaluation (bounded like eval.num_samples)
    eval_samples: int = Field(250, ge=10, le=1_000_000)
    select_metric: Literal["kid", "fid"] = "kid"  # what models/best.pt minimises (KID: unbiased)
    # periodic checkpoints kept as step_NNNNNN.pt (0: none)
    keep_checkpoints: int = Field(0, ge=0, le=INT64_MAX)
    # Batches of fresh z/labels that recompute the EMA generator's BatchNorm statistics before it is
    # sampled, evaluated or saved (sagan_core/train/standing_stats.py); 0 = G's running statistics.
    standing_stats: int = Field(16, ge=0, le=10000)
    # Small-data regularisers (docs/training.md), both off by default. DiffAugment (Zhao et al. 2020):
    # comma-separated operations of sagan_core/train/diffaug.py, "" = off. LeCam (Tseng et al. 2021):
    # weight of the regulariser in D's loss (0 = off) and the decay of its anchors' moving averages.
    diffaug: str = ""
    lecam_weight: float = Field(0.0, ge=0)
    lecam_decay: float = Field(0.99, ge=0, lt=1)

    # Paths that follow from the params, spelled once.
    @property
    def checkpoint(self) -> Path:
        """The resumable checkpoint, rewritten every `checkpoint_every` steps and at the end."""
        return Path(self.out_dir) / "checkpoint.pt"

    @property
    def best_checkpoint(self) -> Path:
        """The checkpoint with the best in-training `select_metric` so far (train.eval_every > 0)."""
        return Path(self.out_dir) / "best.pt"

    def step_checkpoint(self, step: int) -> Path:
        """A periodic checkpoint kept by train.keep_checkpoints."""
        return Path(self.out_dir) / f"step_{step:06d}.pt"

    @property
    def run_record(self) -> Path:
        """The MLflow run id of this training run (pipelines.tracking), next to the checkpoint."""
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

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {shown(v)}")
        return v

    @field_validator("diffaug")
    @classmethod
    def _diffaug(cls, v: str) -> str:
        return ",".join(diffaug_ops(v))


class EvalConfig(Section):
    """`sagan evaluate` (sagan_core/evaluate/protocol.py). The defaults are a quick protocol (1,000
    samples against a 1,000-image reference); the CPU demo (params.yaml) uses 250 of each, the GPU
    presets num_samples 10000 (paper: 50000), reference_size null and kid_subset_size 1000. Every
    value is recorded in metrics/eval.record.json."""

    # Generated images (>= 10: the Inception Score's 10 splits). Upper bounds on every size that
    # allocates, far above the paper's 50,000: 10^9 would fail after hours, not at validation.
    num_samples: int = Field(1000, ge=10, le=1_000_000)
    # Inception batch; bounds GPU memory / RAM, not the results (4096 at 299 px is ~4 GiB of input alone)
    batch_size: int = Field(50, gt=0, le=4096)
    seed: int = Field(
        0, ge=0, le=INT64_MAX
    )  # noise seed of the samples (class-balanced labels when conditional)
    # "prepared": the prepared dataset's statistics (cached); or a pytorch-fid .npz file made elsewhere
    reference_split: str = "prepared"
    # a fixed seeded subset of the dataset; null = all
    reference_size: int | None = Field(1000, ge=2, le=INT64_MAX)
    inception_weights: str | None = None  # explicit path; default: the torch hub cache (TORCH_HOME)
    dims: Literal[64, 192, 768, 2048] = 2048  # Inception block for FID/KID (2048 = pool3, the standard)
    kid_subsets: int = Field(100, gt=0, le=10_000)
    # standard: 1000 (needs more than 1000 samples for a std); KID builds subset_size^2 kernel matrices
    kid_subset_size: int = Field(500, ge=2, le=10_000)
    use_ema: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cache_dir: str = ".sagan/fid-stats"
    metrics_file: str = "metrics/eval.json"  # the scores only (numbers: what `dvc metrics show` lists)

    @property
    def record_file(self) -> Path:
        """The evaluation's whole record next to metrics_file: scores, protocol, provenance, timings."""
        path = Path(self.metrics_file)
        return path.with_name(f"{path.stem}.record.json")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return TrainConfig._device(v)

    @field_validator("reference_split")
    @classmethod
    def _reference(cls, v: str) -> str:
        if v != "prepared" and not v.endswith(".npz"):
            raise ValueError(f"expected 'prepared' or a .npz statistics file, got {shown(v)}")
        return v


class RegistryConfig(Section):
    """MLflow tracking and registry (pipelines/tracking/, pipelines/registry/register.py)."""

    model_name: str = "sagan-demo"  # registered model that `sagan register` adds versions to
    min_improvement: float = Field(0.0, ge=0)  # FID must beat the champion's by more than this
    experiment: str = "sagan"
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    # Where a newly created experiment stores artifacts: null = ./mlartifacts with the local store,
    # the server's --artifacts-destination with a tracking server; or e.g. s3://bucket/prefix.
    artifact_location: str | None = None
    tracking: bool = True  # the CLI stages log to MLflow (env SAGAN_TRACKING=0 also turns it off)
    # Which checkpoint evaluate/register/the flow use: best (models/best.pt; the last checkpoint when
    # in-training evaluation wrote none) or last (models/checkpoint.pt).
    candidate: Literal["best", "last"] = "best"

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, name: str) -> str:
        """What MLflow refuses at `sagan register` (after training), said before anything runs; and
        no control characters: the name is one line of every card, command and log line naming it."""
        if not name.strip() or "/" in name or ":" in name or not name.isprintable():
            raise ValueError(f"expected a printable name without '/' or ':', got {name!r}")
        return name

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        """A password in params.yaml would be versioned by git/DVC and become a flow parameter.

        The message says "got" itself so the error line never echoes the URI (and its password)."""
        if uri and "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "got a URI with user-info (user:password@); remove it and set MLFLOW_TRACKING_USERNAME/"
                "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the environment instead"
            )
        return uri


class PipelineConfig(Section):
    """Settings of the Prefect flow (`sagan pipeline run|serve`), not of any stage's result."""

    force: bool = False  # run every stage even when DVC says nothing changed (scheduled runs: retrain)
    train_retries: int = Field(1, ge=0, le=1000)  # a retried train resumes from its checkpoint
    register_retries: int = Field(3, ge=0, le=1000)  # transient MLflow/upload errors
    retry_delay_s: float = Field(2.0, ge=0)  # first retry delay; doubles on each further retry
    train_timeout_s: float | None = Field(None, gt=0)  # null: no limit
    # prepare, evaluate, register (each, in the flow); null: no limit. 6 h by default: a stage stuck on
    # a server or a filesystem must not hold the project (and refuse every later scheduled run) forever.
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
    registry: RegistryConfig = RegistryConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _attention_fits(self) -> Params:
        """Every g_attn/d_attn resolution is a feature map the network has (ValueError names which)."""
        res = self.data.resolution
        for key, width_key, mults in (("g_attn", "g_ch", G_ARCH[res][1]), ("d_attn", "d_ch", D_ARCH[res][0])):
            wanted = getattr(self.model, key)
            wanted = default_attention(res) if wanted is None else wanted
            width = getattr(self.model, width_key)
            for i in sorted(attention_slots(key, res, wanted)):
                ch = mults[i] * width  # the block's output channels: what its attention block gets
                if ch % 8:  # C/8 query/key channels (layers.SelfAttention), caught here, not at train time
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
        """No output may be, contain or sit inside data.source (a folder or an archive): prepare
        replaces data.prepared_dir whole (`data.prepared_dir=data` with images in data/raw would
        delete them), and outputs written among the images would be read back as images."""
        source = self.data.source
        if source == "demo" or source.startswith("torchvision:"):
            return self
        src = Path(source).expanduser().resolve()
        outputs = {
            "data.prepared_dir": self.data.prepared_dir,
            "train.out_dir": self.train.out_dir,
            "train.samples_dir": self.train.samples_dir,
            "train.metrics_file": self.train.metrics_file,
            "eval.metrics_file": self.eval.metrics_file,
            "eval.cache_dir": self.eval.cache_dir,
        }
        for key, value in outputs.items():
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
        out: dict[str, Any] = {}
        for section, values in self.model_dump().items():
            for k, v in values.items():
                out[f"{section}.{k}"] = v
        return out
