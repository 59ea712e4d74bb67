"""Digests of the code a workflow job executes, for code-aware reruns.

Snakemake does not track the Python modules that a rule's script imports. The workflow therefore puts
a digest of exactly that code into each rule's ``params``; when the digest changes Snakemake reruns the
job. The digest covers the *static import closure* of a set of modules: every module of the source tree
reached by ``import pkg.x``, ``from pkg.x import y`` or a relative import, recursively. Modules loaded
by name at run time (``importlib.import_module``) are NOT followed; that is deliberate, so that e.g. the
training engine does not depend on every distillation method.

Each module is hashed as ``ast.dump`` of its parse tree, so comments and formatting do not change the
digest, while any change to code (docstrings included) does.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from kdcore.errors import KDCoreError

DIGEST_LENGTH = 16


def module_path(module: str, src_root: str | os.PathLike[str]) -> Path | None:
    """The file of ``module`` under ``src_root`` (``a/b.py`` or ``a/b/__init__.py``), or None if absent."""
    base = Path(src_root).joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def source_index(src_root: str | os.PathLike[str]) -> dict[str, Path]:
    """Every module of the source tree by name, as :func:`module_path` finds it (``a/b.py`` before
    ``a/b/__init__.py``). One walk of the tree: a digest looks up thousands of names, a walk costs
    milliseconds."""
    root = Path(src_root)
    packages: dict[str, Path] = {}
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            packages[".".join(parts[:-1])] = path
        else:
            modules[".".join(parts)] = path
    return {**packages, **modules}


@cache
def _parse(text: str, filename: str) -> ast.Module:
    """Parse Python source (cached by content)."""
    try:
        return ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise KDCoreError(f"cannot hash {filename}: syntax error at line {exc.lineno}: {exc.msg}") from exc


def _tree(path: Path) -> ast.Module:
    """The parse tree of the Python file ``path``."""
    return _parse(path.read_text(encoding="utf-8"), str(path))


@cache
def _dump(text: str, filename: str) -> str:
    """``ast.dump`` of Python source (cached by content: a workflow hashes the same modules for many rules)."""
    return ast.dump(_parse(text, filename))


@cache
def _import_statements(text: str, filename: str) -> tuple[tuple[str | None, int, tuple[str, ...]], ...]:
    """Every import of Python source, anywhere in its body, as (``from`` module or None for ``import``, level,
    names); cached by content."""
    found = []
    for node in ast.walk(_parse(text, filename)):
        if isinstance(node, ast.Import):
            found.append((None, 0, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module, node.level, tuple(alias.name for alias in node.names)))
    return tuple(found)


def _with_parents(module: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: importing a submodule runs its parent packages too."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _resolve_relative(current: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name that ``from <level dots><target> import ...`` names inside ``current``."""
    package = current if is_package else current.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        raise KDCoreError(f"relative import beyond the top-level package in module {current}")
    base = parts[: len(parts) - (level - 1)]
    if target:
        base += target.split(".")
    return ".".join(base)


def direct_imports(module: str, src_root: str | os.PathLike[str]) -> list[str]:
    """Modules of the source tree that ``module`` imports statically (anywhere in its body), sorted."""
    return _direct_imports(module, source_index(src_root), Path(src_root))


def _direct_imports(module: str, index: dict[str, Path], root: Path) -> list[str]:
    """:func:`direct_imports` with the tree's :func:`source_index`."""
    path = index.get(module)
    if path is None:
        raise KDCoreError(f"module {module!r} not found under {root}")
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        found.update(candidate for candidate in _with_parents(name) if candidate in index)

    for source, level, names in _import_statements(path.read_text(encoding="utf-8"), str(path)):
        if source is None and not level:  # import a.b, c
            for name in names:
                add(name)
            continue
        base = _resolve_relative(module, is_package, level, source) if level else source or ""
        if not base:
            continue
        add(base)
        for name in names:
            if name != "*" and f"{base}.{name}" in index:
                add(f"{base}.{name}")
    found.discard(module)
    return sorted(found)


def module_closure(module: str, src_root: str | os.PathLike[str]) -> list[str]:
    """Sorted names of ``module``, its parent packages and every source-tree module it imports, recursively."""
    return _module_closure(module, source_index(src_root), Path(src_root))


def _module_closure(module: str, index: dict[str, Path], root: Path) -> list[str]:
    """:func:`module_closure` with the tree's :func:`source_index`."""
    if module not in index:
        raise KDCoreError(f"module {module!r} not found under {root}")
    seen: set[str] = set()
    todo = [m for m in _with_parents(module) if m in index]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(m for m in _direct_imports(current, index, root) if m not in seen)
    return sorted(seen)


def normalised_source(path: str | os.PathLike[str]) -> str:
    """What a file contributes to a digest: ``ast.dump`` for Python files, the raw text otherwise."""
    path = Path(path)
    if path.suffix == ".py":
        return _dump(path.read_text(encoding="utf-8"), str(path))
    return path.read_bytes().decode("utf-8", errors="replace")


def code_digest(
    modules: Iterable[str],
    src_root: str | os.PathLike[str],
    extra_files: Iterable[str | os.PathLike[str]] = (),
) -> str:
    """Hex digest (16 chars) of the import closures of ``modules`` plus ``extra_files``.

    Only module names and normalised code enter the hash, never absolute paths, so a copy of the source
    tree elsewhere has the same digest. ``extra_files`` (e.g. the rule's script) are keyed by file name.
    """
    root = Path(src_root)
    index = source_index(root)
    closure: set[str] = set()
    for module in modules:
        closure.update(_module_closure(module, index, root))
    digest = hashlib.sha256()
    for name in sorted(closure):
        path = index[name]
        digest.update(f"module {name}\n".encode())
        digest.update(normalised_source(path).encode())
        digest.update(b"\n")
    for extra in sorted(Path(f) for f in extra_files):
        if not extra.is_file():
            raise KDCoreError(f"cannot hash {extra}: no such file")
        digest.update(f"file {extra.name}\n".encode())
        digest.update(normalised_source(extra).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:DIGEST_LENGTH]
