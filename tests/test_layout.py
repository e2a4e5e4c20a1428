"""The package's shape stays readable: no class over 300 lines, no function over 80, and no two
modules that import each other (at import time or lazily inside a function). The layers
themselves are checked by import-linter in `make lint`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "musicgen_bento"
MODULES = sorted(PACKAGE.rglob("*.py"))
LIMITS = {ast.ClassDef: 300, ast.FunctionDef: 80, ast.AsyncFunctionDef: 80}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package's modules `path` imports, wherever in it the import stands."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else node.module or base
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    known = {_module_name(other) for other in MODULES}
    return {name for name in found if name in known and name != module}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_class_or_function_is_too_long(path: Path) -> None:
    too_long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if type(node) in LIMITS and node.end_lineno - node.lineno + 1 > LIMITS[type(node)]  # type: ignore[attr-defined]
    ]
    assert not too_long


def test_no_two_modules_import_each_other() -> None:
    graph = {_module_name(path): _imports(path) for path in MODULES}
    cycles = sorted(
        f"{a} <-> {b}"
        for a, targets in graph.items()
        for b in targets
        if a < b and a in graph.get(b, set()) and not b.startswith(f"{a}.") and not a.startswith(f"{b}.")
    )
    assert not cycles


def test_the_layers_above_use_the_engine_through_its_public_names() -> None:
    reaching_in = sorted(
        f"{_module_name(path)} imports {name}"
        for path in MODULES
        if not _module_name(path).startswith("musicgen_bento.engine")
        for name in _imports(path)
        if name.startswith("musicgen_bento.engine.")
    )
    assert not reaching_in
