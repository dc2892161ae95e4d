"""The generator's pyfunc: a table a person can write in (class, n, seed, truncation), PNG images out.

Logged as MLflow "models from code" (pipelines.tracking.generator_model): MLflow copies this file
into the model and loads it with torch, pandas, pillow and mlflow only, no sagan. The network is
the nested pt2 torch model in `artifacts["generator"]` (input [z | class id], see LatentToImage);
`model_config` carries z_dim, num_classes and class_names.

    mlflow models serve -m models:/NAME@champion --env-manager local -p 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
         -d '{"dataframe_records": [{"class": "7", "n": 4, "seed": 0, "truncation": 1.0}]}'

answers one row per image: `class` (its name), `class_id`, `seed`, `index` (within the request
row) and `image` (a base64 PNG). Python users keep the tensor interface:
`mlflow.pyfunc.load_model(uri).unwrap_python_model().generate(z, y)`.
"""

from __future__ import annotations

import base64
import io
import math

import mlflow
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

MIN_TRUNCATION = 0.01  # below this, resampling would need thousands of rounds for a near-constant z


def truncated_normal(
    n: int, z_dim: int, truncation: float | None, generator: torch.Generator
) -> torch.Tensor:
    """N(0, 1) noise whose entries beyond ±truncation are drawn again until none is (the truncation
    trick of BigGAN / StudioGAN). None: plain torch.randn, so the same seed gives the same z."""
    z = torch.randn(n, z_dim, generator=generator)
    if truncation is None:
        return z
    if not (
        isinstance(truncation, (int, float)) and math.isfinite(truncation) and truncation >= MIN_TRUNCATION
    ):
        raise ValueError(f"truncation: expected a number >= {MIN_TRUNCATION} (or none), got {truncation}")
    outside = z.abs() > truncation
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=generator)
        outside = z.abs() > truncation
    return z


def png_base64(image: torch.Tensor) -> str:
    """One C x H x W image in [-1, 1] as a base64 PNG, quantized as torchvision's save_image does."""
    from PIL import Image

    pixels = ((image.clamp(-1, 1) + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    im = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _whole(record: dict, key: str, default: int) -> int:
    value = record.get(key)
    if _missing(value):
        return default
    if not float(value).is_integer():
        raise ValueError(f"{key}: expected a whole number, got {value}")
    return int(value)


class GeneratorModel(PythonModel):
    """The EMA generator behind a table interface; `generate` is the raw tensor interface."""

    def load_context(self, context):
        config = context.model_config or {}
        self.z_dim = int(config["z_dim"])
        self.num_classes = int(config.get("num_classes", 0))
        self.class_names = [str(c) for c in config.get("class_names", [])]
        self.module = mlflow.pytorch.load_model(context.artifacts["generator"])

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z: float N x z_dim, y: int N class ids (ignored when unconditional) -> N x C x H x W in [-1, 1]."""
        y = torch.zeros(len(z)) if y is None else y.float()
        with torch.no_grad():
            return self.module(torch.cat([z.float(), y[:, None]], dim=1)).float().clamp(-1, 1)

    def class_id(self, value) -> int:
        """A class given by name (as in the data's class folders) or by id; 0 when unconditional."""
        if not self.num_classes:
            return 0
        if _missing(value):
            raise ValueError(f"class: required for this conditional generator ({self.num_classes} classes)")
        text = str(value).strip()
        if text in self.class_names:
            return self.class_names.index(text)
        if text.lstrip("-").isdigit() and 0 <= int(text) < self.num_classes:
            return int(text)
        raise ValueError(
            f"class: {value!r} is neither a class name {self.class_names} nor an id 0..{self.num_classes - 1}"
        )

    def sample(self, klass, n: int = 1, seed: int = 0, truncation: float | None = None):
        """(class id, images) for one request row."""
        if not 1 <= n <= 1024:
            raise ValueError(f"n: expected 1..1024 images per row, got {n}")
        k = self.class_id(klass)
        z = truncated_normal(n, self.z_dim, truncation, torch.Generator().manual_seed(int(seed)))
        return k, self.generate(z, torch.full((n,), k) if self.num_classes else None)

    # pd.DataFrame in, pd.DataFrame out: the hints tell MLflow to pass the table as it came
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        for record in pd.DataFrame(model_input).to_dict("records"):
            n, seed = _whole(record, "n", 1), _whole(record, "seed", 0)
            t = None if _missing(record.get("truncation")) else float(record["truncation"])
            k, images = self.sample(record.get("class"), n, seed, t)
            name = self.class_names[k] if k < len(self.class_names) else str(k) if self.num_classes else ""
            for i, image in enumerate(images):
                rows.append(
                    {"class": name, "class_id": k, "seed": seed, "index": i, "image": png_base64(image)}
                )
        return pd.DataFrame(rows, columns=["class", "class_id", "seed", "index", "image"])


mlflow.models.set_model(GeneratorModel())
