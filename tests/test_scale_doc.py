"""docs/scale.md stays honest: its constants have sources and its arithmetic follows.

- Every row of the constants table (``| name | value | unit | kind | source |``) is
  ``measured`` or ``assumption``. A measured one names its source as
  ``FILE: "snippet"`` (then what and when, free text): the file exists in the repository,
  a line of it holds the snippet *and the value as written*; a figure measured for this
  doc (``docs/scale.md``) must stand in a fenced block there (the recorded output), not
  merely in the table. An assumption says what it rests on.
- Every row of a worked-example table (``| quantity | formula | value | unit |``) is
  recomputed from the constants and the quantities above it, and must equal its written
  value within the rounding of the digits shown. Every constant is used by a formula.

Fast, no subprocess: the document is parsed as text.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scale.md"
KINDS = ("measured", "assumption")
SOURCE = re.compile(r'^`?(?P<file>[\w./-]+)`?:\s*"(?P<snippet>[^"]+)"')
FUNCTIONS: dict[str, Callable[..., float]] = {
    "ceil": math.ceil, "floor": math.floor, "max": max, "min": min}
OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Pow: operator.pow, ast.USub: operator.neg}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every Markdown table of ``text``."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            header = [c.strip("`").lower() for c in _cells(lines[i])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            yield header, rows
        else:
            i += 1


SUFFIXES = {"k": 1e3, "M": 1e6}
"""A constant may be written as its source writes it: ``20M`` events, ``500k`` persons."""


def number(text: str) -> float:
    text = text.replace(",", "").replace("\u202f", "").replace(" ", "")
    if text[-1:] in SUFFIXES:
        return float(text[:-1]) * SUFFIXES[text[-1]]
    return float(text)


def decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def constants(text: str) -> dict[str, list[str]]:
    """name → [value, unit, kind, source] of the constants table."""
    found = [rows for header, rows in tables(text)
             if header[:5] == ["name", "value", "unit", "kind", "source"]]
    assert len(found) == 1, "docs/scale.md needs exactly one constants table"
    out: dict[str, list[str]] = {}
    for row in found[0]:
        name = row[0].strip("`")
        assert name not in out, f"constant {name} defined twice"
        out[name] = row[1:5]
    return out


def worked(text: str) -> list[tuple[str, str, str]]:
    """(quantity, formula, value) of every worked-example row, in order."""
    return [(row[0].strip("`"), row[1].strip("`"), row[2])
            for header, rows in tables(text) if header[:3] == ["quantity", "formula", "value"]
            for row in rows]


def evaluate(formula: str, names: dict[str, float]) -> float:
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise KeyError(f"{node.id} is neither a constant nor a quantity above")
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return float(OPS[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPS:
            return float(OPS[type(node.op)](ev(node.operand)))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in FUNCTIONS and not node.keywords):
            return float(FUNCTIONS[node.func.id](*(ev(a) for a in node.args)))
        raise ValueError(f"not allowed in a formula: {ast.dump(node)}")

    return ev(ast.parse(formula, mode="eval"))


def fenced_lines(text: str) -> set[int]:
    """Indexes of the lines inside fenced code blocks."""
    inside, out = False, set()
    for i, line in enumerate(text.splitlines()):
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            out.add(i)
    return out


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def test_every_measured_constant_has_a_source_line_that_holds_it(doc: str) -> None:
    consts = constants(doc)
    assert sum(kind == "measured" for _, _, kind, _ in consts.values()) >= 10
    for name, (value, _unit, kind, source) in consts.items():
        assert kind in KINDS, f"{name}: kind {kind!r}"
        number(value)  # a plain number
        if kind == "assumption":
            assert len(source) > 10, f"{name}: an assumption says what it rests on"
            continue
        m = SOURCE.match(source)
        assert m, f'{name}: a measured figure names its source as FILE: "snippet"'
        path = ROOT / m["file"]
        assert path.is_file(), f"{name}: {m['file']} does not exist"
        lines = path.read_text().splitlines()
        inside = fenced_lines(path.read_text()) if path == DOC else None
        hits = [i for i, line in enumerate(lines) if m["snippet"] in line and value in line
                and (inside is None or i in inside)]
        assert hits, (f"{name}: no line of {m['file']} holds {m['snippet']!r} and {value!r}"
                      + (" inside a fenced block" if inside is not None else ""))


def test_the_worked_example_follows_from_the_constants(doc: str) -> None:
    names = {n: number(v[0]) for n, v in constants(doc).items()}
    rows = worked(doc)
    assert len(rows) >= 20
    for quantity, formula, written in rows:
        assert quantity not in names, f"{quantity} defined twice"
        got = evaluate(formula, names)
        want = number(written)
        tol = 0.5 * 10 ** -decimals(written) * 1.0001 + 1e-9 * abs(want)
        assert abs(got - want) <= tol, f"{quantity} = {formula} = {got!r}, the doc says {written}"
        names[quantity] = want  # later rows build on the value as written


def test_every_constant_is_used(doc: str) -> None:
    used = {n.id for _, formula, _ in worked(doc)
            for n in ast.walk(ast.parse(formula, mode="eval")) if isinstance(n, ast.Name)}
    unused = set(constants(doc)) - used - set(FUNCTIONS)
    assert not unused, f"constants no formula uses: {sorted(unused)}"


def test_the_checks_can_fail() -> None:
    assert evaluate("ceil(a * 2.5) + max(b, 1)", {"a": 1.0, "b": 3.0}) == 6.0
    with pytest.raises(KeyError):
        evaluate("c + 1", {})
    with pytest.raises(ValueError):
        evaluate("__import__('os')", {})
    bad = "| name | value | unit | kind | source |\n|---|---|---|---|---|\n| `x` | 1 | B | guessed | - |\n"
    assert constants(bad) == {"x": ["1", "B", "guessed", "-"]}
    assert worked("| quantity | formula | value | unit |\n|---|---|---|---|\n| `y` | `x * 2` | 3 | B |\n"
                  ) == [("y", "x * 2", "3")]
    assert fenced_lines("a\n```\nb\n```\nc") == {2}
    assert number("20M") == 20e6 and number("1,000,000") == 1e6 and decimals("0.250") == 3


def test_linked_from_the_readme_and_deploy() -> None:
    assert "docs/scale.md" in (ROOT / "README.md").read_text()
    assert "scale.md" in (ROOT / "docs" / "deploy.md").read_text()
