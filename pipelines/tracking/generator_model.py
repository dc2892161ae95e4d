"""The one place a generator becomes an MLflow model, when it is registered: generator_pyfunc.py
(logged as code) around G exported with torch.export; no sagan or pickle needed to serve it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path
from typing import Any

PYFUNC_FILE = Path(__file__).with_name("generator_pyfunc.py")
KEY_PARAMS = ("data.source", "data.resolution", "data.channels", "model.", "train.steps", "train.batch_size")
KEY_PARAMS += ("train.lr_g", "train.lr_d", "train.n_dis", "train.ema_decay", "train.seed")


def file_sha256(path: Path = PYFUNC_FILE) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _latent_to_image(g):
    """G as one-input module, as MLflow's PyTorch flavor calls it: x = [z | class id] -> images."""
    import torch

    class LatentToImage(torch.nn.Module):
        def __init__(self, g):
            super().__init__()
            self.g, self.z_dim, self.conditional = g, g.spec.z_dim, g.spec.num_classes > 0

        def forward(self, x):  # class ids are small integers, exact in float32
            return self.g(x[:, : self.z_dim], x[:, self.z_dim].round().long() if self.conditional else None)

    return LatentToImage(g.cpu().float().eval()).eval()


def log_generator(client, run_id: str, generator, meta: dict[str, Any]) -> str:
    """Log the (EMA) generator (checkpoint metadata `meta`) into run `run_id`; returns the model id."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.models import Model, ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    spec, step, names = generator.spec, int(meta["step"]), list(meta.get("class_names", []))
    config = {"z_dim": spec.z_dim, "num_classes": spec.num_classes, "class_names": names}
    config |= {"resolution": spec.resolution, "channels": spec.channels, "pyfunc_sha256": file_sha256()}
    run, name = client.get_run(run_id), f"generator-step-{step:06d}"
    # in the run's experiment: log_model alone would use the fluent "current" one
    logged = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, tags={"sagan.pyfunc_sha256": file_sha256()},
        params={k: v for k, v in run.data.params.items() if k.startswith(KEY_PARAMS)},
    )
    # Requirements given: inferring them loads the model in a new Python process (~10 s)
    requirements = [f"{p}=={importlib.metadata.version(p).split('+')[0]}" for p in ("torch", "mlflow", "pandas", "pillow")]
    # MLflow checks the input example by loading the model back, drawing a progress bar on stderr
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    z = torch.randn(2, spec.z_dim, generator=torch.Generator().manual_seed(0))  # not the global RNG
    example = torch.cat([z, torch.tensor([[0.0], [max(spec.num_classes - 1, 0)]])], dim=1).numpy()
    # Any: JSON gives 7 as int64 and a missing value as NaN; the pyfunc checks the values itself
    inputs = Schema([ColSpec(AnyType(), k, required=False) for k in ("class", "n", "seed", "truncation")])
    out = {"class": "string", "class_id": "long", "seed": "long", "index": "long", "image": "string"}
    signature = ModelSignature(inputs=inputs, outputs=Schema([ColSpec(t, k) for k, t in out.items()]))
    with tempfile.TemporaryDirectory() as tmp:
        # torch.export turns oneDNN/cuDNN off process-wide while it traces: never beside a training step
        mlflow.pytorch.save_model(_latent_to_image(generator), f"{tmp}/generator", serialization_format="pt2",
                                  input_example=example, pip_requirements=requirements)
        klass = (names[0] if names else "0") if spec.num_classes else None
        info = Model.log(  # public API behind every log_model; joins run_id without a fluent run
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
            python_model=str(PYFUNC_FILE), artifacts={"generator": f"{tmp}/generator"},
            model_config=config,  # also logged as the run's params, which cannot change: no step
            metadata=config | {"step": step}, signature=signature, pip_requirements=requirements,
            input_example=pd.DataFrame([{"class": klass, "n": 2, "seed": 0, "truncation": 1.0}]), step=step,
        )
    return info.model_id
