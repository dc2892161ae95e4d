"""MLflow metric names, each with a section prefix (MLflow 3 groups a run's charts by the part before
the first `/`): `train/` losses and throughput, `attention/` the gates γ, `train_eval/` the
in-training evaluation, `eval/` every number of eval.json. train.csv and eval.json keep their own
names (DVC reads them).
"""

from __future__ import annotations

TRAIN_EVAL_KEYS = ("kid", "kid_std", "fid")  # the in-training evaluation's columns of train.csv
LR_KEYS = ("lr_g", "lr_d")


def train_metric(key: str) -> str:
    section = "train_eval" if key in TRAIN_EVAL_KEYS else "attention" if key.startswith("gamma_") else "train"
    return f"{section}/{key}"


def lr_changes(seen: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """The learning rates in `metrics` that differ from `seen` (updated in place): a constant rate
    is a param, and as a metric a flat line MLflow's axis labels 0; one changes only on a resume."""
    changed = {k: float(metrics[k]) for k in LR_KEYS if k in metrics and float(metrics[k]) != seen.get(k)}
    seen.update(changed)
    return changed
