"""The Callback interface and the trainer's own recorders: the metrics CSV and the console."""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from sagan_core.atomic import write_all, write_atomic
from sagan_core.errors import WriteError

if TYPE_CHECKING:
    from sagan_core.train.state import TrainState

log = logging.getLogger("sagan.train")


class Callback:
    """Hooks for recorders that sagan_core must not import (MLflow lives in pipelines/)."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_image(self, step: int, key: str, path: Path) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    # after every step, with the training state (modules, optimizers): probes and fault injection
    def on_step_end(self, step: int, state: TrainState) -> None: ...
    # models/best.pt was just written: its in-training scores (kid, kid_std, fid) at `step`
    def on_best(self, step: int, path: Path, scores: dict[str, float]) -> None: ...
    def on_end(self, summary: dict[str, Any]) -> None: ...


def _gammas(metrics: dict[str, float]) -> str:
    return " ".join(f"{k[6:]}={v:.3f}" for k, v in metrics.items() if k.startswith("gamma"))


def _scores(metrics: dict[str, float]) -> str:
    return f"  KID {metrics['kid']:.5f}  FID {metrics['fid']:.2f}" if "kid" in metrics else ""


def step_line(step: int, steps: int, metrics: dict[str, float]) -> str:
    return (
        f"step {step}/{steps}  loss_d {metrics['loss_d']:.4f}  loss_g {metrics['loss_g']:.4f}  "
        f"{metrics['img_per_s']:.0f} img/s  γ {_gammas(metrics)}{_scores(metrics)}"
    )


class MetricsCSV(Callback):
    """One row per logging step; on resume the rows after the resumed step go (atomically). With a
    `kid` field, `<stem>_eval.csv` keeps only the evaluation steps, for dvc.yaml's plots."""

    def __init__(self, path: str | Path, fields: list[str], scores: bool = True):
        self.path, self.fields, self.file = Path(path), fields, None
        self.scores: MetricsCSV | None = None
        if scores and "kid" in fields:
            scores_path = self.path.with_name(f"{self.path.stem}_eval.csv")
            self.scores = MetricsCSV(scores_path, ["step", "kid", "kid_std", "fid"], scores=False)

    def on_start(self, info: dict[str, Any]) -> None:
        start, kept = info["start_step"], []
        if start > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        write_atomic(self.path, lambda f: f.write(text.getvalue().encode()))
        # unbuffered: a refused row is cut at once, nothing left to fail again at close
        self.file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open for the whole run
        if self.scores:
            self.scores.on_start(info)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        row = io.StringIO(newline="")
        writer = csv.DictWriter(row, fieldnames=self.fields, extrasaction="ignore")
        writer.writerow({"step": step, **{k: f"{v:.6g}" for k, v in metrics.items()}})
        end = os.fstat(self.file.fileno()).st_size
        try:
            write_all(self.file, row.getvalue().encode(), self.path)
        except WriteError as e:
            self.file.truncate(end)  # the part of the row that fit goes (freeing space works when full)
            raise WriteError(self.path, e.error, f"the rows before step {step} are kept") from None
        if self.scores and "kid" in metrics:
            self.scores.on_metrics(step, metrics)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.scores:
            self.scores.close()


class ConsoleProgress(Callback):
    def __init__(self, steps: int):
        self.steps, self.bar, self.interactive = steps, None, False

    def on_start(self, info: dict[str, Any]) -> None:
        self.interactive = sys.stderr.isatty()
        self.bar = tqdm(total=self.steps, initial=info["start_step"], desc="train", unit="step",
                        disable=not self.interactive, dynamic_ncols=True)

    def on_step_end(self, step: int, state: TrainState) -> None:
        self.bar.update(1)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if not self.interactive:
            log.info("%s", step_line(step, self.steps, metrics))
            return
        self.bar.set_postfix_str(
            f"D={metrics['loss_d']:.3f} G={metrics['loss_g']:.3f} {metrics['img_per_s']:.0f} img/s "
            f"γ {_gammas(metrics)}{_scores(metrics)}",
            refresh=False,
        )

    def close(self) -> None:
        if self.bar:
            self.bar.close()


class StepMeter:
    """Per-step [loss_d, loss_g, D(x), D(G(z))] summed on the device: one host sync per log interval."""

    def __init__(self, device: torch.device, step: int, images_per_step: int, clock=time.perf_counter):
        self.acc, self.count, self.images_per_step = torch.zeros(4, device=device), 0, images_per_step
        self.clock, self.t, self.step = clock, clock(), step

    def add(self, values: torch.Tensor) -> None:
        self.acc += values
        self.count += 1

    def read(self, step: int) -> tuple[dict[str, float], float]:
        vals = (self.acc / self.count).tolist()
        now = self.clock()
        rate = (step - self.step) * self.images_per_step / (now - self.t)
        self.acc.zero_()
        self.count, self.t, self.step = 0, now, step
        return dict(zip(["loss_d", "loss_g", "d_real", "d_fake"], vals)), rate

    def restart_clock(self) -> None:
        self.t = self.clock()
