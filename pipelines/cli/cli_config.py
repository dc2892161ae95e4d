"""`sagan config` (the validated, resolved params as YAML) and `sagan init --preset` (a preset becomes
the project's params.yaml, which is what `dvc repro` and the other stages read by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipelines.cli.app import ParamsOpt, SetOpt, app, load
from sagan_core.errors import ConfigError
from sagan_core.params_file import load_params

# The presets ship beside the code in the repository (configs/*.yaml), not inside the package.
PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"


@app.command()
def config(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Print the validated params (file + --set overrides + defaults) as YAML; nothing runs."""
    p = load(params, set_)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False), nl=False)


def preset_path(name: str) -> Path:
    """A preset name (configs/NAME.yaml) or a path to a params file."""
    path = PRESETS_DIR / f"{name}.yaml"
    if path.is_file():
        return path
    if Path(name).is_file():
        return Path(name)
    known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))) or "none"
    raise ConfigError(f"--preset {name}: no such preset (known: {known}) and no such file")


@app.command()
def init(
    preset: Annotated[str, typer.Option("--preset", help="Preset name (configs/NAME.yaml) or a file.")],
    out: Annotated[Path, typer.Option("--out", help="Params file to write.")] = Path("params.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing params file.")] = False,
) -> None:
    """Make a preset the project's params.yaml (comments kept), so `dvc repro` and `sagan` use it."""
    src = preset_path(preset)
    load_params(src)  # a preset that does not validate is never written
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; add --force to replace it with the {preset} preset")
    from sagan_core.atomic import write_atomic

    text = src.read_bytes()
    write_atomic(out, lambda f: f.write(text))
    typer.echo(f"wrote {out} from {src}")
