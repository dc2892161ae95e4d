"""dvc.yaml lists, for every stage, every sagan_core module that shapes the stage's outputs.

The closure is derived from the code, not kept by hand: the stage function in pipelines/stages.py
(what `sagan <stage>` runs) imports sagan_core modules; every import statement of those modules,
module-level or inside a function, is followed within sagan_core. A module in the closure that is
not a dependency fails the test unless it is listed below with the reason it cannot change outputs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from helpers import REPO

CORE = REPO / "sagan_core"

# Modules a stage imports that cannot change what it writes, and why.
FOLDER_READING = ("archives.py", "decode.py", "sources.py")
NOT_SHAPING = {
    "errors.py": "exception classes: messages and exit codes only",
    "config_errors.py": "the wording of a validation error",
    "params_file.py": "reads params.yaml; DVC tracks the values themselves as params",
    "progress.py": "Callback hooks, console progress and metrics/train.csv (a plot, not an out)",
    "atomic.py": "writes bytes atomically; the bytes come from the caller",
}
NOT_SHAPING_IN = {
    "prepare": {"arch.py": "config.py checks attention placement with it; prepare builds no model"},
    # fid.py reads image folders with these (`sagan fid`); the evaluate stage and in-training
    # evaluation score the prepared arrays against the cached reference statistics, never a folder.
    **{
        s: {m: "fid.py's folder reading; the stage scores prepared arrays" for m in FOLDER_READING}
        for s in ("train", "evaluate")
    },
}


def _imports(module: Path) -> set[str]:
    """sagan_core modules (file names) imported anywhere in `module`, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 and module.parent == CORE:  # from .x import y / from . import x
                names = [base] if base else [a.name for a in node.names]
            elif base == "sagan_core":  # from sagan_core import x
                names = [a.name for a in node.names]
            elif base.startswith("sagan_core."):
                names = [base.split(".")[1]]
            else:
                continue
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("sagan_core.")]
        else:
            continue
        found |= {f"{n.split('.')[0]}.py" for n in names if (CORE / f"{n.split('.')[0]}.py").exists()}
    return found


def _stage_roots(stage: str) -> set[str]:
    """sagan_core modules imported by pipelines/stages.py's function `stage` and its module level."""
    tree = ast.parse((REPO / "pipelines/stages.py").read_text())
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == stage]
    module_level = [n for n in tree.body if isinstance(n, ast.ImportFrom | ast.Import)]
    roots = set()
    for node in [*module_level, *ast.walk(func)]:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sagan_core"):
            parts = node.module.split(".")
            roots |= {f"{parts[1]}.py"} if len(parts) > 1 else {f"{a.name}.py" for a in node.names}
    return roots


def closure(stage: str) -> set[str]:
    todo, seen = list(_stage_roots(stage)), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imports(CORE / name) - seen
    return seen


@pytest.mark.parametrize("stage", ["prepare", "train", "evaluate"])
def test_every_shaping_module_of_a_stage_is_a_dependency(stage):
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    deps = {str(d) for d in dvc["stages"][stage]["deps"]}
    for dep in deps:
        assert dep.startswith("$") or (REPO / dep).exists(), f"{stage}: dependency {dep} does not exist"
    exempt = NOT_SHAPING.keys() | NOT_SHAPING_IN.get(stage, {}).keys()
    needed = {f"sagan_core/{m}" for m in closure(stage) if m not in exempt}
    missing = sorted(needed - deps)
    assert not missing, (
        f"dvc.yaml stage {stage} lacks deps {missing} (or add them to NOT_SHAPING with a reason)"
    )


def test_the_closure_follows_lazy_and_relative_imports():
    # independent expectations from reading the code: the trainer saves checkpoints and sample
    # grids, evaluate loads the checkpoint and runs pytorch-fid's Inception network
    assert {"trainer.py", "checkpoint.py", "visualize.py", "model.py", "layers.py"} <= closure("train")
    assert {"evaluate.py", "inception.py", "checkpoint.py", "fid.py", "metrics.py"} <= closure("evaluate")
    assert "trainer.py" not in closure("prepare")
