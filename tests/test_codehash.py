"""Tests of kdcore.codehash: static import closures and AST-normalised digests."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from kdcore import codehash
from kdcore.codehash import code_digest, direct_imports, module_closure, module_path, source_index
from kdcore.errors import KDCoreError


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A small package ``pkg`` with absolute, from- and relative imports and a by-name import."""
    src = tmp_path / "src"
    write(src, "pkg/__init__.py", '"""pkg."""\n')
    write(src, "pkg/util.py", "X = 1\n")
    write(src, "pkg/other.py", "import os\nimport pkg.util\n")
    write(
        src,
        "pkg/engine.py",
        """\
        from __future__ import annotations
        import importlib
        from pkg import util
        from .sub.deep import f

        def run(name):
            from pkg.lazy import g  # imported inside a function: still static
            return importlib.import_module(f"pkg.methods.{name}")
        """,
    )
    write(src, "pkg/sub/__init__.py", "from .. import other\n")
    write(src, "pkg/sub/deep.py", "def f():\n    return 2\n")
    write(src, "pkg/lazy.py", "def g():\n    return 3\n")
    write(src, "pkg/methods/__init__.py", "")
    write(src, "pkg/methods/feature.py", "from pkg.util import X\n\ndef loss(a, b):\n    return (a - b) ** 2\n")
    write(src, "pkg/methods/logit.py", "def loss(a, b):\n    return abs(a - b)\n")
    write(src, "pkg/figures.py", "import numpy\n")
    return src


def test_direct_imports_follow_absolute_from_and_relative(tree: Path) -> None:
    assert direct_imports("pkg.engine", tree) == ["pkg", "pkg.lazy", "pkg.sub", "pkg.sub.deep", "pkg.util"]
    assert direct_imports("pkg.sub", tree) == ["pkg", "pkg.other"]


def test_imports_inside_compound_statements_are_found(tree: Path) -> None:
    write(
        tree,
        "pkg/nested.py",
        """\
        try:
            import pkg.util
        except ImportError:
            from pkg import other
        else:
            from pkg.sub import deep
        finally:
            pass
        if True:
            with open(__file__):
                from pkg import lazy
        class C:
            def m(self):
                for _ in ():
                    while False:
                        from pkg.methods import logit
        match 1:
            case 1:
                from pkg.methods import feature
        f = lambda: __import__("pkg.figures")  # by name at run time: not followed
        """,
    )
    assert direct_imports("pkg.nested", tree) == [
        "pkg", "pkg.lazy", "pkg.methods", "pkg.methods.feature", "pkg.methods.logit", "pkg.other", "pkg.sub",
        "pkg.sub.deep", "pkg.util",
    ]  # fmt: skip


def test_closure_is_recursive_and_skips_importlib_and_third_party(tree: Path) -> None:
    closure = module_closure("pkg.engine", tree)
    assert closure == ["pkg", "pkg.engine", "pkg.lazy", "pkg.other", "pkg.sub", "pkg.sub.deep", "pkg.util"]
    assert not any(m.startswith("pkg.methods") for m in closure)
    assert module_closure("pkg.methods.feature", tree) == ["pkg", "pkg.methods", "pkg.methods.feature", "pkg.util"]
    assert module_closure("pkg.figures", tree) == ["pkg", "pkg.figures"]


def test_unknown_module_and_syntax_error_are_named(tree: Path) -> None:
    with pytest.raises(KDCoreError, match="pkg.nothing"):
        module_closure("pkg.nothing", tree)
    write(tree, "pkg/broken.py", "def f(:\n")
    with pytest.raises(KDCoreError, match="broken.py"):
        code_digest(["pkg.broken"], tree)


def test_digest_ignores_comments_and_formatting(tree: Path) -> None:
    before = code_digest(["pkg.methods.feature"], tree)
    write(
        tree,
        "pkg/methods/feature.py",
        "# a comment\nfrom pkg.util import X   # trailing\n\n\n\ndef loss(a,\n         b):\n    return (a-b)**2\n",
    )
    assert code_digest(["pkg.methods.feature"], tree) == before


def test_digest_changes_with_code_in_closure_only(tree: Path) -> None:
    engine = code_digest(["pkg.engine"], tree)
    feature = code_digest(["pkg.engine", "pkg.methods.feature"], tree)
    logit = code_digest(["pkg.engine", "pkg.methods.logit"], tree)
    write(tree, "pkg/methods/feature.py", "from pkg.util import X\n\ndef loss(a, b):\n    return (a - b) ** 3\n")
    assert code_digest(["pkg.engine"], tree) == engine
    assert code_digest(["pkg.engine", "pkg.methods.logit"], tree) == logit
    assert code_digest(["pkg.engine", "pkg.methods.feature"], tree) != feature
    # a change deep in the engine's closure (reached through a relative import) changes every digest
    write(tree, "pkg/sub/deep.py", "def f():\n    return 5\n")
    assert code_digest(["pkg.engine"], tree) != engine
    assert code_digest(["pkg.engine", "pkg.methods.logit"], tree) != logit


def test_digest_is_independent_of_location_and_covers_extra_files(tree: Path, tmp_path: Path) -> None:
    script = write(tmp_path, "scripts/train.py", "import sys\n")
    digest = code_digest(["pkg.engine"], tree, extra_files=[script])
    copy = tmp_path / "elsewhere"
    shutil.copytree(tree, copy / "src")
    shutil.copytree(tmp_path / "scripts", copy / "scripts")
    assert code_digest(["pkg.engine"], copy / "src", extra_files=[copy / "scripts/train.py"]) == digest
    assert code_digest(["pkg.engine"], tree) != digest
    write(tmp_path, "scripts/train.py", "import sys\nprint(1)\n")
    assert code_digest(["pkg.engine"], tree, extra_files=[script]) != digest
    with pytest.raises(KDCoreError, match="missing.py"):
        code_digest(["pkg.engine"], tree, extra_files=[tmp_path / "missing.py"])


def test_source_index_finds_each_module_as_module_path_does(tree: Path) -> None:
    write(tree, "pkg/both.py", "Y = 1\n")
    write(tree, "pkg/both/__init__.py", "Y = 2\n")  # a module file and a package of the same name
    index = source_index(tree)
    assert index["pkg"] == tree / "pkg/__init__.py" and index["pkg.sub.deep"] == tree / "pkg/sub/deep.py"
    for name, path in index.items():
        assert module_path(name, tree) == path, name
    assert "pkg.nothing" not in index and module_path("pkg.nothing", tree) is None


@pytest.fixture()
def parse_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The parse cache (KDCORE_CODEHASH_CACHE) in a fresh folder, and this process's own cache emptied."""
    folder = tmp_path / "codehash-cache"
    monkeypatch.setenv(codehash.CACHE_ENV, str(folder))
    codehash._facts_of_text.cache_clear()
    yield folder
    codehash._facts_of_text.cache_clear()


def test_parse_cache_gives_the_same_digest_and_is_read_back_without_parsing(
    tree: Path, parse_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.delenv(codehash.CACHE_ENV)
        codehash._facts_of_text.cache_clear()
        uncached = code_digest(["pkg.engine"], tree)
    codehash._facts_of_text.cache_clear()
    assert code_digest(["pkg.engine"], tree) == uncached
    entries = sorted(parse_cache.rglob("*.json"))
    assert len(entries) == len(module_closure("pkg.engine", tree))  # one per source text
    codehash._facts_of_text.cache_clear()  # as a new process: nothing parsed yet

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed although the cache holds the text")

    monkeypatch.setattr(codehash.ast, "parse", no_parsing)
    assert code_digest(["pkg.engine"], tree) == uncached


def test_a_damaged_cache_entry_is_parsed_again_and_an_edit_is_a_new_entry(tree: Path, parse_cache: Path) -> None:
    before = code_digest(["pkg.engine"], tree)
    for entry in parse_cache.rglob("*.json"):
        entry.write_text('{"normalised_sha256": "0", "imports": []}')  # reads back, but is no digest
    codehash._facts_of_text.cache_clear()
    assert code_digest(["pkg.engine"], tree) == before
    assert all(len(json.loads(e.read_text())["normalised_sha256"]) == 64 for e in parse_cache.rglob("*.json"))
    n_entries = len(list(parse_cache.rglob("*.json")))
    write(tree, "pkg/util.py", "X = 2\n")
    codehash._facts_of_text.cache_clear()
    assert code_digest(["pkg.engine"], tree) != before
    assert len(list(parse_cache.rglob("*.json"))) == n_entries + 1
