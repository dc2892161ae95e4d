"""`sagan prepare|train|evaluate|fid|register|sample|config|init` and their shared options."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipelines.fetch_checkpoint import fetch
from pipelines.launch import distributed, run_torchrun, supervised
from pipelines.lock import stage_lock
from pipelines.project import catalog, version
from pipelines.quoting import sh
from sagan_core.config import Params
from sagan_core.errors import ConfigError
from sagan_core.params_file import load_params

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Params file.", show_default=True)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-S", help="Override a param, e.g. --set train.steps=200 (repeatable).", metavar="KEY=VALUE"
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")]


def load_stage(params: Path, overrides: list[str] | None) -> Params:
    """load_params, refusing a sagan other than the project's recorded one (dvc.lock would be wrong)."""
    version.check(".")
    return load_params(params, overrides)


def prepare(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    check_only: Annotated[
        bool,
        typer.Option(
            "--check-only",
            help="Only check data.source (nothing DVC would block on) and the project lock: the "
            "`check` stage `dvc repro` runs first.",
        ),
    ] = False,
) -> None:
    """Turn data.source into the prepared dataset (data.prepared_dir)."""
    from pipelines import stages

    p = load_stage(params, set_)
    with stage_lock(p.pipeline.lock_timeout_s):  # one sagan run per project (pipelines/lock.py)
        if check_only:
            stages.check_source(p, record=True)
        else:  # the source is checked as it is listed (sagan_core/data/sources.py)
            stages.prepare(p, progress=not quiet)


def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from models/checkpoint.pt.")] = False,
    resume_from: Annotated[
        str | None,
        typer.Option(
            "--resume-from",
            help="Continue from a checkpoint file, runs:/<run_id> or models:/<name>@<alias> "
            "(bit-exact, into the same MLflow run).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train SAGAN on the prepared dataset; writes the checkpoint, sample grids and attention figures."""
    p = load_stage(params, set_)
    if p.train.launcher == "kubernetes":  # submitting and awaiting the Job is the flow's (scale-out.md)
        raise ConfigError(
            "train.launcher: kubernetes is run by `sagan pipeline run`; `sagan train` trains on this "
            "machine: --set train.launcher=local"
        )
    with stage_lock(p.pipeline.lock_timeout_s):  # held by the launcher for its DDP ranks
        if resume_from:
            fetch(p, resume_from)
            resume = True
        if distributed(p) and "WORLD_SIZE" not in os.environ:  # not yet under torchrun
            with supervised():  # a kill -9 of `sagan train` takes torchrun and its ranks with it
                code, _ = run_torchrun(p, resume, quiet, log=logging.getLogger("sagan").info)
            raise typer.Exit(code)
        from pipelines import stages

        stages.train(p, resume=resume, progress=not quiet)


def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="best, last or a checkpoint path [default: eval.checkpoint]; best is "
            "train.out_dir/best.pt (the last checkpoint when in-training evaluation wrote none).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """FID, Inception Score and KID of the (EMA) generator; writes eval.metrics_file."""
    from pipelines import stages

    p = load_stage(params, set_)
    with stage_lock(p.pipeline.lock_timeout_s):
        result = stages.evaluate(p, progress=not quiet, checkpoint=checkpoint)
    typer.echo(
        json.dumps({k: getattr(result, k) for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std")})
    )


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
    """FID between two folders / .npz files as `python -m pytorch_fid A B` computes it (to ~1e-6 relative)."""
    from sagan_core.device import resolve_device
    from sagan_core.evaluate import fid as F
    from sagan_core.evaluate import frechet
    from sagan_core.evaluate import inception as inc

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
    net = inc.load_net(w, dims, False, dev, fast=True) if needs_net else None  # once for both folders
    sa = F.stats_of_path(a, dims, batch_size, dev, w, progress=not quiet, net=net)
    if save_stats:
        F.save_stats(b if b.suffix == ".npz" else b.with_name(b.name + ".npz"), sa)
        typer.echo(f"saved statistics of {a} to {b}")
        return
    sb = F.stats_of_path(b, dims, batch_size, dev, w, progress=not quiet, net=net)
    typer.echo(f"FID: {frechet.frechet_distance(sa, sb)!r}")


def register(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Register the run's EMA generator in the MLflow registry; `champion` moves only on a better FID."""
    from pipelines import stages

    p = load_params(params, set_)
    with stage_lock(p.pipeline.lock_timeout_s):
        r = stages.register(p)
    again = "" if r.created else " (already registered; no new version)"
    typer.echo(f"registered {r.model_name} v{r.version}{again}: {r.decision} - {r.reason}")
    typer.echo(f"model: {r.model_uri}  run: {r.run_id}  tracking: {r.tracking_uri}")


def sample(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="MLflow model URI (models:/NAME@champion, runs:/..., models:/m-...), a checkpoint, "
            "or best / last (train.out_dir's best.pt, else the last checkpoint / checkpoint.pt). "
            "A model is used only if this sagan logged it (same pyfunc code, sha256; pt2 weights).",
        ),
    ],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images (1..1024, made 64 at a time).")] = 64,
    klass: Annotated[
        str | None,
        typer.Option(
            "--class",
            help="Class of every image, by name (a class folder: --class C) or index (--class 2); a name "
            "is tried first, so with folders 0..9 --class 3 is the folder 3 (default: cycle through classes).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Grid PNG (default samples/sample.png).")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Write one PNG per image here.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the latent noise.")] = 0,
    nrow: Annotated[int | None, typer.Option("--nrow", help="Images per grid row.")] = None,
    truncation: Annotated[
        float | None,
        typer.Option(
            "--truncation", help="Truncation trick: redraw noise entries with |z| > t (default: none)."
        ),
    ] = None,
    verified_copy: Annotated[
        Path | None,
        typer.Option(
            "--verified-copy",
            help="Check --model as for sampling and write only its checked files to this new folder, "
            "to serve with `mlflow models serve -m DIR --env-manager local`; samples nothing.",
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Sample images from a registered generator or a local checkpoint."""
    from pipelines.registry.sampling import sample as run_sample

    if verified_copy is not None:
        from pipelines.registry.sampling import verified_copy as copy_model

        folder = copy_model(load_params(params, set_), model, verified_copy)
        typer.echo(f"{model}: a generator this sagan logged; checked copy in {folder}")
        return
    r = run_sample(load_params(params, set_), model, n, klass, out, out_dir, seed, nrow, truncation)
    shown = r["files"] if len(r["files"]) <= 3 else [r["files"][0], "...", r["files"][-1]]
    typer.echo(f"sampled {r['n']} images from {r['model']}: {', '.join(shown)}")


def config(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Print the validated params (file + --set overrides + defaults) as YAML; nothing runs."""
    p = load_params(params, set_)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False), nl=False)


def init(
    project: Annotated[Path, typer.Argument(help="Project folder to create (or `.`: this folder).")],
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help=f"Preset: {', '.join(catalog.preset_names())} (sagan's presets/NAME.yaml) or a params "
            f"file. Default: picked from a look at --data's images, else {catalog.DEFAULT_PRESET}.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Your images: a folder or a .tar/.tar.gz/.zip archive.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing params.yaml (kept as params.yaml.bak).")
    ] = False,
    upgrade: Annotated[
        bool, typer.Option("--upgrade", help="Only record the installed sagan version (after an upgrade).")
    ] = False,
) -> None:
    """Start a project on your own images: params.yaml from a preset, dvc.yaml, git + DVC, README.md.

    With --data, a sample of the images is looked at: one line says their sizes, channels and
    classes and the preset picked, or warns when the given --preset does not fit them. Existing
    files are kept; params.yaml is replaced only with --force (the old one kept as params.yaml.bak)."""
    from pipelines.project import create

    if upgrade:
        typer.echo(create.upgrade(project))
        return
    for line in create.create(project, preset, data, force):
        typer.echo(line, err=line.startswith("warning:"))
    typer.echo(f"next: cd {sh(project)} && sagan pipeline run   (README.md lists the project's commands)")
