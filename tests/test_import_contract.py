"""The import contract of the library, checked on its static import graph (parsed with ``ast``, nothing imported).

Every ``import`` and ``from ... import`` of ``src/kdcore`` counts, at module level and inside functions alike:
a function-level import hides a cycle from the interpreter, not from this test. Importing a module is not
counted as importing its parent package (``kdcore.methods.base`` runs ``kdcore/methods/__init__.py``), as
import-linter does not count it either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "kdcore"
#: Operations tools of the repository (the GPU check): they may import kdcore, never the other way round.
TOOLS = Path(__file__).resolve().parents[1] / "tools"

#: Modules at the bottom of the library and all they may import of it.
FOUNDATION: dict[str, set[str]] = {
    "kdcore.errors": set(),
    "kdcore.seeds": set(),
    "kdcore.atomic": {"kdcore.errors"},
    "kdcore.labels": {"kdcore.errors"},
    "kdcore.schema": {"kdcore.errors"},
    "kdcore.codehash": {"kdcore.errors"},
}
#: Third-party packages the analysis environment (workflow/envs/analysis.yaml) does not have.
TORCH = {"torch", "torchvision"}
#: Function-level imports from kdcore.analysis into modules that need torch, each a documented fallback.
ANALYSIS_TORCH_FALLBACKS = {
    # parameter counts of networks the run table does not count (kdcore.analysis.moderation.student_params)
    ("kdcore.analysis.moderation", "kdcore.models"),
}
#: Command-line entry points: no library module imports them (but ``python -m kdcore`` its CLI).
ENTRY_POINTS = {"kdcore.cli": {"kdcore.__main__"}, "kdcore.configdoc": set()}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen from the module that makes it."""

    source: str
    target: str
    in_function: bool
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def module_files() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def absolute_target(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The module a ``from`` import names, relative imports resolved against ``module``'s package."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def statement_targets(module: str, path: Path, node: ast.stmt) -> list[str]:
    """The modules one import statement loads: ``from kdcore.x import y`` loads ``kdcore.x.y`` too where
    ``y`` is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    target = absolute_target(module, path, node)
    submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in module_files()]
    return [target, *submodules]


def walk_imports(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement below ``tree`` and whether a function body holds it."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function
        nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from walk_imports(child, nested)


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    path = module_files()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return tuple(
        Import(module, target, in_function, node.lineno)
        for node, in_function in walk_imports(tree)
        for target in statement_targets(module, path, node)
    )


def kdcore_edges(*, module_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the kdcore modules it imports."""
    return {
        module: {
            imp.target
            for imp in imports_of(module)
            if imp.target in module_files() and imp.target != module and not (module_level_only and imp.in_function)
        }
        for module in module_files()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = stack[stack.index(node) :]
                    del stack[stack.index(node) :]
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def imports_torch_at_module_level(module: str) -> bool:
    return any(imp.target.split(".")[0] in TORCH and not imp.in_function for imp in imports_of(module))


# ----------------------------------------------------------------------------- the contract
def test_the_graph_is_read():
    edges = kdcore_edges()
    assert len(module_files()) > 40
    assert "kdcore.errors" in edges["kdcore.config"] and "kdcore.methods" in edges["kdcore.config"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(kdcore_edges()) == []


def test_foundation_modules_import_nothing_above_them():
    edges = kdcore_edges()
    for module, allowed in FOUNDATION.items():
        assert edges[module] <= allowed, f"{module} imports {sorted(edges[module] - allowed)}"


def test_the_library_never_imports_snakemake():
    found = [imp for m in module_files() for imp in imports_of(m) if imp.target.split(".")[0] == "snakemake"]
    assert found == []


def tool_module_names() -> set[str]:
    """The names a library module could import a tool by: ``tools.<name>``, or ``<name>`` with tools/ on the path."""
    stems = {path.stem for path in TOOLS.glob("*.py") if path.stem != "__init__"}
    return {"tools", *(f"tools.{stem}" for stem in stems), *stems}


def test_the_library_never_imports_the_tools():
    names = tool_module_names()
    assert {"tools.gpucheck", "gpucheck"} <= names
    assert not any(module.split(".")[-1] == "gpucheck" for module in module_files())  # the check left the library
    found = [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for module in module_files()
        for imp in imports_of(module)
        if imp.target in names or imp.target.startswith("tools.")
    ]
    assert found == []


def test_analysis_imports_no_torch_module_at_module_level():
    """What workflow/envs/analysis.yaml relies on (tests/test_analysis_env.py imports them with torch blocked)."""
    edges = kdcore_edges(module_level_only=True)
    for module in (m for m in module_files() if m.startswith("kdcore.analysis")):
        heavy = sorted(m for m in closure(module, edges) if imports_torch_at_module_level(m))
        assert heavy == [], f"{module} imports torch through {heavy}"


def test_analysis_imports_torch_modules_in_functions_only_as_documented_fallbacks():
    module_level = kdcore_edges(module_level_only=True)
    lazy = {
        (imp.source, imp.target)
        for module in module_files()
        if module.startswith("kdcore.analysis")
        for imp in imports_of(module)
        if imp.in_function and imp.target in module_files()
        if any(imports_torch_at_module_level(m) for m in closure(imp.target, module_level))
    }
    assert lazy <= ANALYSIS_TORCH_FALLBACKS


def test_entry_points_are_imported_by_no_library_module():
    edges = kdcore_edges()
    for entry, allowed in ENTRY_POINTS.items():
        importers = {m for m, targets in edges.items() if entry in targets}
        assert importers <= allowed, f"{entry} is imported by {sorted(importers - allowed)}"
