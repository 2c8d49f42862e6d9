"""The OpenAPI document against the live server: every route the server answers is in
it, every documented operation answers with a documented status, undocumented methods
answer 405 with ``Allow``, and schemathesis, run over the whole document, finds no 5xx
and no response that breaks its schema."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.api.openapi import template_regex
from aap.privacy.tokens import SubjectTokens
from aap.runner import ServerProcess, create_source
from aap.sources import Sources
from tests.conftest import examples, slow_fixture

ROLES = ("viewer", "analyst", "privacy", "admin")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


@dataclass(repr=False)
class Live:
    server: ServerProcess
    write_key: str
    api_keys: dict[str, str]
    subject: str
    doc: dict[str, Any]

    @property
    def url(self) -> str:
        return self.server.url

    def auth(self, op: dict[str, Any]) -> dict[str, str]:
        """The credentials an operation's security asks for (the lowest role it needs)."""
        schemes = {name for s in op.get("security", []) for name in s}
        if "apiKey" in schemes:
            m = re.search(r"role (\w+)", op.get("description", ""))
            return {"Authorization": "Bearer " + self.api_keys[m.group(1) if m else "admin"]}
        if "writeKey" in schemes:
            return {"Authorization": "Basic "
                    + base64.b64encode(f"{self.write_key}:".encode()).decode()}
        if "subjectToken" in schemes:
            return {"Authorization": "Subject " + self.subject}
        return {}


@slow_fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("openapi") / "data"
    write_key = create_source(data, "web", "--basis", "legitimate_interest")
    api_keys = {}
    for role in ROLES:
        out = subprocess.run([sys.executable, "-m", "aap", "keys", "create", "--role", role,
                              "--data-dir", str(data)], check=True, capture_output=True,
                             text=True).stdout
        api_keys[role] = out.strip().splitlines()[-1]
    server = ServerProcess(data, workers=1).start()
    try:
        (source,) = Sources(data).list()
        subject = SubjectTokens(data).issue(source.id, {"userId": "openapi-me"}, ttl_s=3600)
        doc = httpx.get(server.url + "/api/v1/openapi.json", timeout=30).json()
        yield Live(server, write_key, api_keys, subject, doc)
    finally:
        server.stop()


def _example(path: str, live: Live) -> str:
    """A concrete path for a template: the source's own key where a key goes."""
    return (path.replace("{writeKey}", live.write_key).replace("{token}", live.write_key)
            .replace("{id}", "pr_0123456789abcdef" if "privacy" in path else "1")
            if "/keys/" not in path else path.replace("{id}", "0123456789ab"))


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method.upper(), op


def test_document_is_valid_and_covers_both_routers(live: Live) -> None:
    doc = live.doc
    assert doc["openapi"].startswith("3.1")
    paths = set(doc["paths"])
    for expected in ("/v1/batch", "/v1/track", "/v1/consent", "/v1/privacy/requests",
                     "/v1/privacy/requests/{id}", "/v1/projects/{writeKey}/settings",
                     "/e/", "/com.snowplowanalytics.snowplow/tp2", "/sdk.js", "/healthz",
                     "/metrics", "/api/v1/openapi.json", "/api/v1/query",
                     "/api/v1/privacy/requests", "/api/v1/privacy/requests/{id}/export"):
        assert expected in paths, expected
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))
    for _, _, op in _operations(doc):
        assert "200" in op["responses"]
        assert not any(s.startswith("5") and s != "503" for s in op["responses"])


def test_every_documented_operation_answers_as_documented(live: Live) -> None:
    wrong = []
    with httpx.Client(base_url=live.url, timeout=60) as c:
        for path, method, op in _operations(live.doc):
            body = b"{}" if "requestBody" in op else None
            r = c.request(method, _example(path, live), headers={
                **live.auth(op), "Content-Type": "application/json"}, content=body)
            if str(r.status_code) not in op["responses"]:
                wrong.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
            elif r.status_code >= 400 and method != "HEAD":
                assert set(r.json()) == {"code", "message", "detail"}, (method, path)
    assert wrong == []


def test_undocumented_methods_answer_405_with_allow(live: Live) -> None:
    wrong = []
    with httpx.Client(base_url=live.url, timeout=60) as c:
        for path, item in live.doc["paths"].items():
            documented = {m.upper() for m in item}
            op = next(iter(item.values()))
            headers = {"Authorization": "Bearer " + live.api_keys["admin"]} \
                if path.startswith("/api/v1/") and path != "/api/v1/openapi.json" \
                else live.auth(op)
            for method in set(METHODS) - documented:
                r = c.request(method, _example(path, live), headers=headers)
                if r.status_code != 405:
                    wrong.append(f"{method} {path}: {r.status_code}")
                    continue
                allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
                if allow != documented:
                    wrong.append(f"{method} {path}: Allow {allow} but documented {documented}")
    assert wrong == []


def _documented(path: str, doc: dict[str, Any]) -> bool:
    return any(template_regex(t).match(path) for t in doc["paths"])


SEGMENTS = st.sampled_from(["v1", "api", "array", "projects", "privacy", "requests", "e",
                            "batch", "i", "v0", "settings", "config", "config.js", "x",
                            "insights", "keys", "cohorts", "query", "1", "sdk.js", "export",
                            "com.snowplowanalytics.snowplow", "tp2", "healthz", "metrics",
                            "pr_0123456789abcdef", "flags", "decide", ""])


@given(segments=st.lists(SEGMENTS, min_size=1, max_size=5))
@settings(max_examples=examples(150),  # each example is a request to a live server
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_route_answers_outside_the_document(live: Live, segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    if _documented(path, live.doc):
        return
    for method in ("GET", "POST"):
        r = httpx.request(method, live.url + path, timeout=60, headers={
            "Authorization": "Bearer " + live.api_keys["admin"]})
        assert r.status_code == 404, (method, path, r.status_code, r.text[:200])
        assert r.json()["code"] in ("not_found",)


def test_schemathesis_finds_no_server_error_and_no_schema_break(live: Live,
                                                                tmp_path: Path) -> None:
    """schemathesis over every documented operation, with the credentials each needs
    (a write key, an API key of the role the route needs, a subject token)."""
    config = tmp_path / "schemathesis.toml"
    key = live.write_key  # where a write key goes in a path or a query: the real one
    lines = ["[generation]", "max-examples = 4", "database = \"none\"", "",
             "[parameters]", *(f'"{where}" = "{key}"' for where in (
                 "path.writeKey", "path.token", "query.aid", "query.token", "query.api_key")),
             ""]
    for path, method, op in _operations(live.doc):
        auth = live.auth(op)
        if not auth:
            continue
        lines += ["[[operations]]", f'include-name = "{method} {path}"',
                  f'headers = {{ Authorization = "{auth["Authorization"]}" }}', ""]
    config.write_text("\n".join(lines))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run",
         live.url + "/api/v1/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,unsupported_method",
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "12",
         "--request-timeout", "60", "--suppress-health-check", "all",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = proc.stdout[-6000:]
    assert proc.returncode == 0, summary
    # every documented operation was tested (schemathesis leaves out the document's own
    # GET, which the tests above fetch)
    (report,) = (tmp_path / "report").glob("junit*.xml")
    tested = set(re.findall(r'<testcase[^>]*name="([^"]+)"', report.read_text()))
    documented = {f"{method} {path}" for path, method, _ in _operations(live.doc)}
    assert documented - tested == {"GET /api/v1/openapi.json"}, summary
    assert "failures" not in re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout).split("SUMMARY")[-1].lower() \
        or "0 failures" in proc.stdout, summary


def test_a_route_without_its_description_cannot_be_published() -> None:
    """The document is built from the route tables: a handler added without an Op (or a
    prefix handler that does not name its paths) stops the document, it cannot drift."""
    from aap.api.openapi import Op, document, documented

    async def bare(req: object) -> None: ...

    @documented(Op("no paths"))
    async def prefixed(req: object) -> None: ...

    with pytest.raises(LookupError, match="bare"):
        document([("/x", ("GET",), bare)], [], [], "/api/v1", {})
    with pytest.raises(LookupError, match="must name its paths"):
        document([], [("/p/", ("GET",), prefixed)], [], "/api/v1", {})
    ok = document([("/x", ("GET", "HEAD"), documented(Op("x", errors=(404,)))(bare))], [],
                  [("DELETE", r"^/things/(?P<id>\d{1,3})$", Op("t"))], "/api/v1", {})
    assert set(ok["paths"]) == {"/x", "/api/v1/things/{id}"}
    assert set(ok["paths"]["/x"]) == {"get", "head"}
    assert set(ok["paths"]["/x"]["get"]["responses"]) == {"200", "404"}
    (param,) = ok["paths"]["/api/v1/things/{id}"]["delete"]["parameters"]
    assert param["schema"]["pattern"] == r"^\d{1,3}$"
