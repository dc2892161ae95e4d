"""`sagan evaluate` and `sagan fid`: FID / IS / KID evaluation (see sagan_core.evaluate, sagan_core.fid)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ParamsOpt, QuietOpt, SetOpt, app, load
from sagan_core.errors import ConfigError


@app.command()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="best, last or a checkpoint path [default: registry.candidate]; best is "
            "train.out_dir/best.pt (the last checkpoint when in-training evaluation wrote none).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """FID, Inception Score and KID of the (EMA) generator; writes eval.metrics_file."""
    from pipelines import stages

    result = stages.evaluate(load(params, set_), progress=not quiet, checkpoint=checkpoint)
    typer.echo(
        json.dumps({k: getattr(result, k) for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std")})
    )


@app.command()
def fid(
    paths: Annotated[list[Path], typer.Argument(help="Two image folders and/or .npz statistics files.")],
    save_stats: Annotated[
        bool, typer.Option("--save-stats", help="Write the statistics of folder A to the .npz file B.")
    ] = False,
    dims: Annotated[int, typer.Option("--dims", help="Inception features: 64, 192, 768 or 2048.")] = 2048,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per Inception batch.")] = 50,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    weights: Annotated[
        Path | None, typer.Option("--weights", help="Inception weights file [default: torch hub cache].")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """FID between two folders / .npz files, exactly as `python -m pytorch_fid A B` computes it."""
    from sagan_core.device import resolve_device
    from sagan_core.evaluate import fid as F
    from sagan_core.evaluate import inception as inc
    from sagan_core.evaluate import metrics

    if len(paths) != 2:
        raise ConfigError(f"expected two paths (A B), got {len(paths)}")
    if dims not in (64, 192, 768, 2048):
        raise ConfigError(f"--dims: expected one of 64, 192, 768, 2048, got {dims}")
    a, b = paths
    dev = resolve_device(device, "--device")
    if save_stats:
        if not a.is_dir():
            raise ConfigError(f"{a}: --save-stats needs a folder of images as the first path")
        if b.exists():
            raise ConfigError(f"{b}: already exists")
    # Weights are only needed when a folder must go through Inception.
    needs_net = any(not (p.is_file() and p.suffix == ".npz") for p in paths[: 1 if save_stats else 2])
    w = inc.resolve_weights(str(weights) if weights else None) if needs_net else None
    sa = F.stats_of_path(a, dims, batch_size, dev, w, progress=not quiet)
    if save_stats:
        F.save_stats(b if b.suffix == ".npz" else b.with_name(b.name + ".npz"), sa)
        typer.echo(f"saved statistics of {a} to {b}")
        return
    sb = F.stats_of_path(b, dims, batch_size, dev, w, progress=not quiet)
    typer.echo(f"FID: {metrics.frechet_distance(sa, sb)!r}")
