"""Digests of the code a workflow job executes, for code-aware reruns.

Snakemake does not track the Python modules that a rule's script imports. The workflow therefore puts
a digest of exactly that code into each rule's ``params``; when the digest changes Snakemake reruns the
job. The digest covers the *static import closure* of a set of modules: every module of the source tree
reached by ``import pkg.x``, ``from pkg.x import y`` or a relative import, recursively. Modules loaded
by name at run time (``importlib.import_module``) are NOT followed; that is deliberate, so that e.g. the
training engine does not depend on every distillation method.

Each module enters the digest as the sha256 of ``ast.dump`` of its parse tree, so comments and formatting do
not change the digest, while any change to code (docstrings included) does.

Parsing is most of a digest's cost (about 0.3 s for the whole package, paid by every Snakemake process and
every training run). With ``KDCORE_CODEHASH_CACHE`` set to a folder, what a digest learns of a source text (the
sha256 of its ``ast.dump`` and its imports) is kept there under the sha256 of the text and the Python version,
and read back by later processes instead of parsing again. The key is the content itself, so an edited file is
a new key and can never be served what its old text gave; an entry that does not read back as one is parsed
again and rewritten. The test suite sets it; unset, nothing is kept between processes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kdcore.errors import KDCoreError

DIGEST_LENGTH = 16
#: Environment variable: the folder of the parse cache (module docstring); unset, no cache.
CACHE_ENV = "KDCORE_CODEHASH_CACHE"
#: Layout version of a cache entry (part of its folder's name, with the Python version: ``ast.dump`` may
#: differ between Python versions).
CACHE_FORMAT = 1

#: One import statement: (``from`` module or None for ``import``, relative level, imported names).
ImportStatement = tuple[str | None, int, tuple[str, ...]]


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


@dataclass(frozen=True)
class SourceFacts:
    """What a digest needs of one Python source text: the sha256 of ``ast.dump`` of its parse tree, and its
    import statements, anywhere in its body, in source order."""

    normalised_sha256: str
    imports: tuple[ImportStatement, ...]


def _statements(node: ast.AST) -> Iterator[ast.stmt]:
    """Every statement under ``node``, at any depth. Expressions are not entered: no statement (so no import)
    can stand inside one, and they are most of a tree's nodes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):
            continue
        if isinstance(child, ast.stmt):
            yield child
        yield from _statements(child)


def _imports_of(tree: ast.Module) -> tuple[ImportStatement, ...]:
    found: list[ImportStatement] = []
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            found.append((None, 0, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module, node.level, tuple(alias.name for alias in node.names)))
    return tuple(found)


def _cache_entry(text: str) -> Path | None:
    """Where the parse cache keeps the facts of ``text``, or None when no cache is set."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        return None
    version = f"v{CACHE_FORMAT}-py{sys.version_info.major}.{sys.version_info.minor}"
    return Path(folder) / version / f"{hashlib.sha256(text.encode()).hexdigest()}.json"


def _read_entry(entry: Path) -> SourceFacts | None:
    """The facts kept in ``entry``; None when it is missing or does not read back as facts."""
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        imports = tuple((src, int(level), tuple(names)) for src, level, names in data["imports"])
        facts = SourceFacts(str(data["normalised_sha256"]), imports)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return facts if len(facts.normalised_sha256) == 64 else None


def _write_entry(entry: Path, facts: SourceFacts) -> None:
    """Keep ``facts`` in ``entry`` (a temporary name, then a rename: a reader sees a whole entry or none);
    a cache that cannot be written is left alone."""
    data = {"normalised_sha256": facts.normalised_sha256, "imports": [list(i) for i in facts.imports]}
    tmp = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, entry)
    except OSError:
        tmp.unlink(missing_ok=True)


@cache
def _facts_of_text(text: str) -> SourceFacts:
    """:class:`SourceFacts` of Python source (cached by content in this process and, with the parse cache set,
    across processes). Raises SyntaxError."""
    entry = _cache_entry(text)
    if entry is not None and (kept := _read_entry(entry)) is not None:
        return kept
    tree = ast.parse(text)
    facts = SourceFacts(hashlib.sha256(ast.dump(tree).encode()).hexdigest(), _imports_of(tree))
    if entry is not None:
        _write_entry(entry, facts)
    return facts


def source_facts(text: str, filename: str) -> SourceFacts:
    """:class:`SourceFacts` of the Python source ``text`` read from ``filename`` (named in a syntax error)."""
    try:
        return _facts_of_text(text)
    except SyntaxError as exc:
        raise KDCoreError(f"cannot hash {filename}: syntax error at line {exc.lineno}: {exc.msg}") from None


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

    for source, level, names in source_facts(path.read_text(encoding="utf-8"), str(path)).imports:
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
    """What a file contributes to a digest: the sha256 of ``ast.dump`` of its parse tree for a Python file,
    the raw text otherwise."""
    path = Path(path)
    if path.suffix == ".py":
        return source_facts(path.read_text(encoding="utf-8"), str(path)).normalised_sha256
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
