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

pytestmark = pytest.mark.unit

CORE = REPO / "sagan_core"

# Modules a stage imports that cannot change what it writes, and why (paths under sagan_core/).
FOLDER_READING = ("data/archives.py", "data/decode.py", "data/sources.py", "data/formats.py")
NOT_SHAPING = {
    "errors.py": "exception classes: messages and exit codes only",
    "params_file.py": "reads params.yaml; DVC tracks the values themselves as params",
    "train/progress.py": "Callback hooks, console progress and metrics/train.csv (a plot, not an out)",
    "atomic.py": "writes bytes atomically; the bytes come from the caller",
    "data/pool.py": "runs the caller's function in worker processes; results come back in order",
    "data/safe_folder.py": "refuses a data folder before anything reads it (lstat only); changes no output",
}
NOT_SHAPING_IN = {
    "prepare": {"model/arch.py": "config.py checks attention placement with it; prepare builds no model"},
    # fid.py reads image folders with these (`sagan fid`); the evaluate stage and in-training
    # evaluation score the prepared arrays against the cached reference statistics, never a folder.
    **{
        s: {m: "fid.py's folder reading; the stage scores prepared arrays" for m in FOLDER_READING}
        for s in ("train", "evaluate")
    },
}


def _module_file(dotted: str) -> str | None:
    """`sagan_core.a.b` -> "a/b.py" (a module file under sagan_core/), else None (a package)."""
    rel = Path(*dotted.split(".")[1:]).with_suffix(".py")
    return str(rel) if (CORE / rel).is_file() else None


def _imported(node: ast.ImportFrom | ast.Import, package: str) -> list[str]:
    """Dotted sagan_core names an import statement brings in (`from P import m`: P.m when a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("sagan_core.")]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    if not base.startswith("sagan_core"):
        return []
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _imports(module: str) -> set[str]:
    """sagan_core modules (paths under sagan_core/) imported anywhere in `module`, lazy ones included."""
    package = ".".join(["sagan_core", *Path(module).parent.parts])
    found = set()
    for node in ast.walk(ast.parse((CORE / module).read_text())):
        if isinstance(node, ast.ImportFrom | ast.Import):
            found |= {f for name in _imported(node, package) if (f := _module_file(name))}
    return found


def _stage_roots(stage: str) -> set[str]:
    """sagan_core modules imported by pipelines/stages.py's function `stage` and its module level."""
    tree = ast.parse((REPO / "pipelines/stages.py").read_text())
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == stage]
    module_level = [n for n in tree.body if isinstance(n, ast.ImportFrom | ast.Import)]
    return {
        f
        for node in [*module_level, *ast.walk(func)]
        if isinstance(node, ast.ImportFrom | ast.Import)
        for name in _imported(node, "pipelines")
        if (f := _module_file(name))
    }


def closure(stage: str) -> set[str]:
    todo, seen = list(_stage_roots(stage)), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imports(name) - seen
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
    train = {"train/trainer.py", "model/checkpoint.py", "model/visualize.py", "model/networks.py"}
    assert train | {"model/layers.py"} <= closure("train")
    evaluate = {"evaluate/protocol.py", "evaluate/inception.py", "model/checkpoint.py", "evaluate/fid.py"}
    assert evaluate | {"evaluate/metrics.py"} <= closure("evaluate")
    assert "train/trainer.py" not in closure("prepare")


@pytest.mark.parametrize("dvc_yaml", ["dvc.yaml", "pipelines/project/templates/dvc.yaml.template"])
def test_the_train_stage_depends_on_every_param_that_shapes_the_weights(dvc_yaml):
    """fingerprint.SHAPES_WEIGHTS (what the flow's resume decision compares) is the one list: every
    entry names real params and dvc.yaml's train stage reruns when any of them changes."""
    from sagan_core.config import Params
    from sagan_core.train.fingerprint import SHAPES_WEIGHTS

    text = (REPO / dvc_yaml).read_text().replace("#CHECK_STAGE#", "").replace("#DATA_DEP#", "")
    deps = [p for p in yaml.safe_load(text)["stages"]["train"]["params"] if isinstance(p, str)]
    dumped = Params().model_dump()
    for key in SHAPES_WEIGHTS:
        section, _, name = key.partition(".")
        assert section in dumped and (not name or name in dumped[section]), f"{key}: no such param"
        assert any(key == d or key.startswith(d + ".") for d in deps), f"{dvc_yaml}: train lacks {key}"
