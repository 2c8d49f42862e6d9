"""Analysts reach no personal data through any door: the class test of issue 12 §1.

A real server on 127.0.0.1 with API keys of every role. Insight documents of every kind
name personal fields at random places, under random casings and separators: an analyst
key gets 403 ``personal_data`` (never a series), a privacy key gets the answer and a
``data.read`` entry in the audit log. The same documents on non-personal fields work for
an analyst. SQL of every shape that reads personal columns is refused for analysts and
audited at role privacy, decided from DuckDB's plan, not from the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aap.datadir import DataDir
from aap.runner import ServerProcess, create_source
from tests.api.test_query_api import new_key
from tests.conftest import examples, slow_fixture

DAY = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0,
                                                      microsecond=0)
CANARY = "guard-canary@example.test"
"""Sealed by the collector (issue 12 §2): never in the warehouse in clear, so never in
an answer, at any role."""
NESTED_SESSION = "guard-session-4471"
NESTED_CITY = "Guard-Ville"
"""Kept by the collector inside plain objects, personal for queries: what the run-time
check on breakdown values must find."""


def at(minutes: int) -> str:
    return (DAY + timedelta(minutes=minutes)).isoformat()


BATCH = [
    {"type": "identify", "userId": "u1", "timestamp": at(0),
     "traits": {"plan": "pro", "Email": CANARY, "city": "Lyon"}},
    {"type": "track", "userId": "u1", "event": "Signed Up", "timestamp": at(1),
     "properties": {"plan": "pro", "email": CANARY, "revenue": 3}},
    {"type": "track", "userId": "u2", "event": "Signed Up", "timestamp": at(2),
     "properties": {"plan": "free", "revenue": 5}},
    {"type": "track", "userId": "u2", "event": "Order Completed", "timestamp": at(3),
     "properties": {"revenue": 7}},
    {"type": "page", "userId": "u1", "name": "Home", "timestamp": at(4),
     "properties": {"path": "/"}},
    # personal keys nested in objects whose own names are plain: the collector seals the
    # email and the phone (issue 12 §2) and keeps the session id and the city, which are
    # personal for queries only (``aap.query.guard.QUERY_ONLY``)
    {"type": "track", "userId": "u3", "event": "Signed Up", "timestamp": at(5),
     "properties": {"contact": {"Email": CANARY, "session_id": NESTED_SESSION}}},
    {"type": "identify", "userId": "u3", "timestamp": at(6),
     "traits": {"profile": {"phone": "+33 6 12 34 56 78", "city": NESTED_CITY}}},
]


class Api:
    def __init__(self, server: ServerProcess, keys: dict[str, str]) -> None:
        self.server = server
        self.keys = keys

    def call(self, method: str, path: str, role: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.server.url + "/api/v1" + path, timeout=120,
                             headers={"Authorization": f"Bearer {self.keys[role]}"}, **kw)

    def audit(self) -> list[dict[str, Any]]:
        lines = DataDir(self.server.data_dir).audit_log.read_text().splitlines()
        return [json.loads(x) for x in lines if x]


@slow_fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("guard") / "data"
    write_key = create_source(data, "web", "--historical", "--basis", "contract")
    keys = {role: new_key(data, role) for role in ("viewer", "analyst", "privacy", "admin")}
    server = ServerProcess(data, workers=1).start()
    try:
        r = httpx.post(server.url + "/v1/batch", json={"batch": BATCH}, auth=(write_key, ""),
                       timeout=60)
        assert r.status_code == 200, r.text
        server.wait_processed(timeout=120)
        yield Api(server, keys)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cohorts(api: Api) -> dict[str, int]:
    """A behavioural cohort on a personal trait (made at role privacy) and one on a plain
    trait."""
    out = {}
    for name, prop, value in (("by-email", "Email", CANARY), ("by-plan", "plan", "pro")):
        r = api.call("POST", "/cohorts", "privacy", json={"name": name, "behavioural": {
            "event": "Signed Up", "person_filters": [{"property": prop, "value": value}]}})
        assert r.status_code == 200, r.text
        out[name] = r.json()["id"]
    return out


# -- names --

PERSONAL_WORDS: list[tuple[tuple[str, ...], bool]] = [
    # (words, still personal when glued in any casing)
    (("email",), True), (("e", "mail"), True), (("email", "address"), True),
    (("phone",), True), (("phone", "number"), True), (("ip",), True),
    (("ip", "address"), True), (("last", "ip"), True), (("mobile", "phone"), True),
    (("user", "id"), True), (("anonymous", "id"), True), (("distinct", "id"), True),
    (("device", "id"), True), (("first", "name"), True), (("last", "name"), True),
    (("person", "id"), True), (("session", "id"), True), (("city",), True),
    (("region",), True), (("geoip", "city", "name"), True), (("billing", "email"), True),
    (("date", "of", "birth"), True), (("contact", "email"), True),
]
PLAIN = ["plan", "country", "browser", "product_name", "zip_file", "shipping", "tooltip",
         "revenue", "utm_source", "$browser", "Plan", "PRODUCT_NAME", "path"]


def _case(word: str, style: str, i: int, rnd: list[bool]) -> str:
    if style == "lower":
        return word.lower()
    if style == "upper":
        return word.upper()
    if style == "title" or (style == "camel" and i > 0):
        return word[:1].upper() + word[1:]
    if style == "camel":
        return word
    return "".join(c.upper() if rnd[j % len(rnd)] else c for j, c in enumerate(word))


@st.composite
def personal_name(draw: st.DrawFn) -> str:
    words, glued_any = draw(st.sampled_from(PERSONAL_WORDS))
    sep = draw(st.sampled_from(["_", "-", " ", "", "."] if len(words) > 1 else [""]))
    styles = ["lower", "upper", "title", "camel", "random"]
    if sep == "" and not glued_any:
        styles = ["lower", "title", "camel"]
    style = draw(st.sampled_from(styles))
    rnd = draw(st.lists(st.booleans(), min_size=1, max_size=6))
    name = sep.join(_case(w, style, i, rnd) for i, w in enumerate(words))
    prefix = draw(st.sampled_from(["", "", "$", "$set.", "contact.", "properties."]))
    return prefix + name


# -- documents --

PLACES = {
    "trends": ["filters", "breakdown", "series_property", "series_filters", "formula_filters",
               "cohort", "breakdown_cohort"],
    "funnel": ["filters", "breakdown", "step_filters", "exclusion_filters", "cohort"],
    "retention": ["filters", "cohort"],
    "paths": ["filters", "cohort"],
    "stickiness": ["filters", "series_filters", "cohort"],
    "lifecycle": ["filters", "cohort"],
}


def make_doc(kind: str, place: str, name: str, ftype: str, cohort: int,
             compare: bool) -> dict[str, Any]:
    f = {"property": name, "type": ftype, "operator": "eq", "value": CANARY}
    doc: dict[str, Any] = {"kind": kind, "date_from": "-3d"}
    series: list[dict[str, Any]] = [{"event": "Signed Up"}]
    if kind in ("trends", "stickiness"):
        doc["series"] = series
    if kind == "trends":
        doc["compare"] = compare
    if kind == "funnel":
        doc["steps"] = [{"event": "Signed Up"}, {"event": "Order Completed"}]
    if kind == "retention":
        doc.update(start_event="Signed Up", return_event="Order Completed")
    if place == "filters":
        doc["filters"] = [f]
    elif place == "breakdown":
        doc.update(breakdown=name, breakdown_type=ftype)
    elif place == "series_property":
        series[0].update(math="sum", property=name)
    elif place == "series_filters":
        series[0]["filters"] = [f]
    elif place == "formula_filters":
        series.append({"event": "Order Completed", "filters": [f]})
        doc["formula"] = "A + B"
    elif place == "step_filters":
        doc["steps"][1]["filters"] = [f]
    elif place == "exclusion_filters":
        doc["exclusions"] = [{"event": "$page", "from_step": 0, "to_step": 1, "filters": [f]}]
    elif place == "cohort":
        doc["cohort"] = cohort
    elif place == "breakdown_cohort":
        doc.update(breakdown_type="cohort", breakdown_cohorts=[cohort])
    return doc


@st.composite
def documents(draw: st.DrawFn, names: st.SearchStrategy[str], cohort: int
              ) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(PLACES)))
    place = draw(st.sampled_from(PLACES[kind]))
    return make_doc(kind, place, draw(names), draw(st.sampled_from(["event", "person"])),
                    cohort, draw(st.booleans()))


def _fields(entry: dict[str, Any]) -> str:
    return json.dumps(entry["detail"].get("fields", []))


# each example: queries to a live server
SETTINGS = settings(max_examples=examples(60),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@SETTINGS
@given(data=st.data())
def test_personal_fields_are_refused_below_privacy_and_audited_above(
        api: Api, cohorts: dict[str, int], data: st.DataObject) -> None:
    doc = data.draw(documents(personal_name(), cohorts["by-email"]))
    for role in ("analyst", "viewer"):
        r = api.call("POST", "/query", role, json=doc)
        assert r.status_code == 403, (role, doc, r.text)
        body = r.json()
        assert set(body) == {"code", "message", "detail"} and "\"values\"" not in r.text
        if role == "analyst":
            assert body["code"] == "personal_data" and "privacy" in body["message"], body
            assert CANARY not in r.text
    before = len(api.audit())
    r = api.call("POST", "/query", "privacy", json=doc)
    assert r.status_code == 200, (doc, r.text)
    new = [e for e in api.audit()[before:] if e["action"] == "data.read"]
    assert len(new) == 1 and new[0]["detail"]["role"] == "privacy", new
    assert new[0]["detail"]["fields"], new
    assert CANARY not in json.dumps(new)  # the audit names fields, never values


@SETTINGS
@given(data=st.data())
def test_the_same_documents_on_plain_fields_work_for_analysts(
        api: Api, cohorts: dict[str, int], data: st.DataObject) -> None:
    doc = data.draw(documents(st.sampled_from(PLAIN), cohorts["by-plan"]))
    before = len(api.audit())
    r = api.call("POST", "/query", "analyst", json=doc)
    assert r.status_code == 200, (doc, r.text)
    assert not [e for e in api.audit()[before:] if e["action"] == "data.read"]


def test_a_breakdown_by_person_is_refused_and_never_keyed_by_a_person(api: Api) -> None:
    for breakdown, btype in (("person_id", "event"), ("email", "event"), ("Email", "person"),
                             ("session_id", "event"), ("city", "event")):
        doc = {"kind": "trends", "series": [{"event": "Signed Up"}], "date_from": "-3d",
               "breakdown": breakdown, "breakdown_type": btype}
        r = api.call("POST", "/query", "analyst", json=doc)
        assert r.status_code == 403 and breakdown in r.json()["message"], r.text
        out = api.call("POST", "/query", "admin", json=doc)
        assert out.status_code == 200, out.text

    def at_privacy(breakdown: str, btype: str) -> tuple[httpx.Response, set[Any]]:
        doc = {"kind": "trends", "series": [{"event": "Signed Up"}], "date_from": "-3d",
               "breakdown": breakdown, "breakdown_type": btype}
        before = len(api.audit())
        out = api.call("POST", "/query", "privacy", json=doc)
        assert out.status_code == 200, out.text
        reads = [e for e in api.audit()[before:] if e["action"] == "data.read"]
        assert len(reads) == 1 and breakdown in _fields(reads[0]), reads
        return out, {s["breakdown_value"] for s in out.json()["series"]
                     if sum(s["values"])}

    # the email is sealed at collection: allowed and audited at privacy, never in clear
    out, _ = at_privacy("Email", "person")
    assert CANARY not in out.text
    # what the guard keeps from analysts is really there at privacy: one series per person
    # (u1, u2, u3 signed up), and the city trait the collector keeps
    _, persons = at_privacy("person_id", "event")
    assert len(persons - {None}) == 3, persons
    _, cities = at_privacy("city", "person")
    assert "Lyon" in cities, cities


@pytest.mark.parametrize(("kind", "name", "btype"), [
    ("trends", "contact", "event"), ("trends", "profile", "person"),
    ("funnel", "contact", "event"), ("funnel", "profile", "person")])
def test_a_breakdown_on_an_object_holding_personal_keys_is_refused(
        api: Api, kind: str, name: str, btype: str) -> None:
    doc: dict[str, Any] = {"kind": kind, "date_from": "-3d", "breakdown": name,
                           "breakdown_type": btype}
    if kind == "trends":
        doc["series"] = [{"event": "Signed Up"}]
    else:
        doc["steps"] = [{"event": "Signed Up"}, {"event": "Order Completed"}]
    nested, value = {"contact": ("session_id", NESTED_SESSION),
                     "profile": ("city", NESTED_CITY)}[name]
    r = api.call("POST", "/query", "analyst", json=doc)
    assert r.status_code == 403 and r.json()["code"] == "personal_data", r.text
    for secret in (CANARY, "+33", value):
        assert secret not in r.text
    before = len(api.audit())
    r = api.call("POST", "/query", "privacy", json=doc)
    assert r.status_code == 200, r.text
    (entry,) = [e for e in api.audit()[before:] if e["action"] == "data.read"]
    assert f"{nested} (nested key)" in _fields(entry), entry
    # the object is there at privacy, without what the collector sealed out of it
    assert value in r.text and CANARY not in r.text and "+33" not in r.text


OLD_BATCH = [
    {"type": "track", "userId": "u3", "event": "Signed Up", "timestamp": at(5),
     "properties": {"contact": {"channel": "mail"}}},
    {"type": "identify", "userId": "u3", "timestamp": at(6),
     "traits": {"profile": {"tier": "gold"}}},
    {"type": "track", "userId": "u2", "event": "Signed Up", "timestamp": at(2)},
    {"type": "track", "userId": "u2", "event": "Order Completed", "timestamp": at(3)},
]
OLD_PHONE = "+33 6 98 76 54 32"


@slow_fixture(scope="module")
def old_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A store holding, inside plain objects, personal keys in clear, as an AAP from before
    the collector's scrubbing (issue 12 §2) stored them: the rows are rewritten in the
    warehouse while no server runs, then a server is started on it."""
    import duckdb

    data = tmp_path_factory.mktemp("guard-old") / "data"
    write_key = create_source(data, "web", "--historical", "--basis", "contract")
    keys = {role: new_key(data, role) for role in ("analyst", "privacy")}
    server = ServerProcess(data, workers=1).start()
    try:
        r = httpx.post(server.url + "/v1/batch", json={"batch": OLD_BATCH},
                       auth=(write_key, ""), timeout=60)
        assert r.status_code == 200, r.text
        server.wait_processed(timeout=120)
    finally:
        server.stop()
    con = duckdb.connect(str(DataDir(data).hot_db))
    try:
        n = con.execute("UPDATE events_raw SET properties = ? WHERE properties->>'$.contact'"
                        " IS NOT NULL", [json.dumps({"contact": {"Email": CANARY}})]
                        ).fetchone()
        m = con.execute("UPDATE persons SET traits = ? WHERE traits->>'$.profile' IS NOT NULL",
                        [json.dumps({"profile": {"phone": OLD_PHONE}})]).fetchone()
        assert n == (1,) and m == (1,), (n, m)
    finally:
        con.close()
    server = ServerProcess(data, workers=1).start()
    try:
        yield Api(server, keys)
    finally:
        server.stop()


@pytest.mark.parametrize(("kind", "name", "btype", "nested", "value"), [
    ("trends", "contact", "event", "Email", CANARY),
    ("trends", "profile", "person", "phone", OLD_PHONE),
    ("funnel", "contact", "event", "Email", CANARY),
    ("funnel", "profile", "person", "phone", OLD_PHONE)])
def test_old_data_holding_personal_keys_in_clear_is_refused_too(
        old_api: Api, kind: str, name: str, btype: str, nested: str, value: str) -> None:
    """Defence in depth: data stored before the collector scrubbed nested personal keys is
    still kept from analysts by the run-time check on breakdown values."""
    doc: dict[str, Any] = {"kind": kind, "date_from": "-3d", "breakdown": name,
                           "breakdown_type": btype}
    if kind == "trends":
        doc["series"] = [{"event": "Signed Up"}]
    else:
        doc["steps"] = [{"event": "Signed Up"}, {"event": "Order Completed"}]
    r = old_api.call("POST", "/query", "analyst", json=doc)
    assert r.status_code == 403 and r.json()["code"] == "personal_data", r.text
    assert value not in r.text and "+33" not in r.text
    before = len(old_api.audit())
    r = old_api.call("POST", "/query", "privacy", json=doc)
    assert r.status_code == 200, r.text
    (entry,) = [e for e in old_api.audit()[before:] if e["action"] == "data.read"]
    assert f"{nested} (nested key)" in _fields(entry), entry
    assert value in r.text  # the old row really holds it; privacy reads it, audited


def test_cohorts_of_identifiers_and_personal_traits_need_privacy(
        api: Api, cohorts: dict[str, int]) -> None:
    r = api.call("POST", "/cohorts", "analyst", json={"name": "x", "static": {"ids": ["u1"]}})
    assert r.status_code == 403 and r.json()["code"] == "personal_data"
    r = api.call("POST", "/cohorts", "analyst", json={"name": "x", "behavioural": {
        "person_filters": [{"property": "E-Mail", "value": CANARY}]}})
    assert r.status_code == 403 and "E-Mail" in r.json()["message"]
    before = len(api.audit())
    r = api.call("POST", "/cohorts", "privacy",
                 json={"name": "vip", "static": {"ids": ["u1", "secret-user-77"]}})
    assert r.status_code == 200, r.text
    (entry,) = [e for e in api.audit()[before:] if e["action"] == "cohort.created"]
    assert entry["detail"] == {"cohort": r.json()["id"], "kind": "static", "ids_processed": 2}
    assert "secret-user-77" not in DataDir(api.server.data_dir).audit_log.read_text()
    # an analyst may count a static cohort (a group), not a cohort of personal traits
    ok = api.call("POST", "/query", "analyst", json={
        "kind": "trends", "series": [{"event": "Signed Up"}], "cohort": r.json()["id"],
        "date_from": "-3d"})
    assert ok.status_code == 200 and sum(ok.json()["series"][0]["values"]) == 1
    # the values of personal filters are hidden from lower roles in listings
    for role in ("viewer", "analyst"):
        listed = api.call("GET", "/cohorts", role)
        assert listed.status_code == 200 and CANARY not in listed.text
    assert CANARY in api.call("GET", "/cohorts", "privacy").text


def test_saved_insights_follow_the_same_rule(api: Api) -> None:
    doc = {"kind": "trends", "series": [{"event": "Signed Up"}], "date_from": "-3d",
           "filters": [{"property": "email", "value": CANARY}]}
    r = api.call("POST", "/insights", "analyst", json={"name": "leak", "query": doc})
    assert r.status_code == 403 and r.json()["code"] == "personal_data"
    saved = api.call("POST", "/insights", "privacy", json={"name": "by email", "query": doc})
    assert saved.status_code == 200, saved.text
    sql = {"kind": "sql", "query": "SELECT count(*) AS n FROM persons"
                                   f" WHERE traits->>'Email' = '{CANARY}'"}
    assert api.call("POST", "/insights", "privacy",
                    json={"name": "sql by email", "query": sql}).status_code == 200
    path = f"/insights/{saved.json()['id']}"
    for role in ("viewer", "analyst"):
        run = api.call("GET", path, role)
        assert run.status_code == 403 and run.json()["code"] == "personal_data", run.text
        listed = api.call("GET", "/insights", role)
        assert listed.status_code == 200 and CANARY not in listed.text
    before = len(api.audit())
    run = api.call("GET", path, "privacy")
    # allowed and audited; the email was sealed at collection, so no event has it in clear
    assert run.status_code == 200 and sum(run.json()["result"]["series"][0]["values"]) == 0
    assert CANARY not in json.dumps(run.json()["result"])
    assert [e["action"] for e in api.audit()[before:]] == ["data.read"]
    # a personal field the collector keeps: the same rule, and the real answer at privacy
    by_city = {"kind": "trends", "series": [{"event": "Signed Up"}], "date_from": "-3d",
               "filters": [{"property": "city", "type": "person", "value": "Lyon"}]}
    r = api.call("POST", "/insights", "analyst", json={"name": "leak", "query": by_city})
    assert r.status_code == 403 and r.json()["code"] == "personal_data"
    saved = api.call("POST", "/insights", "privacy", json={"name": "by city", "query": by_city})
    assert saved.status_code == 200, saved.text
    path = f"/insights/{saved.json()['id']}"
    for role in ("viewer", "analyst"):
        run = api.call("GET", path, role)
        assert run.status_code == 403 and run.json()["code"] == "personal_data", run.text
        listed = api.call("GET", "/insights", role)
        assert listed.status_code == 200 and "Lyon" not in listed.text
    before = len(api.audit())
    run = api.call("GET", path, "privacy")
    assert run.status_code == 200 and sum(run.json()["result"]["series"][0]["values"]) == 1
    assert [e["action"] for e in api.audit()[before:]] == ["data.read"]


# -- the sql kind --

READS_PERSONAL = [
    ("SELECT p FROM persons p", "persons.traits"),
    ("SELECT to_json(p) AS j FROM persons p", "persons.traits"),
    ("SELECT list(p) AS l FROM persons p", "persons.traits"),
    ("SELECT COLUMNS('tr.*') FROM persons", "persons.traits"),
    ("SELECT COLUMNS('.*') FROM persons", "persons.traits"),
    ("SELECT * EXCLUDE (first_seen) FROM persons", "persons.traits"),
    ("SELECT persons.* FROM persons", "persons.traits"),
    ("SELECT * FROM (SELECT * FROM persons) x", "persons.traits"),
    ("WITH x AS (SELECT traits AS plan FROM persons) SELECT plan FROM x", "persons.traits"),
    ("SELECT u FROM persons, unnest([traits]) AS t(u)", "persons.traits"),
    ("SELECT {'a': traits} AS s FROM persons", "persons.traits"),
    ("SELECT (SELECT max(traits) FROM persons) AS x", "persons.traits"),
    ("SELECT x.t FROM events e, LATERAL (SELECT p.traits AS t FROM persons p"
     " WHERE p.person_id = e.person_id) x", "persons.traits"),
    ("SELECT properties->>'email' AS m FROM events", "events.properties"),
    ("SELECT e FROM events e", "events.properties"),
    ("SELECT count(*) AS n FROM events WHERE person_id IS NOT NULL", "events.person_id"),
    ("SELECT max(city) AS c FROM events", "events.city"),
    ("SELECT count(DISTINCT session_id) AS n FROM sessions", "sessions.session_id"),
]


@pytest.mark.parametrize(("query", "column"), READS_PERSONAL)
def test_sql_that_reads_personal_data_is_hidden_below_privacy_and_audited_above(
        api: Api, query: str, column: str) -> None:
    r = api.call("POST", "/query", "analyst", json={"kind": "sql", "query": query})
    # refused (it names a personal column), or answered without any: never the data
    assert r.status_code in (200, 403), r.text
    assert CANARY not in r.text
    if r.status_code == 403:
        assert r.json()["code"] == "personal_data" and column in r.json()["message"]
    else:
        assert not {"traits", "properties", "person_id", "city"} & set(r.json()["columns"])
    before = len(api.audit())
    r = api.call("POST", "/query", "privacy", json={"kind": "sql", "query": query})
    assert r.status_code == 200, r.text
    reads = [e for e in api.audit()[before:] if e["action"] == "data.read"]
    assert len(reads) == 1 and column in reads[0]["detail"]["columns"], reads


@pytest.mark.parametrize("query", [
    "SELECT person_id FROM events", "SELECT traits->>'Email' AS m FROM persons",
    "SELECT count(*) AS n FROM events WHERE city = 'Lyon'",
    "WITH x AS (SELECT session_id AS s FROM sessions) SELECT count(s) FROM x",
    "SELECT properties FROM events",
])
def test_sql_naming_a_personal_column_is_refused_for_analysts(api: Api, query: str) -> None:
    r = api.call("POST", "/query", "analyst", json={"kind": "sql", "query": query})
    assert r.status_code == 403 and r.json()["code"] == "personal_data", r.text
    assert "privacy" in r.json()["message"]


@pytest.mark.parametrize("query", [
    "SELECT count(*) AS n FROM persons", "SELECT count(*) AS n FROM events",
    "SELECT event, count(*) AS n FROM events GROUP BY event",
    "SELECT max(first_seen) AS f FROM persons",
    "WITH x AS (SELECT traits AS t FROM persons) SELECT count(*) AS n FROM x",
])
def test_sql_that_reads_no_personal_column_is_not_audited(api: Api, query: str) -> None:
    before = len(api.audit())
    r = api.call("POST", "/query", "privacy", json={"kind": "sql", "query": query})
    assert r.status_code == 200, r.text
    assert not [e for e in api.audit()[before:] if e["action"] == "data.read"]


def test_cli_query_role_is_checked_and_audited_as_the_operator(api: Api, tmp_path: Path
                                                               ) -> None:
    from tests.api.test_query_api import aap

    f = tmp_path / "q.json"
    f.write_text(json.dumps({"kind": "trends", "series": [{"event": "Signed Up"}],
                             "date_from": "-3d", "breakdown": "email"}))
    out = aap(api.server.data_dir, "query", str(f), "--json")
    assert out.returncode != 0 and "personal_data" in out.stderr and "privacy" in out.stderr
    before = len(api.audit())
    out = aap(api.server.data_dir, "query", str(f), "--json", "--role", "privacy")
    assert out.returncode == 0, out.stderr
    (entry,) = [e for e in api.audit()[before:] if e["action"] == "data.read"]
    assert entry["detail"]["role"] == "privacy"


SQL_SHAPES = [
    "SELECT {col} AS {alias} FROM {view}",
    "SELECT \"{ucol}\" AS {alias} FROM {view}",
    "WITH c AS (SELECT {col} AS {alias} FROM {view}) SELECT {alias} FROM c",
    "SELECT x.{alias} FROM (SELECT {ucol} AS {alias} FROM {view}) x",
    "SELECT to_json({{'k': {col}}}) AS {alias} FROM {view}",
    "SELECT list({col}) AS {alias} FROM {view}",
    "SELECT count(*) AS {alias} FROM {view} WHERE {ucol} IS NOT NULL",
    "SELECT t.r.{col} AS {alias} FROM (SELECT v AS r FROM {view} v) t",
    "SELECT COLUMNS('^{col}$') FROM {view}",
    "SELECT u AS {alias} FROM {view}, unnest([{col}::VARCHAR]) t(u)",
    "SELECT {alias} FROM {view} v, LATERAL (SELECT v.{col} AS {alias}) l",
    "SELECT max(length({col}::VARCHAR)) AS {alias} FROM {view}",
    "SELECT 1 AS {alias} FROM {view} GROUP BY {col} HAVING count(*) > 0 LIMIT 1",
]
PERSONAL_COLUMNS = [(v, c) for v, cols in (
    ("events", ("person_id", "session_id", "properties", "city", "region")),
    ("persons", ("person_id", "traits")), ("sessions", ("session_id", "person_id")),
    ("orders", ("person_id", "session_id"))) for c in cols]


@settings(max_examples=examples(40),  # each example: queries to a live server
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=st.sampled_from(SQL_SHAPES), target=st.sampled_from(PERSONAL_COLUMNS),
       alias=st.sampled_from(["plan", "x", "total", "n", "value"]),
       upper=st.lists(st.booleans(), min_size=1, max_size=8))
def test_sql_of_any_shape_reading_a_personal_column(
        api: Api, shape: str, target: tuple[str, str], alias: str, upper: list[bool]) -> None:
    view, col = target
    ucol = "".join(c.upper() if upper[i % len(upper)] else c for i, c in enumerate(col))
    query = shape.format(col=col, ucol=ucol, alias=alias, view=view)
    r = api.call("POST", "/query", "analyst", json={"kind": "sql", "query": query})
    assert r.status_code in (403, 200), (query, r.text)
    if r.status_code == 403:
        assert r.json()["code"] == "personal_data", (query, r.text)
    else:  # nothing personal came back: the column was not there to read
        assert CANARY not in r.text and col not in r.json()["columns"], (query, r.text)
    before = len(api.audit())
    r = api.call("POST", "/query", "privacy", json={"kind": "sql", "query": query})
    assert r.status_code == 200, (query, r.text)
    reads = [e for e in api.audit()[before:] if e["action"] == "data.read"]
    assert len(reads) == 1 and f"{view}.{col}" in reads[0]["detail"]["columns"], (query, reads)
