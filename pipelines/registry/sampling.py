"""`sagan sample`: images from a registered/logged generator (any MLflow model URI) or a checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError

log = logging.getLogger("sagan.sample")


@dataclass
class Sampler:
    generate: Any  # (z: float32 N x z_dim tensor, y: int64 N tensor | None) -> N x C x H x W in [-1, 1]
    z_dim: int
    num_classes: int
    class_names: list[str]
    source: str


def _is_checkpoint(model: str) -> bool:
    p = Path(model)
    return p.is_file() and p.suffix in (".pt", ".pth", ".ckpt")


def load_sampler(model: str, params: Params) -> Sampler:
    if model in ("best", "last"):  # train.out_dir's best.pt (else the last) or checkpoint.pt
        from sagan_core.model.checkpoint import resolve

        model = str(resolve(params.train, model))
    if _is_checkpoint(model):
        from sagan_core.model import checkpoint as ckpt_io

        g, meta = ckpt_io.load_generator(model, use_ema=True, device="cpu")
        return Sampler(
            lambda z, y: g(z, y if g.spec.num_classes else None),
            g.spec.z_dim,
            g.spec.num_classes,
            list(meta.get("class_names", [])),
            model,
        )
    if "://" not in model and ":/" not in model and not Path(model).is_dir():
        raise ConfigError(
            f"--model {model}: neither a checkpoint file, a model folder nor an MLflow model URI"
        )
    return _load_mlflow(model, params)


def _load_mlflow(uri: str, params: Params) -> Sampler:
    from mlflow.exceptions import MlflowException

    from pipelines.tracking.store import call, connect, redact, scrub

    _, tracking_uri = connect(params)
    import mlflow

    try:
        local = call(tracking_uri, mlflow.artifacts.download_artifacts, artifact_uri=uri)
        model = mlflow.pyfunc.load_model(local)
    except MlflowException as e:
        first = scrub(" ".join(str(e).split()))[:300]
        raise ConfigError(f"--model {uri}: cannot load from {redact(tracking_uri)} ({first})") from None
    except OSError as e:
        raise SaganError(f"--model {uri}: download failed ({scrub(str(e))})") from None
    try:
        inner = model.unwrap_python_model()
    except MlflowException:  # not a PythonModel (e.g. a bare pytorch-flavor model)
        inner = None
    if hasattr(inner, "generate"):  # our table pyfunc: its tensor interface
        return Sampler(inner.generate, inner.z_dim, inner.num_classes, inner.class_names, uri)
    return _packed_torch_model(uri, local, model.metadata)


def _packed_torch_model(uri: str, local: str, mlmodel) -> Sampler:
    """A bare torch model taking [z | class id] (generators logged before the table pyfunc)."""
    import mlflow
    import torch

    meta = mlmodel.metadata or {}
    if "z_dim" in meta:
        z_dim, num_classes = int(meta["z_dim"]), int(meta.get("num_classes", 0))
    else:  # a model logged elsewhere: the signature's input width is z_dim + 1
        shape = mlmodel.signature.inputs.inputs[0].shape if mlmodel.signature else None
        if not shape:
            raise ConfigError(f"--model {uri}: not a sagan generator (no metadata, no tensor signature)")
        z_dim, num_classes = int(shape[-1]) - 1, 0
    module = mlflow.pytorch.load_model(local)

    def generate(z, y):
        y = torch.zeros(len(z)) if y is None else y.float()
        return module(torch.cat([z.float(), y[:, None]], dim=1))

    return Sampler(generate, z_dim, num_classes, list(meta.get("class_names", [])), uri)


def sample(
    params: Params,
    model: str,
    n: int,
    klass: int | None,
    out: Path | None,
    out_dir: Path | None,
    seed: int,
    nrow: int | None,
    truncation: float | None = None,
) -> dict[str, Any]:
    import torch

    from pipelines.tracking.generator_pyfunc import MIN_TRUNCATION, truncated_normal

    if n < 1:
        raise ConfigError(f"--n: expected a positive number of images, got {n}")
    if truncation is not None and not truncation >= MIN_TRUNCATION:
        raise ConfigError(f"--truncation: expected a number >= {MIN_TRUNCATION}, got {truncation}")
    s = load_sampler(model, params)
    if klass is not None:
        if not s.num_classes:
            raise ConfigError(f"--class: {model} is an unconditional generator")
        if not 0 <= klass < s.num_classes:
            raise ConfigError(f"--class: expected 0..{s.num_classes - 1}, got {klass}")
    gen = torch.Generator().manual_seed(seed)
    z = truncated_normal(n, s.z_dim, truncation, gen)  # the same z as the served model's for a seed
    y = None
    if s.num_classes:
        y = torch.full((n,), klass) if klass is not None else torch.arange(n) % s.num_classes
    with torch.no_grad():
        images = s.generate(z, y).float().clamp(-1, 1)
    written: list[str] = []
    if out_dir is not None:
        from torchvision.utils import save_image

        out_dir.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            path = out_dir / f"sample_{i:04d}.png"
            save_image((img + 1) / 2, path)
            written.append(str(path))
    if out is not None or out_dir is None:
        from sagan_core.model.visualize import save_grid

        out = out or Path("samples/sample.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = nrow or (s.num_classes if s.num_classes and klass is None and n % s.num_classes == 0 else 8)
        save_grid(images, out, rows)
        written.append(str(out))
    shape = list(images.shape)
    return {
        "model": s.source,
        "n": n,
        "class": klass,
        "truncation": truncation,
        "files": written,
        "shape": shape,
    }
