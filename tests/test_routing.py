"""The one route table of both processes (:mod:`aap.routing`): exact paths, templates,
prefixes; 404, and 405 with the methods allowed; metric labels."""

from __future__ import annotations

import re

import pytest

from aap import errors
from aap.routing import ANY, Route, Router

ROUTER: Router[str] = Router([
    Route("/healthz", ("GET", "HEAD"), "health"),
    Route("/cohorts", ("GET",), "list"),
    Route("/cohorts", ("POST",), "create"),
    Route("/cohorts/{id}", ("DELETE",), "delete", params={"id": r"\d{1,12}"}),
    Route("/array/{token}/config.js", ("GET",), "config"),
    Route("/api/v1/", ANY, "proxy", prefix=True, label="/api/v1"),
], mount="")


def test_exact_template_and_prefix_routes_resolve() -> None:
    assert ROUTER.resolve("HEAD", "/healthz")[0].target == "health"
    assert ROUTER.resolve("POST", "/cohorts")[0].target == "create"
    route, params = ROUTER.resolve("DELETE", "/cohorts/42")
    assert (route.target, params) == ("delete", {"id": "42"})
    assert ROUTER.resolve("GET", "/array/k/config.js")[1] == {"token": "k"}
    assert ROUTER.resolve("PATCH", "/api/v1/anything/at/all")[0].target == "proxy"


def test_unknown_paths_are_404_and_other_methods_405_with_those_allowed() -> None:
    for path in ("/nope", "/cohorts/x", "/cohorts/1/2", "/array/k/configXjs", "/api/v1"):
        with pytest.raises(errors.NotFound):
            ROUTER.resolve("GET", path)
    with pytest.raises(errors.MethodNotAllowed) as exc:
        ROUTER.resolve("DELETE", "/cohorts")
    assert exc.value.detail == ["GET", "POST"]


def test_a_mount_names_the_public_path_in_messages() -> None:
    api: Router[str] = Router([Route("/query", ("POST",), "q")], mount="/api/v1")
    with pytest.raises(errors.NotFound, match="/api/v1/nope"):
        api.resolve("GET", "/nope")
    with pytest.raises(errors.MethodNotAllowed, match="GET is not allowed on /api/v1/query"):
        api.resolve("GET", "/query")


def test_labels_name_routes_not_paths() -> None:
    def label(path: str) -> str:
        return ROUTER.label(path, ROUTER.find(path))

    assert label("/healthz") == "/healthz"
    assert label("/cohorts/7") == "/cohorts/*"
    assert label("/array/k/other") == "/array/*"  # under a template's start, though 404
    assert label("/api/v1/query") == "/api/v1"
    assert label("/elsewhere") == "other"


def test_a_template_is_one_regex_with_its_parameters() -> None:
    route = Route("/privacy/requests/{id}/export", ("GET",), "x",
                  params={"id": "pr_[0-9a-f]{16}"})
    assert route.regex() == r"^/privacy/requests/(?P<id>pr_[0-9a-f]{16})/export$"
    assert re.match(route.regex(), "/privacy/requests/pr_0123456789abcdef/export")
