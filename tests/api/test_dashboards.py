"""Dashboards and the sql views list over the REST API: a real server on 127.0.0.1,
keys of every role made with the CLI; on both engines of the shared state (the files
under the data dir, then PostgreSQL: ``meta_url_module``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aap.query import sql
from aap.runner import ServerProcess
from tests.api.test_query_api import new_key
from tests.conftest import slow_fixture

ROLES = ("viewer", "analyst", "privacy", "admin")


class Api:
    def __init__(self, server: ServerProcess, keys: dict[str, str]) -> None:
        self.server = server
        self.keys = keys

    def call(self, method: str, path: str, role: str = "analyst", **kw: Any) -> httpx.Response:
        return httpx.request(method, self.server.url + "/api/v1" + path, timeout=60,
                             headers={"Authorization": f"Bearer {self.keys[role]}"}, **kw)

    def ok(self, method: str, path: str, role: str = "analyst", **kw: Any) -> Any:
        r = self.call(method, path, role, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def save(self, name: str) -> int:
        doc = {"kind": "trends", "series": [{"event": "$page"}], "date_from": "-7d"}
        out: int = self.ok("POST", "/insights", json={"name": name, "query": doc})["id"]
        return out


@slow_fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, meta_url_module: str) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("dash") / "data"
    keys = {role: new_key(data, role) for role in ROLES}
    server = ServerProcess(data, workers=1).start()
    try:
        yield Api(server, keys)
    finally:
        server.stop()


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message", "detail"} and body["code"] == code


def test_an_analyst_creates_a_dashboard_a_viewer_reads_it(api: Api) -> None:
    a, b = api.save("pages a"), api.save("pages b")
    made = api.ok("POST", "/dashboards", json={"name": "Weekly", "insights": [b, a, b]})
    assert made["insights"] == [b, a]  # once each, in the order given
    got = api.ok("GET", f"/dashboards/{made['id']}", "viewer")
    assert got["name"] == "Weekly"
    assert got["insights"] == [{"id": b, "name": "pages b"}, {"id": a, "name": "pages a"}]
    listed = api.ok("GET", "/dashboards", "viewer")["dashboards"]
    assert {"id": made["id"], "name": "Weekly", "insights": [b, a]}.items() <= \
        next(d for d in listed if d["id"] == made["id"]).items()
    # the viewer runs each of its insights as the page does
    for item in got["insights"]:
        run = api.ok("GET", f"/insights/{item['id']}", "viewer")
        assert run["name"] == item["name"] and "series" in run["result"]


def test_a_viewer_cannot_create_or_delete(api: Api) -> None:
    made = api.ok("POST", "/dashboards", json={"name": "Mine", "insights": []})
    _error(api.call("POST", "/dashboards", "viewer", json={"name": "x"}), 403, "role_too_low")
    _error(api.call("DELETE", f"/dashboards/{made['id']}", "viewer"), 403, "role_too_low")
    assert api.ok("GET", f"/dashboards/{made['id']}", "viewer")["name"] == "Mine"
    assert api.ok("DELETE", f"/dashboards/{made['id']}") == {"deleted": made["id"]}
    _error(api.call("GET", f"/dashboards/{made['id']}", "viewer"), 404, "unknown_dashboard")


def test_unknown_ids_are_404_and_bad_bodies_400(api: Api) -> None:
    _error(api.call("GET", "/dashboards/999999999999"), 404, "unknown_dashboard")
    _error(api.call("DELETE", "/dashboards/999999999999"), 404, "unknown_dashboard")
    r = api.call("POST", "/dashboards", json={"name": "x", "insights": [999999999]})
    _error(r, 404, "unknown_insight")
    assert r.json()["detail"] == {"missing": [999999999]}
    for body in ({"insights": []}, {"name": ""}, {"name": "x", "insights": ["1"]},
                 {"name": "x", "insights": [0]}, {"name": "x", "extra": 1}, ["x"]):
        _error(api.call("POST", "/dashboards", json=body), 400, "invalid_dashboard")
    _error(api.call("POST", "/dashboards", content=b"{nope"), 400, "invalid_json")
    assert api.call("GET", "/dashboards/abc").status_code == 404


def test_hostile_names_are_stored_as_text(api: Api) -> None:
    names = ['<img src=x onerror=alert(1)>', '"><script>alert(1)</script>',
             "'; DROP TABLE dashboards; --", "ünï\u202ecode"]
    for name in names:
        i = api.save(name)
        made = api.ok("POST", "/dashboards", json={"name": name, "insights": [i]})
        got = api.ok("GET", f"/dashboards/{made['id']}", "viewer")
        assert got["name"] == name and got["insights"] == [{"id": i, "name": name}]
    assert api.call("GET", "/dashboards", "viewer").status_code == 200


def test_sql_views_list_what_each_role_sees(api: Api) -> None:
    _error(api.call("GET", "/sql/views", "viewer"), 403, "role_too_low")
    for role in ("analyst", "privacy"):
        views = {v["name"]: v for v in api.ok("GET", "/sql/views", role)["views"]}
        assert set(views) == set(sql.VIEWS)
        for name, v in views.items():
            seen = [c["name"] for c in v["columns"]]
            assert seen == list(sql.visible_columns(name, role))
            assert sorted(seen + v["hidden"]) == sorted(sql.VIEWS[name][1])
        if role == "analyst":
            assert "person_id" in views["events"]["hidden"]
        else:
            assert views["events"]["hidden"] == []
    # every column it lists is one a query of that role can read
    cols = [c["name"] for c in api.ok("GET", "/sql/views")["views"][0]["columns"]]
    out = api.ok("POST", "/query", json={"kind": "sql", "query":
                                         f"SELECT {', '.join(cols)} FROM events LIMIT 1"})
    assert out["columns"] == cols
