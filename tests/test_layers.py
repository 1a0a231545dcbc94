"""The package's import graph, read from the source (``ast``, nothing is imported or run).

* No import cycle between ``boxmask`` modules. Importing ``a.b.c`` runs ``a/__init__`` and
  ``a/b/__init__`` first, so an import also counts as importing every enclosing package (save the
  importer's own enclosing packages, which are already under way when it runs; naming one of them
  explicitly, ``from . import x``, still counts).
  Imports under ``if TYPE_CHECKING:`` count (a type-only cycle is still a tangle).
* The low-level modules (``LOW_LEVEL``: pure data and math, no I/O beyond files they are handed)
  import only each other: nothing from engines, jobs, quality, writers, readers, training, the
  command line or the Python API.

Function-level (lazy) imports are left out of both checks only where ``LAZY`` lists them with
the reason; any other lazy import counts like a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "boxmask"

LOW_LEVEL = frozenset({
    "boxmask.atomic", "boxmask.boxes", "boxmask.dataclassjson", "boxmask.guidance",
    "boxmask.hashing", "boxmask.maskmath", "boxmask.maskmetrics", "boxmask.masks",
    "boxmask.records", "boxmask.safepath",
})
"""Modules at the bottom of the stack: they may import only one another."""

UPPER = ("engines", "jobs", "quality", "writers", "readers", "training", "cli", "api")
"""Packages and modules above the low-level ones."""

LAZY: dict[tuple[str, str], str] = {
    ("boxmask.pipeline", "boxmask.api"):
        "pipeline.engine_options and conversion_settings read api.default_weights and "
        "api.pick_engine_name (the one place for default weights and the engine choice), while "
        "api imports pipeline.engine_options at module level",
}
"""Lazy imports the checks leave out, with why each one waits for its function."""


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The ``boxmask`` modules an import statement names (``from p import x``: ``p.x`` when that is
    a module, else ``p``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level == 0:
            base = node.module or ""
        else:
            pkg = module.split(".") if is_pkg else module.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("boxmask"):
            out.add(name)
    return out


def _is_module_level(tree: ast.Module, node: ast.AST) -> bool:
    """True for an import at module level, also inside a module-level ``if`` or ``try``."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        stmt = todo.pop()
        if stmt is node:
            return True
        if isinstance(stmt, ast.If | ast.Try):
            todo += stmt.body + stmt.orelse + getattr(stmt, "finalbody", [])
            for handler in getattr(stmt, "handlers", []):
                todo += handler.body
    return False


def _enclosing(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """``(edges, lazy)``: what each module imports (enclosing packages included), and the
    function-level ``(importer, imported)`` pairs."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy: set[tuple[str, str]] = set()
    for module, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        top: set[str] = set()
        inner: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                (top if _is_module_level(tree, node) else inner).update(
                    _targets(module, is_pkg, node))
        for target in inner - top:
            lazy.add((module, target))
        own = _enclosing(module)  # already initialised whenever this module runs
        for target in top | inner:
            if (module, target) in LAZY:
                continue
            edges[module] |= {target} | (_enclosing(target) - own)
        edges[module].discard(module)
    return edges, lazy


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_package():
    edges, lazy = _graph()
    assert "boxmask.maskmetrics" in edges["boxmask.jobs.steps"]
    assert "boxmask.records" in edges["boxmask.boxes"]
    assert "boxmask.writers" in edges["boxmask.quality.runmasks"]  # the enclosing package
    assert ("boxmask.pipeline", "boxmask.api") in lazy


def test_no_import_cycles():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_documented_lazy_imports_exist_and_are_lazy():
    _, lazy = _graph()
    assert set(LAZY) <= lazy, set(LAZY) - lazy


def test_low_level_modules_import_only_low_level_modules():
    edges, _ = _graph()
    assert LOW_LEVEL <= set(MODULES)
    bad = {m: sorted(edges[m] - LOW_LEVEL - {"boxmask"}) for m in sorted(LOW_LEVEL)}
    assert {m: v for m, v in bad.items() if v} == {}
    upward = {(m, t) for m in LOW_LEVEL for t in edges[m]
              if t.split(".")[1:2] and t.split(".")[1] in UPPER}
    assert upward == set()
