"""`sagan sample`: images from a generator sagan logged (an MLflow model URI or folder) or a checkpoint.

Loading a model runs nothing from it: its layout, its generator_pyfunc.py (byte-identical to this
sagan's) and its pt2 network are checked as YAML and bytes (`verify_model_dir`); the installed
GeneratorModel reads the network. `--verified-copy DIR` writes the checked files, to serve.
`--class` by name, else by index, with the served model's own rule (GeneratorModel.class_id).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sagan_core.atomic import write_atomic
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError, shown

# No environment files: from an untrusted registry, a package install (serve with --env-manager local)
MODEL_FILES = ("MLmodel", "generator_pyfunc.py", "artifacts/generator/MLmodel", "artifacts/generator/data/model.pt2")


@dataclass
class Sampler:
    generate: Any  # (z: float32 N x z_dim tensor, y: int64 N tensor | None) -> N x C x H x W in [-1, 1]
    z_dim: int
    num_classes: int
    class_names: list[str]
    source: str


def _is_checkpoint(model: str) -> bool:
    """True for a checkpoint file, False for a model folder or MLflow model URI, else a one-line refusal."""
    if (p := Path(model)).is_file() and p.suffix in (".pt", ".pth", ".ckpt"):
        return True
    if "://" not in model and ":/" not in model and not p.is_dir():
        raise ConfigError(f"--model {model}: neither a checkpoint file, a model folder nor an MLflow model URI")
    return False


def load_sampler(model: str, params: Params) -> Sampler:
    from sagan_core.model import checkpoint as ckpt_io

    if model in ("best", "last"):  # train.out_dir's best.pt (else the last) or checkpoint.pt
        model = str(ckpt_io.resolve(params.train, model))
    if _is_checkpoint(model):
        g, meta = ckpt_io.load_generator(model, use_ema=True, device="cpu")
        generate = lambda z, y: g(z, y if g.spec.num_classes else None)  # noqa: E731
        return Sampler(generate, g.spec.z_dim, g.spec.num_classes, list(meta.get("class_names", [])), model)
    from pipelines.tracking.generator_pyfunc import GeneratorModel

    with tempfile.TemporaryDirectory(prefix="sagan-model-") as tmp:
        config = fetch_verified(model, params, Path(tmp) / "model")
        inner = GeneratorModel()  # the installed class: nothing of the model's code runs
        inner.load_context(SimpleNamespace(model_config=config, artifacts={"generator": f"{tmp}/model/artifacts/generator"}))
    return Sampler(inner.generate, inner.z_dim, inner.num_classes, inner.class_names, model)


def fetch_verified(uri: str, params: Params, dst: Path) -> dict[str, Any]:
    """Download the model, check it and copy its checked files to `dst`; returns its model_config."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.tracking.store import call, connect, redact, scrub

    _, tracking_uri = connect(params)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # errors stay one line
    with tempfile.TemporaryDirectory(prefix="sagan-download-") as tmp:
        try:
            local = call(tracking_uri, mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=tmp)
        except MlflowException as e:
            first = scrub(" ".join(str(e).split()))[:300]
            raise ConfigError(f"--model {uri}: cannot load from {redact(tracking_uri)} ({first})") from None
        except OSError as e:
            raise SaganError(f"--model {uri}: download failed ({scrub(str(e))})") from None
        try:
            config = verify_model_dir(Path(local))
        except ValueError as e:
            raise ConfigError(f"--model {uri}: refused, not a generator this sagan logged: {e}") from None
        for name in MODEL_FILES:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            (dst / name).write_bytes((Path(local) / name).read_bytes())
    return config


def _yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path.name} unreadable ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict):
        raise ValueError(f"{path.name} names no flavors")
    return data


def verify_model_dir(local: Path) -> dict[str, Any]:
    """The model_config of a generator model folder sagan logged, or ValueError saying why not."""
    from pipelines.tracking.generator_model import PYFUNC_FILE, file_sha256

    flavors = _yaml(local / "MLmodel")["flavors"]
    pf = flavors.get("python_function")
    if set(flavors) != {"python_function"} or not isinstance(pf, dict):
        raise ValueError(f"flavors {sorted(flavors)}, expected python_function only")
    if pf.get("loader_module") != "mlflow.pyfunc.loaders.code_model" or pf.get("code") or "python_model" in pf:
        raise ValueError("its pyfunc is not sagan's models-from-code pyfunc (a pickled model or extra code paths)")
    code = Path(str(pf.get("model_code_path", ""))).name
    if code != PYFUNC_FILE.name or not (local / code).is_file():
        raise ValueError(f"its code file is {code or 'missing'}, not {PYFUNC_FILE.name}")
    got, ours = file_sha256(local / code), file_sha256()
    if got != ours:
        raise ValueError(f"its {code} (sha256 {got[:12]}) differs from this sagan's (sha256 {ours[:12]}); loading it "
                         "would run that code. Register the model again with this sagan.")
    artifacts = pf.get("artifacts")
    if not isinstance(artifacts, dict) or list(artifacts) != ["generator"]:
        raise ValueError("its artifacts are not exactly the generator network")
    if (artifacts["generator"] or {}).get("path") != "artifacts/generator":
        raise ValueError("its generator artifact is not at artifacts/generator")
    folder = local / "artifacts/generator"
    flavors = _yaml(folder / "MLmodel")["flavors"]
    torch_flavor = flavors.get("pytorch")
    if not isinstance(torch_flavor, dict) or not set(flavors) <= {"pytorch", "python_function"}:
        raise ValueError("its network is not a PyTorch model")
    if torch_flavor.get("code") or torch_flavor.get("extra_files") or torch_flavor.get("model_data") != "data":
        raise ValueError("its network carries code or extra files")
    if not (folder / "data/model.pt2").is_file() or (folder / "data/model.pth").exists():
        raise ValueError("its network is not a pt2 program (torch.export)")
    config = pf.get("config")
    if not isinstance(config, dict):
        raise ValueError("its model_config is missing")
    z_dim, classes, names = config.get("z_dim"), config.get("num_classes", 0), config.get("class_names", [])
    if not (isinstance(z_dim, int) and 1 <= z_dim <= 4096 and isinstance(classes, int) and 0 <= classes <= 100_000):
        raise ValueError("its model_config has no valid z_dim / num_classes")
    if not (isinstance(names, list) and len(names) in (0, classes) and all(isinstance(n, str) for n in names)):
        raise ValueError("its model_config has invalid class_names")
    return config


def verified_copy(params: Params, model: str, dst: Path) -> Path:
    """`sagan sample --verified-copy DIR`: the checked model written to DIR (a new or empty folder)."""
    if model in ("best", "last") or _is_checkpoint(model):
        raise ConfigError("--verified-copy: needs an MLflow model URI or model folder, not a checkpoint")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConfigError(f"--verified-copy {dst}: exists and is not an empty folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sagan-copy-", dir=dst.parent) as tmp:
        fetch_verified(model, params, Path(tmp) / "model")
        os.replace(Path(tmp) / "model", dst)  # over an empty folder too
    return dst


def class_index(value: str, num_classes: int, names: list[str], model: str) -> int:
    """An unknown class: one line naming a few (and one differing only in case)."""
    from pipelines.tracking.generator_pyfunc import GeneratorModel

    if not num_classes:
        raise ConfigError(f"--class: {model} is an unconditional generator")
    rule = GeneratorModel()  # only its class_id: no network is loaded
    rule.num_classes, rule.class_names = num_classes, list(names)
    with contextlib.suppress(ValueError):
        return rule.class_id(value)
    text = str(value).strip()
    close = [c for c in names if c.casefold() == text.casefold()]
    hint = f"; did you mean {shown(close[0], 40)}?" if close else ""
    few = ", ".join(shown(c, 20) for c in names[:8]) + (", …" if len(names) > 8 else "")
    known = f"a class name ({few}) or " if names else ""
    raise ConfigError(f"--class {shown(text, 40)}: no such class; expected {known}an index 0..{num_classes - 1}{hint}")


def sample(params: Params, model: str, n: int, klass: str | None, out: Path | None, out_dir: Path | None,
           seed: int, nrow: int | None, truncation: float | None = None) -> dict[str, Any]:
    import torch

    from pipelines.tracking.generator_pyfunc import BATCH, MAX_IMAGES, MIN_TRUNCATION, SEED_LIMIT
    from pipelines.tracking.generator_pyfunc import truncated_normal as draw_z

    if not 1 <= n <= MAX_IMAGES:
        raise ConfigError(f"--n: expected 1..{MAX_IMAGES} images (the per-call budget), got {n}; for more, run again with another --seed")
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"--seed: expected 0 <= seed < 2**63, got {seed}")
    if truncation is not None and not truncation >= MIN_TRUNCATION:
        raise ConfigError(f"--truncation: expected a number >= {MIN_TRUNCATION}, got {truncation}")
    s = load_sampler(model, params)
    class_id = None if klass is None else class_index(klass, s.num_classes, s.class_names, s.source)
    # all n images, BATCH at a time, from z drawn for all n first (the served model's z)
    z = draw_z(n, s.z_dim, truncation, torch.Generator().manual_seed(seed))
    y = None if not s.num_classes else torch.full((n,), class_id) if class_id is not None else torch.arange(n) % s.num_classes
    with torch.no_grad():
        parts = [s.generate(z[i : i + BATCH], None if y is None else y[i : i + BATCH]) for i in range(0, n, BATCH)]
    images = torch.cat([p.float().clamp(-1, 1) for p in parts])
    written: list[str] = []
    if out_dir is not None:
        from torchvision.utils import save_image

        out_dir.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            path, png = out_dir / f"sample_{i:04d}.png", io.BytesIO()
            save_image((img + 1) / 2, png, format="PNG")
            write_atomic(path, lambda f, png=png: f.write(png.getbuffer()))  # a full disk: one line
            written.append(str(path))
    if out is not None or out_dir is None:
        from sagan_core.model.visualize import save_grid

        out = out or Path("samples/sample.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = nrow or (s.num_classes if s.num_classes and klass is None and n % s.num_classes == 0 else 8)
        save_grid(images, out, rows)
        written.append(str(out))
    name = None if class_id is None else s.class_names[class_id] if class_id < len(s.class_names) else str(class_id)
    return {"model": s.source, "n": n, "class": name, "class_id": class_id, "truncation": truncation,
            "files": written, "shape": list(images.shape)}
