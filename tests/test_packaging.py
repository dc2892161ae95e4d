"""pyproject.toml declares every third-party package the code imports, and nothing it does not use.

Imports are read from the code (every import statement, lazy ones included) and mapped to their
distributions by the installed metadata; product code (sagan_core/, pipelines/) must be covered by
[project.dependencies], the tests by those plus the `dev` extra.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib

import pytest
from helpers import REPO

pytestmark = pytest.mark.unit

# Declared but never imported, on purpose, and why.
USED_WITHOUT_IMPORT = {
    "boto3": "MLflow's S3 artifact store imports it to upload to s3:// (tracking.artifact_location)",
    "ruff": "the linter, run as a command",
    "pytest-xdist": "pytest loads it as a plugin: `-n auto` in pyproject's addopts runs the suite on every core",
}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def _imported_distributions(*folders: str) -> set[str]:
    local = {p.stem for f in ("tests", "benchmarks") for p in (REPO / f).glob("*.py")} | {
        "pipelines",
        "sagan_core",
    }
    modules = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - local - {"__future__"}
    owners = md.packages_distributions()
    missing = sorted(m for m in third_party if m not in owners)
    assert not missing, f"imported but not installed: {missing}"
    # a module some packages share (mlflow: mlflow, mlflow-skinny) counts as its namesake's
    return {
        _name(
            owners[m][0]
            if len(owners[m]) == 1
            else next((d for d in owners[m] if _name(d) == _name(m)), owners[m][0])
        )
        for m in third_party
    }


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}, {
        _name(r) for r in project["optional-dependencies"]["dev"]
    }


def test_every_imported_package_is_declared_and_every_declared_one_is_used():
    runtime, dev = _declared()
    product = _imported_distributions("sagan_core", "pipelines")
    assert not product - runtime, (
        f"imported by the product, not in [project.dependencies]: {sorted(product - runtime)}"
    )
    tests = _imported_distributions("tests", "benchmarks")
    assert not tests - runtime - dev, (
        f"imported by tests/benchmarks, not declared: {sorted(tests - runtime - dev)}"
    )
    unused = (runtime | dev) - product - tests - USED_WITHOUT_IMPORT.keys()
    assert not unused, f"declared but never imported: {sorted(unused)} (or say why in USED_WITHOUT_IMPORT)"


def test_pins_cover_every_declared_package():
    pinned = {_name(line) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    runtime, dev = _declared()
    assert not (runtime | dev) - pinned, sorted((runtime | dev) - pinned)
