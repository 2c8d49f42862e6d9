"""The privacy portal's public endpoints, against a real server: the purposes in plain
language, a person's own consent choices (read and changed with their subject token) and
their own privacy requests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aap.privacy.plain import TEXTS
from aap.privacy.tokens import SubjectTokens
from aap.runner import ServerProcess, create_source
from aap.sources import Sources
from tests.conftest import slow_fixture


@dataclass
class Site:
    server: ServerProcess
    data: Path
    key: str
    source_id: str

    def token(self, user: str, source_id: str | None = None) -> dict[str, str]:
        tok = SubjectTokens(self.data).issue(source_id or self.source_id, {"userId": user})
        return {"Authorization": "Subject " + tok}

    def send(self, user: str) -> dict[str, Any]:
        ev = {"type": "track", "userId": user, "event": "Portal Test",
              "messageId": str(uuid.uuid4())}
        r = httpx.post(self.server.url + "/v1/batch", auth=(self.key, ""), json={"batch": [ev]})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@slow_fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("portal") / "data"
    key = create_source(data, "shop", "--purpose", "analytics", "--purpose", "marketing")
    create_source(data, "club", "--purpose", "analytics", "--purpose", "marketing",
                  "--purpose", "personalization:legitimate_interest")
    create_source(data, "slow shop", "--rate-limit", "0.2")
    (shop,) = [s for s in Sources(data).list() if s.name == "shop"]
    with ServerProcess(data, workers=1) as server:
        yield Site(server, data, key, shop.id)


def test_the_purposes_in_plain_language(site: Site) -> None:
    r = httpx.get(site.server.url + "/v1/portal/club")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "club"
    got = {p["id"]: p for p in body["purposes"]}
    assert list(got) == ["analytics", "marketing", "personalization"]
    assert got["analytics"]["basis"] == "consent" and got["analytics"]["consent"] is True
    assert (got["personalization"]["basis"] == "legitimate_interest"
            and got["personalization"]["consent"] is False)
    for pid, p in got.items():
        for lang in ("en", "fr", "de"):
            title, description = TEXTS[pid][lang]
            assert p["texts"][lang] == {"title": title, "description": description}


@pytest.mark.parametrize("name", ["nope", "x" * 200, "<img src=x onerror=alert(1)>",
                                  "%00", "shop%2F..", "' OR 1=1 --"])
def test_an_unknown_source_is_a_404_that_does_not_echo_the_name(site: Site, name: str) -> None:
    r = httpx.get(site.server.url + "/v1/portal/" + name)
    assert r.status_code == 404, r.text
    body = r.json()
    assert {"code", "message"} <= body.keys()
    assert "<img" not in r.text and "OR 1=1" not in r.text


def test_choices_are_read_and_changed_with_the_token_and_stop_events(site: Site) -> None:
    me, other = f"portal-{uuid.uuid4().hex[:8]}", f"portal-{uuid.uuid4().hex[:8]}"
    url = site.server.url + "/v1/consent"
    first = httpx.get(url, headers=site.token(me))
    assert first.status_code == 200, first.text
    p = first.json()["purposes"]
    assert p["analytics"] == {"granted": False, "basis": "consent", "consent": True,
                              "at_ms": None}
    assert list(p) == ["analytics", "marketing"]
    # no statement yet: a consent purpose has no basis, the event is not stored
    assert site.send(me)["not_stored"] == {"no_lawful_basis": 1}

    r = httpx.post(url, headers=site.token(me), json={"purposes": {"analytics": True}})
    assert r.status_code == 200 and r.json()["recorded"] == 1, r.text
    now = httpx.get(url, headers=site.token(me)).json()["purposes"]
    assert now["analytics"]["granted"] is True and now["analytics"]["at_ms"] > 0
    assert now["marketing"]["granted"] is False
    assert site.send(me)["accepted"] == 1
    # another person's choices are their own
    assert httpx.get(url, headers=site.token(other)).json()["purposes"]["analytics"][
        "granted"] is False

    r = httpx.post(url, headers=site.token(me), json={"purposes": {"analytics": False}})
    assert r.status_code == 200, r.text
    assert httpx.get(url, headers=site.token(me)).json()["purposes"]["analytics"][
        "granted"] is False
    out = site.send(me)
    assert out["accepted"] == 0 and out["not_stored"] == {"no_lawful_basis": 1}


def test_own_requests_are_listed_with_their_status(site: Site) -> None:
    me, other = f"portal-{uuid.uuid4().hex[:8]}", f"portal-{uuid.uuid4().hex[:8]}"
    url = site.server.url + "/v1/privacy/requests"
    empty = httpx.get(url, headers=site.token(me))
    assert empty.status_code == 200 and empty.json() == {"requests": []}, empty.text
    rid = httpx.post(url, headers=site.token(me), json={"type": "access"}).json()["id"]
    deadline = time.monotonic() + 180
    while True:
        (got,) = httpx.get(url, headers=site.token(me)).json()["requests"]
        assert got["id"] == rid and got["type"] == "access"
        if got["status"] == "done":
            break
        assert got["status"] in ("pending", "running") and time.monotonic() < deadline
        time.sleep(0.1)
    assert got == httpx.get(f"{url}/{rid}", headers=site.token(me)).json()
    assert httpx.get(url, headers=site.token(other)).json() == {"requests": []}


@pytest.mark.parametrize("auth", [None, "Subject", "Subject nope", "Bearer x",
                                  "Subject " + "a" * 5000 + ".b"])
def test_a_bad_token_is_refused_with_a_json_401(site: Site, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    for path in ("/v1/consent", "/v1/privacy/requests"):
        r = httpx.get(site.server.url + path, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert {"code", "message"} <= r.json().keys()


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"purposes": {}}', b'{"purposes": {"x": true}}',
                                  b'{"purposes": {"analytics": "yes"}}',
                                  b'{"purposes": {"analytics": true}, "userId": "someone"}'])
def test_hostile_consent_bodies_are_4xx(site: Site, body: bytes) -> None:
    r = httpx.post(site.server.url + "/v1/consent", headers=site.token("portal-hostile"),
                   content=body)
    assert 400 <= r.status_code < 500, r.text
    assert {"code", "message"} <= r.json().keys()


def test_the_source_rate_limit_applies(site: Site) -> None:
    url = site.server.url + "/v1/portal/slow shop"
    codes = [httpx.get(url).status_code for _ in range(3)]
    assert codes[0] == 200 and 429 in codes, codes


def test_openapi_documents_them(site: Site) -> None:
    paths = httpx.get(site.server.url + "/api/v1/openapi.json").json()["paths"]
    assert "get" in paths["/v1/portal/{name}"]
    assert {"get", "post"} <= paths["/v1/consent"].keys()
    assert {"get", "post"} <= paths["/v1/privacy/requests"].keys()
    assert "subjectToken" in str(paths["/v1/consent"]["get"]["security"])


def test_a_purpose_on_another_basis_applies_without_a_statement(site: Site) -> None:
    (club,) = [s for s in Sources(site.data).list() if s.name == "club"]
    r = httpx.get(site.server.url + "/v1/consent", headers=site.token("portal-li", club.id))
    p = r.json()["purposes"]
    assert p["personalization"] == {"granted": True, "basis": "legitimate_interest",
                                    "consent": False, "at_ms": None}
    assert p["analytics"]["granted"] is False


def test_gpc_is_honoured_for_a_statement_made_with_the_token(site: Site) -> None:
    me = f"portal-{uuid.uuid4().hex[:8]}"
    url = site.server.url + "/v1/consent"
    r = httpx.post(url, headers={**site.token(me), "Sec-GPC": "1"},
                   json={"purposes": {"analytics": True, "marketing": True}})
    assert r.status_code == 200, r.text
    p = httpx.get(url, headers=site.token(me)).json()["purposes"]
    assert p["analytics"]["granted"] is True and p["marketing"]["granted"] is False
