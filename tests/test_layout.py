"""The code's layout, read from the source with `ast` (nothing here imports the project or torch).

- Size: a module over 300 lines must say why at its top (a line `Longer than 300 lines: <reason>` in
  its docstring); no function or method over 60 lines.
- ARCHITECTURE.md names every module of sagan_core/ and pipelines/ by its path inside its package,
  in backticks: `config.py`, `train/trainer.py`, `cli/main.py`.
- sagan_core is a library: it imports nothing from pipelines, MLflow, Prefect or DVC.
- No import cycle among the project's modules, lazy and TYPE_CHECKING imports included.
- pipelines/ never calls torch.load: checkpoints are read through sagan_core.
- Every sub-package says in its `__init__.py` docstring what it holds.

Modules are found on disk, never listed here: renaming or adding one needs no edit of this file.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.unit

PACKAGES = ("sagan_core", "pipelines", "benchmarks", "tests")
PROJECT = ("sagan_core", "pipelines")  # the importable packages
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of sagan_core and pipelines (packages as their
    `__init__.py`)."""
    found = {}
    for pkg in PROJECT:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_module_and_function_sizes(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source)
    lines = len(source.splitlines())
    reason = "Longer than 300 lines:" in (ast.get_docstring(tree) or "")
    assert lines <= MAX_MODULE_LINES or reason, f"{lines} lines and no reason at its top"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_architecture_names_every_module() -> None:
    """Each module of sagan_core/ and pipelines/ (but `__init__.py` and `__main__.py`) appears in
    ARCHITECTURE.md as its path inside its package, in backticks: `train/trainer.py`, `stages.py`."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    missing = [
        rel(path)
        for pkg in PROJECT
        for path in sorted((REPO / pkg).rglob("*.py"))
        if "__pycache__" not in path.parts
        and path.name not in ("__init__.py", "__main__.py")
        and f"`{path.relative_to(REPO / pkg).as_posix()}`" not in text
    ]
    assert missing == [], "ARCHITECTURE.md does not name these (as `sub/module.py`): " + ", ".join(missing)


# ---- imports, read with ast ---------------------------------------------------------------------------
def imports(name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import statement of a module, anywhere in it
    (module level, functions, `if TYPE_CHECKING:`, try blocks); relative imports made absolute.
    `import a.b` yields ("a.b", [], line); `from a import b, c` yields ("a", ["b", "c"], line)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[: len(parts) - (node.level - 1)] if node.level - 1 <= len(parts) else []
                base = ".".join([*up, *([node.module] if node.module else [])])
            yield base, [a.name for a in node.names], node.lineno


def dynamic_imports(path: Path) -> Iterator[tuple[str, int]]:
    """Modules named by a constant in importlib.import_module("x") or __import__("x")."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value, node.lineno


def named(base: str, names: list[str]) -> list[str]:
    """What a statement may import: `base` and each `base.name` (`from . import x` at the top: `x`)."""
    return [base, *(f"{base}.{n}".lstrip(".") for n in names)]


def forbidden_in_core(module: str) -> bool:
    top = module.split(".")[0]
    return top in ("pipelines", "mlflow", "prefect", "dvc") or top.startswith("dvc_")


def test_sagan_core_imports_no_orchestration() -> None:
    """sagan_core is the library: pipelines, MLflow, Prefect and DVC build on it, never the reverse
    (not even lazily inside a function or for type checking)."""
    found = []
    for name, path in project_modules().items():
        if not name.startswith("sagan_core"):
            continue
        statements = [(named(base, names), line) for base, names, line in imports(name, path)]
        statements += [([m], line) for m, line in dynamic_imports(path)]
        for candidates, line in statements:
            bad = [m for m in candidates if forbidden_in_core(m)]
            found += [f"{rel(path)}:{line} imports {bad[0]}"] if bad else []
    assert found == [], "sagan_core imports orchestration: " + ", ".join(found)


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: line}. `from pkg import name` imports `pkg.name` when that
    is a module, else `pkg` (its __init__); `import a.b.c` imports `a.b.c` only. A module's own parent
    packages are not added: only what its statements name."""
    mods = project_modules()

    def known(dotted: str) -> str | None:  # the module itself, or the closest package above it
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges = graph.setdefault(name, {})
        for base, names, line in imports(name, path):
            targets = [f"{base}.{n}" if f"{base}.{n}" in mods else known(base) for n in names]
            for target in targets or [known(base)]:
                if target is not None and target != name:
                    edges.setdefault(target, line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def shortest_cycle(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start through `within` (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return [*paths[v], start]
                if w in within and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def describe(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    """Every module of the component, each with one cycle through it: `a (line 12) -> b ... -> a`,
    where line 12 is a's statement importing b."""
    lines = [f"{len(component)} modules import each other: {', '.join(component)}"]
    for start in component:
        cycle = shortest_cycle(graph, start, set(component))
        hops = [f"{a} (line {graph[a][b]}) -> " for a, b in zip(cycle, cycle[1:])]
        lines.append("  " + "".join(hops) + cycle[-1])
    return "\n".join(lines)


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert any(graph.values())  # the imports were read at all
    cycles = [describe(graph, component) for component in strongly_connected(graph)]
    assert cycles == [], "import cycles (lazy and TYPE_CHECKING imports count):\n" + "\n".join(cycles)


# ---- pipelines/ reads no checkpoint itself ------------------------------------------------------------
TORCH_LOADS = ("torch.load", "torch.serialization.load")


def torch_loads(path: Path) -> list[int]:
    """Lines that name torch.load: `torch.load(...)` (torch under any alias), `from torch import load`."""
    tree = ast.parse(path.read_text(), str(path))
    bound = {"torch": "torch"}  # local name -> what it is (imports anywhere in the module count)
    hits = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {a.asname: a.name for a in node.names if a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                bound[a.asname or a.name] = f"{node.module}.{a.name}"
                if f"{node.module}.{a.name}" in TORCH_LOADS:
                    hits.add(node.lineno)
    for node in ast.walk(tree):
        dotted, inner = [], node
        while isinstance(inner, ast.Attribute):
            dotted.insert(0, inner.attr)
            inner = inner.value
        if isinstance(node, ast.Attribute | ast.Name) and isinstance(inner, ast.Name):
            head = bound.get(inner.id, inner.id)
            if ".".join([head, *dotted]) in TORCH_LOADS:
                hits.add(node.lineno)
    return sorted(hits)


def test_pipelines_never_call_torch_load() -> None:
    """Checkpoints are read by sagan_core (one place that knows their layout and loads weights only)."""
    found = [
        f"{rel(path)}:{line}"
        for name, path in project_modules().items()
        if name.startswith("pipelines")
        for line in torch_loads(path)
    ]
    assert found == [], "torch.load in pipelines/ (read checkpoints through sagan_core): " + ", ".join(found)


# ---- sub-packages say what they hold ------------------------------------------------------------------
MIN_DOCSTRING = 60
PLACEHOLDER = re.compile(r"^\W*(TODO|TBD|FIXME|XXX)\b", re.IGNORECASE)


def subpackages() -> list[Path]:
    """Every folder below sagan_core/ and pipelines/ that holds Python modules."""
    return sorted(
        {p.parent for pkg in PROJECT for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}
        - {REPO / pkg for pkg in PROJECT}
    )


@pytest.mark.parametrize("folder", subpackages(), ids=rel)
def test_subpackage_init_has_a_docstring(folder: Path) -> None:
    init = folder / "__init__.py"
    assert init.exists(), f"{rel(folder)} holds modules but no __init__.py"
    doc = (ast.get_docstring(ast.parse(init.read_text())) or "").strip()
    placeholder = not doc or PLACEHOLDER.match(doc) is not None
    assert not placeholder, (
        f"{rel(init)}: no docstring, or a placeholder ({doc!r}): say what the package holds"
    )
    assert len(doc) >= MIN_DOCSTRING, f"{rel(init)}: {len(doc)} characters say too little: {doc!r}"


# ---- rooms import only rooms below them ---------------------------------------------------------------
# The layers ARCHITECTURE.md draws, lowest first: a module may import its own room and rooms of a
# lower rank, never one beside or above it.
RANKS = {
    "sagan_core": 0,  # config, params_file, errors, atomic, device
    "sagan_core.data": 1,
    "sagan_core.model": 1,
    "sagan_core.evaluate": 2,
    "sagan_core.train": 3,
    "pipelines": 10,  # results, lock, launch: leaves that only use sagan_core
    "pipelines.tracking": 11,
    "pipelines.project": 11,  # presets, templates, `sagan init`, the recorded sagan version
    "pipelines.registry": 12,
    "pipelines.fetch_checkpoint": 12,
    "pipelines.stages": 13,
    "pipelines.flow": 14,
    "pipelines.cli": 15,
}
# config.py validates attention placement with the torch-free channel tables.
ALLOWED_UPWARD = {("sagan_core.config", "sagan_core.model.arch")}


def room(module: str) -> str:
    """The room of a dotted module name: its sub-package, or its package for a top-level module."""
    parts = module.split(".")
    rooms = [".".join(parts[:n]) for n in (2, 1) if ".".join(parts[:n]) in RANKS]
    assert rooms, f"{module}: in no room of RANKS"
    return rooms[0]


def test_rooms_import_only_rooms_below() -> None:
    graph = import_graph()
    upward = [
        f"{a} (line {line}) -> {b}"
        for a, edges in sorted(graph.items())
        for b, line in sorted(edges.items())
        if room(a) != room(b) and RANKS[room(b)] >= RANKS[room(a)] and (a, b) not in ALLOWED_UPWARD
    ]
    assert upward == [], "imports beside or above the importing room:\n" + "\n".join(upward)


def test_every_room_is_ranked() -> None:
    assert {room(m) for m in project_modules()} <= RANKS.keys()
