"""The generator as an MLflow model: one float32 input, pt2 serialization, no sagan needed to load.

MLflow's PyTorch pyfunc passes exactly one float32 array to a model, so the generator is logged
wrapped in LatentToImage, which takes z and the class id packed side by side (`pack_inputs`).
The training checkpoint is uploaded next to it, so the run can be resumed from its artifacts alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sagan_core.config import Params

from .run_record import read_run_record, write_run_record

MODEL_NAME = "generator"  # name of the logged generator model inside the run
CHECKPOINT_DIR = "checkpoint"  # artifact folder holding the full training checkpoint


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
        "input": f"float32 N x {spec.z_dim + 1}: z in columns 0..{spec.z_dim - 1}, class id in the last",
        "output": "float32 N x C x H x W images in [-1, 1]",
    }


def log_generator(client, run_id: str, generator, meta: dict[str, Any]) -> str:
    """Log the (EMA) generator as an MLflow model; returns the LoggedModel id.

    Serialization: `pt2` (torch.export), MLflow 3.17's default, chosen explicitly. Verified for this
    model: in eval mode the spectral-norm parametrizations use their stored u/v (no power
    iteration) and the attention block is plain tensor ops, so the export traces cleanly with a
    dynamic batch dimension and reproduces the eager outputs exactly (tests/test_mlflow.py checks
    pyfunc output == local EMA generator output). pt2 also needs neither pickle (MLflow refuses
    pickle deserialization unless allowed) nor the sagan package at load time.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    spec = generator.spec
    module = _packed_module_class()(generator.cpu().float().eval()).eval()
    rng = np.random.default_rng(0)
    n = 2  # > 1 so the exported batch dimension stays dynamic
    y = rng.integers(0, max(spec.num_classes, 1), n)
    example = pack_inputs(rng.standard_normal((n, spec.z_dim)), y)
    with torch.no_grad():
        out = module(torch.from_numpy(example)).numpy()
    # The LoggedModel is created in the run's experiment explicitly: log_model alone would put it
    # in the fluent "current" experiment (Default, ./mlruns) since no fluent run is active here.
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params=dict(run.data.params),
        tags={"sagan.serialization": "pt2"},
    )
    info = mlflow.pytorch.log_model(
        module,
        name=MODEL_NAME,
        run_id=run_id,
        model_id=logged.model_id,
        # MLflow would reload and run the model here; tests/test_mlflow.py checks pyfunc == eager G
        validate_serving_input=False,
        serialization_format="pt2",
        signature=infer_signature(example, out),
        input_example=example,
        metadata=_metadata(spec, meta),
        # explicit requirements: MLflow's inference would load the model once more in a subprocess
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        step=int(meta["step"]),
    )
    client.set_tag(run_id, "sagan.model_id", info.model_id)
    return info.model_id


def log_checkpoint_and_generator(client, run_id: str, params: Params, checkpoint: Path) -> str:
    """Upload the checkpoint, log its EMA generator, and add model_id and step to the run record.

    Training calls this at its end; `sagan register` calls it when training could not (e.g. the
    artifact store was down then), so both leave the run in the same state. Returns the model id.
    """
    from sagan_core import checkpoint as ckpt_io

    # Load first: a checkpoint that does not load is reported before anything is uploaded.
    generator, meta = ckpt_io.load_generator(checkpoint, use_ema=True, device="cpu")
    client.log_artifact(run_id, str(checkpoint), CHECKPOINT_DIR)
    model_id = log_generator(client, run_id, generator, meta)
    record = read_run_record(params) or {}
    write_run_record(params, record | {"model_id": model_id, "step": int(meta["step"])})
    return model_id
