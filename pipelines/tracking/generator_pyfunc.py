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

A request asks for at most MAX_IMAGES images, all rows together; they are generated BATCH at a
time and generation stops once the scoring server's timeout (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)
has passed. Every refusal is an MlflowException with a one-line message (INVALID_PARAMETER_VALUE:
HTTP 400), never a stack trace. The network is read with MLflow's pickle deserialization off: a
pt2 program, checked pickle-free by MLflow before torch loads it.

sagan itself never runs a registry's copy of this file: `sagan sample` and `sagan sample
--verified-copy` (what to serve) accept a model only when its copy is byte-identical to the
installed one (pipelines/registry/sampling.py).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import math
import numbers
import os
import time

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MIN_TRUNCATION = 0.01  # below this, resampling would need thousands of rounds for a near-constant z
MAX_IMAGES = 1024  # images per request, all rows together (and per `sagan sample` call)
BATCH = 64  # images through the network at once: memory stays one batch, whatever n is
SEED_LIMIT = 2**63  # seeds are whole numbers 0 <= seed < 2**63 (what torch.Generator takes as signed)

log = logging.getLogger(__name__)


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
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ValueError(f"{key}: expected a whole number, got {str(value)[:40]!r}")
    if isinstance(value, numbers.Integral):
        return int(value)  # exact, however large (JSON's big integers arrive as Python ints)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise ValueError(f"{key}: expected a whole number, got {str(value)[:40]}")
    return int(number)


def check_seed(seed: int, name: str = "seed") -> int:
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name}: expected a whole number 0 <= {name} < 2**63, got {str(seed)[:40]}")
    return seed


def check_truncation(value, name: str = "truncation") -> float | None:
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number >= {MIN_TRUNCATION} (or none), got {str(value)[:40]!r}")
    if not (math.isfinite(value) and value >= MIN_TRUNCATION):
        raise ValueError(f"{name}: expected a number >= {MIN_TRUNCATION} (or none), got {value}")
    return float(value)


@contextlib.contextmanager
def pickle_off():
    """MLflow's pickle deserialization off while the network loads (MLflow then checks a pt2
    archive is pickle-free before torch reads it; a pickled model is refused)."""
    before = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
        else:
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = before


def _deadline() -> float | None:
    """When the scoring server has given up on the request (it answers 504 but lets the work run)."""
    timeout = os.environ.get("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT")
    with contextlib.suppress(ValueError):
        return time.monotonic() + float(timeout) if timeout else None
    return None


class GeneratorModel(PythonModel):
    """The EMA generator behind a table interface; `generate` is the raw tensor interface."""

    def load_context(self, context):
        config = context.model_config or {}
        self.z_dim = int(config["z_dim"])
        self.num_classes = int(config.get("num_classes", 0))
        self.class_names = [str(c) for c in config.get("class_names", [])]
        with pickle_off():
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
        if text.isdigit() and 0 <= int(text) < self.num_classes:
            return int(text)
        shown = self.class_names if len(self.class_names) <= 20 else f"{self.class_names[:20]}..."
        raise ValueError(
            f"class: {text[:40]!r} is neither a class name {shown} nor an id 0..{self.num_classes - 1}"
        )

    def requests(self, model_input: pd.DataFrame) -> list[tuple[int, int, int, float | None]]:
        """(class id, n, seed, truncation) per row, every row checked and the total within MAX_IMAGES
        before any image is made."""
        rows, total = [], 0
        for record in pd.DataFrame(model_input).to_dict("records"):
            n = _whole(record, "n", 1)
            if n < 1:
                raise ValueError(f"n: expected a positive number of images, got {n}")
            total += n
            if total > MAX_IMAGES:
                raise ValueError(
                    f"images: the request asks for more than the budget of {MAX_IMAGES} images per request "
                    f"(the sum of n over its rows); send fewer rows or smaller n"
                )
            seed = check_seed(_whole(record, "seed", 0))
            rows.append(
                (self.class_id(record.get("class")), n, seed, check_truncation(record.get("truncation")))
            )
        return rows

    def images(self, k: int, n: int, seed: int, truncation: float | None, deadline: float | None = None):
        """The row's images, BATCH at a time (the same z as one batch: z is drawn for the row first)."""
        z = truncated_normal(n, self.z_dim, truncation, torch.Generator().manual_seed(seed))
        y = torch.full((n,), k) if self.num_classes else None
        for start in range(0, n, BATCH):
            if deadline is not None and time.monotonic() > deadline:
                raise MlflowException(
                    "timed out: the server's request timeout has passed", error_code=INTERNAL_ERROR
                )
            yield from self.generate(
                z[start : start + BATCH], None if y is None else y[start : start + BATCH]
            )

    # pd.DataFrame in, pd.DataFrame out: the hints tell MLflow to pass the table as it came
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        deadline, out = _deadline(), []
        try:
            for k, n, seed, t in self.requests(model_input):
                name = (
                    self.class_names[k] if k < len(self.class_names) else str(k) if self.num_classes else ""
                )
                for i, image in enumerate(self.images(k, n, seed, t, deadline)):
                    out.append(
                        {"class": name, "class_id": k, "seed": seed, "index": i, "image": png_base64(image)}
                    )
        except MlflowException:
            raise
        except (ValueError, TypeError, OverflowError) as e:
            raise MlflowException(" ".join(str(e).split()), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception as e:  # logged with its traceback here, answered in one line
            log.exception("generation failed")
            raise MlflowException(
                f"generation failed ({type(e).__name__})", error_code=INTERNAL_ERROR
            ) from None
        return pd.DataFrame(out, columns=["class", "class_id", "seed", "index", "image"])


mlflow.models.set_model(GeneratorModel())
