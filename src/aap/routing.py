"""One way to route, in both processes: a table of :class:`Route` and the
:class:`Router` that resolves a request against it.

A route is an exact path (``/v1/batch``), a template with ``{name}`` parameters
(``/cohorts/{id}``, each parameter a regex, by default one path segment), or a prefix
that takes every path below it (``/api/v1/``, which the collector passes to the core).
The router answers a path with the routes of each method, or raises 404; a method that
the path does not take raises 405 with the methods it does (the ``Allow`` header).

The same tables document the API (:mod:`aap.api.openapi`): what dispatches is what is
documented. Exact paths are one dict lookup: the collector's hot path pays no more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aap import errors

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

ANY: tuple[str, ...] = ()
"""The ``methods`` of a route that takes every method."""
_ANY_KEY = "*"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
SEGMENT = "[^/]+"
"""What a template parameter matches unless its route says otherwise."""


@dataclass(frozen=True, slots=True)
class Route(Generic[T_co]):
    """``target`` (a handler, or what the table's user needs) answers ``methods`` on
    ``path``."""

    path: str
    methods: tuple[str, ...]
    target: T_co
    params: Mapping[str, str] = field(default_factory=dict)
    """The regex of each ``{name}`` of a template (default :data:`SEGMENT`)."""
    prefix: bool = False
    """The route takes every path that starts with ``path``."""
    label: str = ""
    """Its name in metrics (default: the path; a template's or prefix's fixed start
    followed by ``*``)."""

    @property
    def is_template(self) -> bool:
        return not self.prefix and "{" in self.path

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.prefix:
            return self.path + "*"
        return self.path.partition("{")[0] + "*" if self.is_template else self.path

    def regex(self) -> str:
        """``/cohorts/{id}`` with ``id`` = ``\\d{1,12}`` → ``^/cohorts/(?P<id>\\d{1,12})$``."""
        parts = _PARAM.split(self.path)  # literal, name, literal, name, …, literal
        return "^" + "".join(
            re.escape(p) if i % 2 == 0 else f"(?P<{p}>{self.params.get(p, SEGMENT)})"
            for i, p in enumerate(parts)) + "$"


Methods = dict[str, Route[T]]
"""method → route, for one path (``*``: every method)."""
Found = tuple[Methods[T], dict[str, str]]
"""What :meth:`Router.find` finds for a path: its routes, and the template's parameters."""


class Router(Generic[T]):
    """Resolves paths against a route table. ``mount``: where the table's paths sit on
    the public side (``/api/v1``), for the paths error messages name."""

    def __init__(self, routes: Iterable[Route[T]], *, mount: str = "") -> None:
        self.routes = tuple(routes)
        self.mount = mount
        self._exact: dict[str, Methods[T]] = {}
        self._prefixes: dict[str, Methods[T]] = {}
        templates: dict[str, Methods[T]] = {}
        for route in self.routes:
            table = (self._prefixes if route.prefix else
                     templates if route.is_template else self._exact)
            key = route.regex() if route.is_template else route.path
            by_method = table.setdefault(key, {})
            for method in route.methods or (_ANY_KEY,):
                by_method.setdefault(method, route)
        self._templates = [(re.compile(rx), by) for rx, by in templates.items()]

    def find(self, path: str) -> Found[T] | None:
        """The routes of each method on ``path`` and the template's parameters, or None."""
        by_method = self._exact.get(path)
        if by_method is not None:
            return by_method, {}
        for prefix, by_method in self._prefixes.items():
            if path.startswith(prefix):
                return by_method, {}
        for rx, by_method in self._templates:
            match = rx.match(path)
            if match is not None:
                return by_method, match.groupdict()
        return None

    def select(self, by_method: Methods[T], method: str, path: str) -> Route[T]:
        """The route of ``method`` among a path's, else 405 naming those it takes."""
        route = by_method.get(method) or by_method.get(_ANY_KEY)
        if route is None:
            raise errors.MethodNotAllowed(
                f"{method} is not allowed on {errors.shown(self.mount + path)}",
                list(by_method))
        return route

    def resolve(self, method: str, path: str) -> tuple[Route[T], dict[str, str]]:
        """The route of ``method`` on ``path`` and its parameters; 404 or 405."""
        found = self.find(path)
        if found is None:
            raise errors.no_endpoint(self.mount + path)
        return self.select(found[0], method, path), found[1]

    def label(self, path: str, found: Found[T] | None) -> str:
        """The name in metrics of the route of ``path`` (``found``: what :meth:`find`
        found for it): a template's fixed start even when no template below it takes
        the path, else ``other``."""
        if found is not None:
            return next(iter(found[0].values())).name
        return next((r.name for r in self.routes if r.is_template
                     and path.startswith(r.path.partition("{")[0])), "other")
