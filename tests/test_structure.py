"""The shape of ``src/aap``, checked with ``ast`` alone (issue 13's Acceptance):

- no import cycle among aap modules, counting every import: at the top, inside
  functions and under ``TYPE_CHECKING`` (so no lazy import can hide a cycle);
- no private member (``_name``) of one aap module used in another;
- the median function is at most 15 lines long, and none is over 60 (the benchmarks,
  which the rule spares, live outside the package, in ``benchmarks/``).

Each failure lists the offenders, with file and line.
"""

from __future__ import annotations

import ast
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "aap"

MEDIAN_LINES = 15
MAX_LINES = 60


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def where(self) -> str:
        return str(self.path.relative_to(SRC.parent))


@cache
def modules() -> dict[str, Module]:
    out: dict[str, Module] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        out[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return out


# --- imports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    target: str
    line: int
    how: str
    """``top``, ``lazy`` (inside a function or class body) or ``TYPE_CHECKING``."""


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module, with where it stands."""

    def walk(node: ast.AST, how: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, how
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "TYPE_CHECKING")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), how)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                    ast.Lambda)):
                yield from walk(child, "lazy" if how == "top" else how)
            else:
                yield from walk(child, how)

    yield from walk(tree, "top")


def _targets(mod: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The aap modules an import statement loads (a package's ``__init__`` included)."""
    known = modules()
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.name.split(".")
            keep = len(base) - node.level + (1 if mod.is_package else 0)
            origin = ".".join(base[:keep] + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [origin] + [f"{origin}.{a.name}" for a in node.names]
    out: list[str] = []
    for name in names:
        parts = name.split(".")
        # ``import aap.a.b`` runs aap/__init__, aap/a/__init__ and aap/a/b; the packages
        # that hold the importing module itself are not a dependency it chose
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            implicit = i < len(parts) and mod.name.startswith(prefix + ".")
            if prefix in known and prefix != mod.name and prefix not in out and not implicit:
                out.append(prefix)
    return out


@cache
def import_graph() -> dict[str, dict[str, Edge]]:
    graph: dict[str, dict[str, Edge]] = defaultdict(dict)
    for mod in modules().values():
        for node, how in _imports(mod.tree):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for target in _targets(mod, node):
                graph[mod.name].setdefault(target, Edge(target, node.lineno, how))
    return graph


def _strongly_connected(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Tarjan's components of more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules()):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def _a_cycle(graph: dict[str, dict[str, Edge]], comp: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, as ``a -> b`` lines."""
    members = set(comp)
    start = comp[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, {})):
            if w == start:
                cycle = paths[v] + [start]
                return [f"{a} -> {b} ({modules()[a].where}:{graph[a][b].line}, "
                        f"{graph[a][b].how})" for a, b in pairwise(cycle)]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return []


def test_no_import_cycle() -> None:
    graph = import_graph()
    comps = _strongly_connected(graph)
    report = []
    for comp in comps:
        report.append(f"cycle among {', '.join(comp)}:")
        report.extend("    " + line for line in _a_cycle(graph, comp))
    assert not comps, (f"{len(comps)} import cycle(s) in src/aap (every import counts, "
                       "lazy and TYPE_CHECKING ones too):\n" + "\n".join(report))


# --- private members ----------------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(tree: ast.Module) -> set[str]:
    """The private names a module defines: functions, classes, assigned names and
    attributes it assigns (``self._x = …``), class-level annotations, parameters."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return {n for n in names if _private(n)}


@cache
def _defined_in_aap() -> frozenset[str]:
    return frozenset().union(*(_defined(m.tree) for m in modules().values()))


def _module_aliases(mod: Module) -> dict[str, str]:
    """Local names bound to aap modules (``import aap.x as y``, ``from aap import x``)."""
    known = modules()
    aliases: dict[str, str] = {}
    for node, _ in _imports(mod.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in known:
                    aliases[a.asname] = a.name
        elif node.module is not None or node.level:
            origin = _targets(mod, ast.ImportFrom(module=node.module, names=[], level=node.level))
            base = origin[-1] if origin else node.module or ""
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
    return aliases


def _private_uses(mod: Module) -> Iterator[str]:
    local = _defined(mod.tree)
    aap_private = _defined_in_aap()
    aliases = _module_aliases(mod)
    for node, _ in _imports(mod.tree):
        if isinstance(node, ast.ImportFrom) and _targets(mod, node):
            for a in node.names:
                if _private(a.name):
                    yield f"{mod.where}:{node.lineno}: from {node.module or '.'} import {a.name}"
    for node in ast.walk(mod.tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in aliases:
            yield f"{mod.where}:{node.lineno}: {ast.unparse(node)} (private to {aliases[owner.id]})"
        elif isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        elif node.attr in aap_private and node.attr not in local:
            yield f"{mod.where}:{node.lineno}: {ast.unparse(node)}"


def test_no_private_member_used_across_modules() -> None:
    offenders = [use for mod in modules().values() for use in _private_uses(mod)]
    assert not offenders, (f"{len(offenders)} use(s) of another aap module's private "
                           "member:\n" + "\n".join(offenders))


# --- function length ----------------------------------------------------------------------


def function_lengths() -> list[tuple[int, str]]:
    """(lines, where) of every function and method of the package (a nested function
    counts on its own, and within its parent)."""
    out = []
    for mod in modules().values():
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                out.append((lines, f"{mod.where}:{node.lineno} {node.name}"))
    return out


def test_median_function_length() -> None:
    lengths = function_lengths()
    median = statistics.median(n for n, _ in lengths)
    assert median <= MEDIAN_LINES, (f"the median function is {median} lines long (limit "
                                    f"{MEDIAN_LINES}) over {len(lengths)} functions")


def test_no_long_function() -> None:
    long = sorted((f for f in function_lengths() if f[0] > MAX_LINES), reverse=True)
    assert not long, (f"{len(long)} function(s) over {MAX_LINES} lines:\n"
                      + "\n".join(f"{n:4d} {where}" for n, where in long))
