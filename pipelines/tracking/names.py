"""MLflow metric names: every metric carries a section prefix, so the run page groups its charts.

MLflow 3 groups a run's charts into sections by the part of the name before the first `/`. The
trainer's own names (metrics/train.csv columns) and eval.json's keys stay as they are (DVC reads
them); only what goes to MLflow is renamed here, in one place, for every writer and reader:

- `train/...`: losses, D outputs, throughput (`train/loss_d`, `train/img_per_s`, ...) and the
  learning rates when they change (`train/lr_g`; see `lr_changes`);
- `attention/...`: the attention gates γ (`attention/gamma_g0`, ...);
- `train_eval/...`: the in-training evaluation (`train_eval/kid`, `train_eval/fid`, few samples,
  a trend for choosing the best checkpoint);
- `eval/...`: the final evaluation protocol (`eval/fid`, `eval/kid_mean`, `eval/is_mean`, ... : every
  numeric key of eval.json, whatever the evaluation adds later), one value at the evaluated step.
"""

from __future__ import annotations

TRAIN_EVAL_KEYS = ("kid", "kid_std", "fid")  # the in-training evaluation's columns of train.csv
LR_KEYS = ("lr_g", "lr_d")


def train_metric(key: str) -> str:
    """The MLflow name of a train.csv column / on_metrics key."""
    if key in TRAIN_EVAL_KEYS:
        return f"train_eval/{key}"
    if key.startswith("gamma_"):
        return f"attention/{key}"
    return f"train/{key}"


def eval_metric(key: str) -> str:
    """The MLflow name of an eval.json key."""
    return f"eval/{key}"


def lr_changes(seen: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """The learning rates in `metrics` that differ from `seen` (updated in place).

    Learning rates are hyperparameters: MLflow users read them in the params (`train.lr_g`), and a
    metric that never changes draws a flat line MLflow's axis labels as 0 (1e-4 rounds away). sagan
    has no schedule; a rate changes only when a run is resumed with other values. So a rate is
    logged as a metric only when it differs from the one before (`seen` starts at the run's params):
    a run that never changed its rates has no lr chart, one that did shows each new value at the step
    it took effect.
    """
    changed = {k: float(metrics[k]) for k in LR_KEYS if k in metrics and float(metrics[k]) != seen.get(k)}
    seen.update(changed)
    return changed
