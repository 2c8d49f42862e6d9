"""An import's mapping: which input columns become an event's name, time, ids,
properties, traits and context (a TOML file, or a built-in preset).

Every field names a column; ``a.b.c`` reaches into an object column (or a column
holding a JSON object as text). ``properties``, ``traits`` and ``context`` take one
object column (its keys, less those another field consumed), a list of columns, or a
table ``name = "column"``. Errors name the file's line and column.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aap.events import MESSAGE_TYPES

ID_FIELDS = ("user_id", "anonymous_id", "message_id", "group_id", "previous_id")
SCALAR_FIELDS = ("type", "event", "name", "timestamp", *ID_FIELDS)
OBJECT_FIELDS = ("properties", "traits", "context")
OPTIONS = ("default_type", "timestamp_unit")
TIMESTAMP_UNITS = ("auto", "s", "ms", "us", "iso")
PRESETS = ("posthog", "segment", "mixpanel")


class MappingError(ValueError):
    """A mapping that cannot be used; the message names the line and column."""


Path_ = tuple[str, ...]


@dataclass(frozen=True)
class ObjectSpec:
    """``whole``: one object column's keys; else ``named``: output key → column path."""

    whole: Path_ | None = None
    named: tuple[tuple[str, Path_], ...] = ()


@dataclass(frozen=True)
class Mapping:
    scalars: dict[str, Path_]
    objects: dict[str, ObjectSpec] = field(default_factory=dict)
    default_type: str = "track"
    timestamp_unit: str = "auto"
    text: str = ""
    """The TOML the mapping was read from (its identity in the import's ledger)."""

    def columns(self) -> set[str]:
        """The top-level input columns the mapping reads."""
        out = {p[0] for p in self.scalars.values()}
        for spec in self.objects.values():
            if spec.whole:
                out.add(spec.whole[0])
            out.update(p[0] for _, p in spec.named)
        return out

    def consumed(self) -> list[Path_]:
        """The paths the scalar fields and named object fields read (left out of a
        whole-object field: an id or an address never stays there in clear too)."""
        return [*self.scalars.values(),
                *(p for s in self.objects.values() for _, p in s.named)]


def load(path: Path) -> Mapping:
    return parse(path.read_text(encoding="utf-8"), str(path))


def preset(name: str) -> Mapping:
    if name not in PRESETS:
        raise MappingError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    text = resources.files("aap.imports").joinpath(f"presets/{name}.toml").read_text("utf-8")
    return parse(text, f"preset {name}")


def parse(text: str, where: str) -> Mapping:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{where}: {exc}") from None
    locate = _Locator(text, where)
    for key in doc:
        if key not in SCALAR_FIELDS + OBJECT_FIELDS + OPTIONS:
            raise locate.error(key, f"unknown key {key!r}; the keys are "
                               + ", ".join(SCALAR_FIELDS + OBJECT_FIELDS + OPTIONS))
    scalars = {k: _path(doc[k], k, locate) for k in SCALAR_FIELDS if k in doc}
    objects = {k: _object(doc[k], k, locate) for k in OBJECT_FIELDS if k in doc}
    default_type = doc.get("default_type", "track")
    if default_type not in MESSAGE_TYPES:
        raise locate.error("default_type", f"default_type {default_type!r} is not one of "
                           + ", ".join(sorted(MESSAGE_TYPES)))
    unit = doc.get("timestamp_unit", "auto")
    if unit not in TIMESTAMP_UNITS:
        raise locate.error("timestamp_unit", f"timestamp_unit {unit!r} is not one of "
                           + ", ".join(TIMESTAMP_UNITS))
    if "timestamp" not in scalars:
        raise locate.error(None, "the mapping needs `timestamp`: the column of the time"
                           " each event happened")
    if "user_id" not in scalars and "anonymous_id" not in scalars:
        raise locate.error(None, "the mapping needs `user_id` or `anonymous_id` (or both)")
    if default_type == "track" and "event" not in scalars and "type" not in scalars:
        raise locate.error(None, "the mapping needs `event`: the column of the event's name")
    return Mapping(scalars, objects, default_type, unit, text)


def _path(value: Any, key: str, locate: _Locator) -> Path_:
    if not isinstance(value, str) or not value.strip() or any(
            not p for p in value.split(".")):
        raise locate.error(key, f"`{key}` must be a column name (or `column.key` into an"
                           f" object column), not {value!r}")
    return tuple(value.split("."))


def _object(value: Any, key: str, locate: _Locator) -> ObjectSpec:
    if isinstance(value, str):
        return ObjectSpec(whole=_path(value, key, locate))
    if isinstance(value, list):
        return ObjectSpec(named=tuple((str(c), _path(c, key, locate)) for c in value))
    if isinstance(value, dict):
        return ObjectSpec(named=tuple((str(k), _path(c, f"{key}.{k}", locate))
                                      for k, c in value.items()))
    raise locate.error(key, f"`{key}` must be an object column, a list of columns or a"
                       " table of name = column")


def check_columns(mapping: Mapping, available: list[str], where: str) -> None:
    """Refuse a mapping that reads a column the input does not have (line and column)."""
    missing = sorted(mapping.columns() - set(available))
    if not missing:
        return
    locate = _Locator(mapping.text, where)
    key = next((k for k, p in mapping.scalars.items() if p[0] == missing[0]), None)
    for k, spec in mapping.objects.items():
        if key is None and spec.whole and spec.whole[0] == missing[0]:
            key = k
        key = key or next((f"{k}.{n}" for n, p in spec.named if p[0] == missing[0]), None)
    raise locate.error(key, f"the input has no column {missing[0]!r}; its columns are "
                       + ", ".join(available))


class _Locator:
    """Finds the line and column of a key in the TOML text, for the errors TOML's parser
    does not know about (a value of the wrong kind, an unknown key)."""

    def __init__(self, text: str, where: str) -> None:
        self.lines = text.splitlines()
        self.where = where

    def error(self, key: str | None, message: str) -> MappingError:
        if key is None:
            return MappingError(f"{self.where}: {message}")
        table, _, name = key.rpartition(".")
        section = None
        for n, line in enumerate(self.lines, 1):
            header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
            if header:
                section = header.group(1)
                if table == "" and section == name:
                    return MappingError(f"{self.where}, line {n}, column 1: {message}")
                continue
            found = re.match(r"(\s*)\"?" + re.escape(name) + r"\"?\s*=", line)
            if found and (section or "") == table:
                return MappingError(f"{self.where}, line {n}, column {len(found.group(1)) + 1}:"
                                    f" {message}")
        if table:  # a list of columns: its table's line
            return self.error(table, message)
        return MappingError(f"{self.where}: {message}")
