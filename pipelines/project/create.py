"""`sagan init DIR`: params.yaml (a preset, `--data`, registry names from the folder's name), dvc.yaml,
sagan-version.yaml, .gitignore, .dvcignore, README.md, git + DVC. Existing files are kept but
params.yaml with --force (as params.yaml.bak); a user mistake is one ConfigError."""

from __future__ import annotations

import functools
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pipelines.project import catalog, version
from pipelines.quoting import md, md_code
from sagan_core.atomic import write_atomic
from sagan_core.config import Params
from sagan_core.data.archives import is_archive
from sagan_core.errors import ConfigError, SaganError
from sagan_core.params_file import parse_params_text, read_params_text, validate

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
FILES = (("gitignore", ".gitignore"), ("dvcignore", ".dvcignore"), ("README.md", "README.md"))


def data_source(data: Path, project: Path) -> str:
    """--data as data.source: project-relative when inside the project (it can move), else absolute."""
    if not data.exists():
        raise ConfigError(f"--data {data}: no such file or folder")
    if not (data.is_dir() or (data.is_file() and is_archive(data))):
        raise ConfigError(f"--data {data}: expected a folder of images or a .tar/.tar.gz/.zip archive")
    full, root = data.resolve(), project.resolve()
    return full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)


def registry_name(project: Path) -> str:
    """The folder's name as one plain word MLflow accepts (`my letters!` -> `my-letters`), or `sagan`."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", project.resolve().name).strip("-._")[:100]
    return name or "sagan"


def params_text(preset: Path, source: str | None, name: str | None = None) -> tuple[str, Params]:
    """The preset's text (comments kept) with data.source and the registry names set when given."""
    # A path may be anyone's file: bounded and alias-free (params_file.py) before ruamel reads it.
    text = read_params_text(preset, "--preset")
    raw = parse_params_text(text, preset)
    if not isinstance(raw, dict):
        raise ConfigError(f"--preset {preset}: expected a mapping of sections")
    sets = {"data.source": source, "registry.model_name": name, "tracking.experiment": name}
    if sets := {k: v for k, v in sets.items() if v is not None}:
        text = set_values(text, sets)
        raw = parse_params_text(text, preset)
    return text, validate(raw)  # a preset that does not validate is never written


def set_values(text: str, values: dict[str, Any]) -> str:
    """YAML `text` with each `key.path` set to its value, comments and key order kept (ruamel round
    trip), each value written so that sagan's PyYAML (YAML 1.1) and DVC's ruamel (1.2) both read it back
    as itself: PyYAML's text for it (`2.0e-04`) loaded round-trip; a string ruamel reads otherwise quoted."""
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    rt = YAML()
    rt.preserve_quotes = True
    null = "tag:yaml.org,2002:null"  # `null` stays `null` (ruamel would write an empty value)
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar(null, "null"))
    data = rt.load(text) or {}
    for key, value in values.items():
        *parents, last = key.split(".")
        node = functools.reduce(lambda n, part: n.setdefault(part, {}), parents, data)
        if isinstance(value, str) and YAML(typ="safe").load(yaml.safe_dump(value)) != value:
            node[last] = DoubleQuotedScalarString(value)
        else:
            node[last] = rt.load(yaml.safe_dump(value, default_flow_style=True))
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()


def dvc_yaml(source: str) -> str:
    """The template's lines marked #PATH# (the check stage, the data dependency) or #OTHER#."""
    path = source != "demo" and not source.startswith("torchvision:")
    keep, drop = ("#PATH#", "#OTHER#") if path else ("#OTHER#", "#PATH#")
    lines = (TEMPLATES / "dvc.yaml.template").read_text().splitlines(keepends=True)
    text = "".join(line.removeprefix(keep) for line in lines if not line.startswith(drop))
    return text.replace("{source}", source)


def _write(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit code {r.returncode}"]
        raise SaganError(f"{' '.join(cmd[-2:])} in {cwd}: {last[0]}")


def create(project: Path, preset: str | None, data: Path | None, force: bool) -> list[str]:
    """Returns what was done, one line each."""
    if project.exists() and not project.is_dir():
        raise ConfigError(f"{project}: exists and is not a folder")
    given = catalog.preset_path(preset) if preset is not None else None  # mistakes before any look
    source = data_source(data, project) if data is not None else None
    seen = catalog.look_at(data) if data is not None else None
    chosen = preset if preset is not None else catalog.pick(seen)[0]
    src = given or catalog.preset_path(chosen)
    # A packaged preset's registry names are placeholders: the project's own are its folder's name
    # (`sagan init letters` registers `letters`). A params file of one's own keeps its names.
    name = registry_name(project) if src.parent == catalog.PRESETS_DIR else None
    text, params = params_text(src, source, name)
    source = source or str(params.data.source)
    project.mkdir(parents=True, exist_ok=True)
    said = catalog.line(seen, chosen, params, picked=preset is None)
    done: list[str] = [said] if said else []
    target = project / "params.yaml"
    if target.exists():
        if not force:
            raise ConfigError(f"{target} exists: add --force to replace it with the preset (the old file is kept as params.yaml.bak)")
        backup = target.with_name("params.yaml.bak")
        backup.write_bytes(target.read_bytes())
        done.append(f"kept the old params.yaml as {backup}")
    _write(target, text)
    done.append(f"wrote {target}")
    if not (project / "dvc.yaml").exists():
        _write(project / "dvc.yaml", dvc_yaml(source))
        version.write(project)
        done.append(f"wrote dvc.yaml and {version.VERSION_FILE} (sagan {version.installed()})")
    else:
        done.append("kept the existing dvc.yaml: make sure prepare depends on data.source")
    for template, name in FILES:
        if (project / name).exists():
            continue
        body = (TEMPLATES / template).read_text()  # Markdown: the names shown as themselves (quoting.py)
        body = body.replace("{name}", md(project.resolve().name)).replace("{preset}", md_code(chosen))
        _write(project / name, body.replace("{source}", md_code(source)))
        done.append(f"wrote {name}")
    if not (project / ".git").exists():
        _run(["git", "init", "-q"], project)
        done.append("git init")
    if not (project / ".dvc").is_dir():
        _run([sys.executable, "-m", "dvc", "init", "-q"], project)
        done.append("dvc init")
    return done


def upgrade(project: Path) -> str:
    before = version.recorded(project)
    if before is None:
        raise ConfigError(f"{project}: no {version.VERSION_FILE} (a project made by `sagan init`) to upgrade")
    now = version.write(project)
    said = f"already sagan {now}" if before == now else f"sagan {before} -> {now}; `dvc status` shows every stage changed"
    return f"{project / version.VERSION_FILE}: {said}"
