"""The generator as an MLflow model: a table-in, PNG-out pyfunc around a pt2 network, no sagan needed.

The network is G wrapped in LatentToImage, which takes z and the class id packed side by side in
one float32 array (`pack_inputs`: what MLflow's PyTorch flavor passes); the pyfunc around it
(generator_pyfunc.py) turns rows of class / n / seed / truncation into that and images into PNGs.
The training checkpoint is uploaded next to it, so the run can be resumed from its artifacts alone.
The sha256 of generator_pyfunc.py is recorded (metadata and LoggedModel tag `sagan.pyfunc_sha256`);
sagan loads a model only when the model's copy of that file hashes to the installed one's
(pipelines/registry/sampling.py `verify_model_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.tracking.run_record import read_run_record, write_run_record
from sagan_core.config import Params

MODEL_NAME = "generator"  # the logged generators' name stem: generator-step-001600 (model_name)
CHECKPOINT_DIR = "checkpoint"  # artifact folder holding the full training checkpoint
PYFUNC_FILE = Path(__file__).with_name("generator_pyfunc.py")  # the code every logged model carries
CODE_HASH_TAG = "sagan.pyfunc_sha256"


def file_sha256(path: Path = PYFUNC_FILE) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_name(step: int) -> str:
    """A LoggedModel's name: the run's models list tells its generators apart by training step."""
    return f"{MODEL_NAME}-step-{int(step):06d}"


def _packed_module_class():
    # A factory so that this module imports torch only when a generator is actually logged.
    import torch

    class LatentToImage(torch.nn.Module):
        """G as one-input module: x = [z (z_dim columns) | class id (1 column)] -> images in [-1, 1].

        Class ids are small integers, exact in float32; the last column is ignored by an
        unconditional generator.
        """

        def __init__(self, g):
            super().__init__()
            self.g = g
            self.z_dim = g.spec.z_dim
            self.conditional = g.spec.num_classes > 0

        def forward(self, x):
            z = x[:, : self.z_dim]
            y = x[:, self.z_dim].round().long() if self.conditional else None
            return self.g(z, y)

    return LatentToImage


def pack_inputs(z, y=None):
    """numpy float32 [z | y] as the logged model expects (see LatentToImage)."""
    import numpy as np

    z = np.asarray(z, dtype=np.float32)
    y = np.zeros(len(z), dtype=np.float32) if y is None else np.asarray(y).astype(np.float32)
    return np.concatenate([z, y[:, None]], axis=1)


def _metadata(spec, meta: dict[str, Any]) -> dict[str, Any]:
    """What `sagan sample` needs to drive the model without the checkpoint."""
    return {
        "z_dim": spec.z_dim,
        "num_classes": spec.num_classes,
        "class_names": list(meta.get("class_names", [])),
        "resolution": spec.resolution,
        "channels": spec.channels,
        "step": int(meta["step"]),
        "pyfunc_sha256": file_sha256(),
        "input": "table: class (name or id), n, seed, truncation (optional)",
        "output": "table: one row per image: class, class_id, seed, index, image (base64 PNG)",
        "tensor_interface": "unwrap_python_model().generate(z: N x z_dim, y: N class ids) -> N x C x H x W",
    }


def export_generator(generator, folder: Path) -> Path:
    """G as the network inside the logged model: pt2 (torch.export) under `folder/generator`.

    MLflow 3.17's default serialization, chosen explicitly: in eval mode the spectral-norm
    parametrizations use their stored u/v and attention is plain tensor ops, so the export traces
    cleanly with a dynamic batch and reproduces the eager outputs exactly (tests/test_mlflow.py).
    Call it where no training step runs at the same time (the training thread, or after training):
    while it traces, torch.export turns oneDNN, NNPACK and cuDNN off for the whole process
    (torch/export/_trace.py, `_ignore_backend_decomps`), so a step running meanwhile would be slower
    and compute other numbers.
    """
    import mlflow
    import torch

    spec = generator.spec
    module = _packed_module_class()(generator.cpu().float().eval()).eval()
    torch_dir = Path(folder) / "generator"
    z = torch.randn(2, spec.z_dim, generator=torch.Generator().manual_seed(0))  # not the global RNG
    example = pack_inputs(z.numpy(), [0, max(spec.num_classes - 1, 0)])
    # Requirements given, not inferred: MLflow infers them by loading the model in a new Python
    # process, which took a whole core from training for ~10 s after every best checkpoint.
    mlflow.pytorch.save_model(
        module,
        str(torch_dir),
        serialization_format="pt2",
        input_example=example,
        pip_requirements=_requirements(),
    )
    return torch_dir


def log_exported(client, run_id: str, torch_dir: Path, spec, meta: dict[str, Any]) -> str:
    """Log the exported network (`export_generator`) as the run's generator model; returns the
    LoggedModel id.

    The model is a pyfunc (generator_pyfunc.py, "models from code": MLflow's documented way to log
    a custom PythonModel without pickling it) taking a table of class / n / seed / truncation and
    answering PNG images, so `mlflow models serve` serves something a client can call by hand.
    Neither it nor the network needs pickle or sagan.
    """
    import mlflow
    from mlflow.models import Model

    config = _metadata(spec, meta)
    # The LoggedModel is created in the run's experiment explicitly: log_model alone would put it
    # in the fluent "current" experiment (Default, ./mlruns) since no fluent run is active here.
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=model_name(meta["step"]),
        source_run_id=run_id,
        params=_key_params(run.data.params),
        tags={
            "sagan.serialization": "pt2",
            "sagan.interface": "table: class, n, seed, truncation",
            CODE_HASH_TAG: file_sha256(),
        },
    )
    # MLflow checks the input example by loading the model back, which draws a download progress
    # bar on stderr even under --quiet; its documented switch turns that bar off
    with env_set("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
        # Model.log is the public API behind every flavor's log_model; unlike pyfunc.log_model it
        # takes run_id, so the model joins this run without a fluent run being opened around it.
        info = Model.log(
            artifact_path=None,
            name=model_name(meta["step"]),
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(PYFUNC_FILE),
            artifacts={"generator": str(torch_dir)},
            # MLflow also logs model_config as the run's params, which cannot change: the step
            # (another for each best checkpoint) stays in `metadata` only
            model_config={k: v for k, v in config.items() if k != "step"},
            signature=_table_signature(),
            input_example=_table_example(spec, meta),
            metadata=config,
            pip_requirements=_requirements(),  # as in export_generator: no inference subprocess
            step=int(meta["step"]),
        )
    client.set_tag(run_id, "sagan.model_id", info.model_id)
    return info.model_id


def log_generator(client, run_id: str, generator, meta: dict[str, Any]) -> str:
    """Export and log the (EMA) generator (`export_generator` + `log_exported`); returns the
    LoggedModel id."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return log_exported(client, run_id, export_generator(generator, Path(tmp)), generator.spec, meta)


@contextlib.contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _key_params(params: dict[str, str]) -> dict[str, str]:
    """The params that say what this generator is (architecture, data, training schedule)."""
    keep = ("data.source", "data.resolution", "data.channels", "model.", "train.steps", "train.batch_size")
    keep += ("train.lr_g", "train.lr_d", "train.n_dis", "train.ema_decay", "train.seed")
    return {k: v for k, v in params.items() if k.startswith(keep)}


def _table_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = Schema(
        [
            # Any: JSON gives 7 as int64 and a row without it as NaN; MLflow converts neither to
            # long nor double, so the pyfunc checks the values itself (GeneratorModel.predict).
            ColSpec(AnyType(), "class", required=False),  # a class name or id; unconditional: omit
            ColSpec(AnyType(), "n", required=False),  # images for this row (default 1)
            ColSpec(AnyType(), "seed", required=False),  # noise seed (default 0)
            ColSpec(AnyType(), "truncation", required=False),  # resample |z| > t (default: none)
        ]
    )
    outputs = Schema(
        [ColSpec("string", "class"), ColSpec("long", "class_id"), ColSpec("long", "seed")]
        + [ColSpec("long", "index"), ColSpec("string", "image")]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def _table_example(spec, meta: dict[str, Any]):
    import pandas as pd

    names = list(meta.get("class_names", []))
    klass = (names[0] if names else "0") if spec.num_classes else None
    return pd.DataFrame([{"class": klass, "n": 2, "seed": 0, "truncation": 1.0}])


def _requirements() -> list[str]:
    import importlib.metadata as md

    return [f"{name}=={md.version(name).split('+')[0]}" for name in ("torch", "mlflow", "pandas", "pillow")]


def log_checkpoint_and_generator(client, run_id: str, params: Params, checkpoint: Path) -> str:
    """Upload the checkpoint, log its EMA generator, and add model_id and step to the run record.

    Training calls this at its end; `sagan register` calls it when training could not (e.g. the
    artifact store was down then), so both leave the run in the same state. Returns the model id.
    When the in-training evaluation of the last step made it the best, its LoggedModel (same EMA
    weights, same standing statistics) is reused rather than exported and logged a second time.
    """
    from sagan_core.model import checkpoint as ckpt_io

    # Load first: a checkpoint that does not load is reported before anything is uploaded.
    generator, meta = ckpt_io.load_generator(checkpoint, use_ema=True, device="cpu")
    client.log_artifact(run_id, str(checkpoint), CHECKPOINT_DIR)
    record = read_run_record(params) or {}
    best = record.get("best") or {}
    if best.get("model_id") and best.get("step") == int(meta["step"]):
        model_id = best["model_id"]  # the last step was the best: that generator is logged already
    else:
        model_id = log_generator(client, run_id, generator, meta)
    write_run_record(params, record | {"model_id": model_id, "step": int(meta["step"])})
    return model_id
