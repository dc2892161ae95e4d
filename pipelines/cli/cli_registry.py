"""`sagan register` and `sagan sample`: MLflow registry and sampling from registered models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.app import ParamsOpt, QuietOpt, SetOpt, app, load


@app.command()
def register(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Register the run's EMA generator in the MLflow registry; `champion` moves only on a better FID."""
    from pipelines import stages

    r = stages.register(load(params, set_))
    again = "" if r.created else " (already registered; no new version)"
    typer.echo(f"registered {r.model_name} v{r.version}{again}: {r.decision} - {r.reason}")
    typer.echo(f"model: {r.model_uri}  run: {r.run_id}  tracking: {r.tracking_uri}")


@app.command()
def sample(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="MLflow model URI (models:/NAME@champion, runs:/..., models:/m-...), a checkpoint, "
            "or best / last (train.out_dir's best.pt, else the last checkpoint / checkpoint.pt).",
        ),
    ],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of images.")] = 64,
    klass: Annotated[
        int | None, typer.Option("--class", help="Class id for every image (default: cycle through classes).")
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
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Sample images from a registered generator or a local checkpoint."""
    from pipelines.registry.sampling import sample as run_sample

    r = run_sample(load(params, set_), model, n, klass, out, out_dir, seed, nrow, truncation)
    shown = r["files"] if len(r["files"]) <= 3 else [r["files"][0], "...", r["files"][-1]]
    typer.echo(f"sampled {r['n']} images from {r['model']}: {', '.join(shown)}")
