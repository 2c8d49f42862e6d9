"""The privacy portal (/portal/{source name}) in Chromium against the real server with the
demo's data: a person opens the link their site gave them (the subject token in the
fragment), withdraws analytics consent in one click (the ledger has the statement, the
next event is not stored), downloads a copy of their data, has it erased; without a token
the purposes and how to get a link; en/fr/de; 375 px; axe; no console errors.

Each test uses people of its own (fresh userIds): the demo's people stay as they are."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from aap.privacy.consent import ConsentLedger
from aap.privacy.ids import IdHasher
from aap.privacy.tokens import SubjectTokens
from aap.sources import Sources
from tests.e2e.web.helpers import TIMEOUT_MS, Watch, Web, assert_fits, axe_check, screenshot

expect.set_options(timeout=TIMEOUT_MS)  # a busy machine: every expect waits as long
SLOW_MS = 180_000
"""A privacy request is worked off by the core: on a busy machine it may take a while."""


def person() -> str:
    return f"portal-{uuid.uuid4().hex[:10]}"


def token(web: Web, user: str) -> str:
    src = Sources(web.data_dir).by_name(web.source)
    assert src is not None
    return SubjectTokens(web.data_dir).issue(src.id, {"userId": user}, ttl_s=3600)


def send(web: Web, user: str, n: int = 1) -> dict[str, Any]:
    batch = [{"type": "track", "userId": user, "event": "Portal Test",
              "messageId": str(uuid.uuid4())} for _ in range(n)]
    r = httpx.post(web.url + "/v1/batch", auth=(web.write_key, ""), json={"batch": batch},
                   timeout=60)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    out["ids"] = [m["messageId"] for m in batch]
    return out


@pytest.fixture
def open_portal(web: Web, web_browser: Any) -> Iterator[Callable[..., Any]]:
    opened: list[tuple[Any, Watch]] = []

    def make(fragment: str = "", *, width: int = 1280, locale: str = "en-US",
             source: str | None = None) -> Any:
        ctx = web_browser.new_context(viewport={"width": width, "height": 800}, locale=locale,
                                      accept_downloads=True)
        ctx.set_default_timeout(TIMEOUT_MS)
        page = ctx.new_page()
        w = Watch()
        w.attach(page)
        opened.append((ctx, w))
        page.goto(f"{web.url}/portal/{source or web.source}{fragment}")
        return page

    yield make
    problems = [e for _, w in opened for e in w.errors]
    for ctx, _ in opened:
        ctx.close()
    assert problems == [], problems


def test_withdrawing_consent_reaches_the_ledger_and_stops_the_next_event(
        web: Web, open_portal: Callable[..., Any]) -> None:
    me = person()
    tok = token(web, me)
    page = open_portal("#token=" + tok)
    expect(page.locator("h1")).to_contain_text(web.source)
    assert "#" not in page.url and "token" not in page.url  # the fragment is stripped
    assert page.evaluate("Object.values(sessionStorage)") == [tok]
    toggle = page.locator("button[data-purpose=analytics]")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    assert send(web, me)["not_stored"] == {"no_lawful_basis": 1}  # no consent yet

    toggle.click()  # one click grants
    expect(toggle).to_have_attribute("aria-pressed", "true")
    mine = {"Authorization": "Subject " + tok}
    got = httpx.get(web.url + "/v1/consent", headers=mine).json()["purposes"]["analytics"]
    assert got["granted"] is True
    assert send(web, me)["accepted"] == 1

    toggle.click()  # one click withdraws
    expect(toggle).to_have_attribute("aria-pressed", "false")
    expect(page.get_by_role("status")).to_contain_text("Saved")
    key = IdHasher.for_data_dir(web.data_dir).key(me)
    history = ConsentLedger(web.data_dir).history([key])
    assert [(s.purposes, s.channel) for s in history] == [
        ({"analytics": True}, "portal"), ({"analytics": False}, "portal")]
    out = send(web, me)
    assert out["accepted"] == 0 and out["not_stored"] == {"no_lawful_basis": 1}

    page.reload()  # the token stays with the tab, the choice is the ledger's
    expect(page.locator("button[data-purpose=analytics]")).to_have_attribute(
        "aria-pressed", "false")
    assert httpx.get(web.url + "/v1/consent", headers=mine).json()["purposes"]["analytics"][
        "granted"] is False


def test_a_copy_downloads_and_erasure_finishes(web: Web, open_portal: Callable[..., Any]) -> None:
    me = person()
    tok = token(web, me)
    r = httpx.post(web.url + "/v1/consent", headers={"Authorization": "Subject " + tok},
                   json={"purposes": {"analytics": True}})
    assert r.status_code == 200, r.text
    sent = send(web, me, 2)
    assert sent["accepted"] == 2
    web.server.wait_processed()
    page = open_portal("#token=" + tok)
    expect(page.get_by_text("You have made no request yet.")).to_be_visible()
    page.click("#file-access")
    done = page.locator("tr[data-type=access][data-status=done]")
    expect(done).to_be_visible(timeout=SLOW_MS)
    with page.expect_download() as dl:
        done.locator("button[data-download]").click()
    path = dl.value.path()
    with zipfile.ZipFile(io.BytesIO(open(path, "rb").read())) as z:
        events = json.loads(z.read("events.json"))
    assert sorted(e["message_id"] for e in events) == sorted(sent["ids"])

    page.click("#file-erasure")
    expect(page.get_by_text("Erase all data about you?")).to_be_visible()
    page.click("#confirm-erasure")
    expect(page.locator("tr[data-type=erasure][data-status=done]")).to_be_visible(
        timeout=SLOW_MS)
    marks = ", ".join("?" for _ in sent["ids"])
    assert web.server.sql(f"SELECT count(*) FROM events WHERE message_id IN ({marks})",
                          list(sent["ids"])) == [[0]]
    rows = httpx.get(web.url + "/v1/privacy/requests",
                     headers={"Authorization": "Subject " + tok}).json()["requests"]
    assert [(x["type"], x["status"]) for x in rows] == [("erasure", "done"), ("access", "done")]


def test_without_a_token_the_purposes_and_how_to_get_a_link(
        web: Web, open_portal: Callable[..., Any]) -> None:
    page = open_portal()
    info = httpx.get(f"{web.url}/v1/portal/{web.source}").json()
    for p in info["purposes"]:
        expect(page.get_by_role("heading", name=p["texts"]["en"]["title"])).to_be_visible()
        expect(page.get_by_text(p["texts"]["en"]["description"])).to_be_visible()
    expect(page.locator("[data-no-token]")).to_contain_text("Your data")
    assert page.locator("button[data-purpose]").count() == 0
    assert page.locator("#file-access").count() == 0
    axe_check(page)


def test_an_expired_link_says_so(web: Web, open_portal: Callable[..., Any]) -> None:
    src = Sources(web.data_dir).by_name(web.source)
    assert src is not None
    old = SubjectTokens(web.data_dir).issue(src.id, {"userId": person()}, ttl_s=-10)
    page = open_portal("#token=" + old)
    expect(page.get_by_role("alert")).to_contain_text("expired")
    assert page.evaluate("Object.keys(sessionStorage)") == []


def test_an_unknown_source(open_portal: Callable[..., Any]) -> None:
    page = open_portal(source="no-such-site")
    expect(page.get_by_role("alert")).to_contain_text("no privacy portal")


@pytest.mark.parametrize("locale,heading", [("fr-FR", "Vos données"), ("de-DE", "Ihre Daten")])
def test_french_and_german(web: Web, open_portal: Callable[..., Any], locale: str,
                           heading: str) -> None:
    page = open_portal("#token=" + token(web, person()), locale=locale)
    expect(page.locator("h1")).to_contain_text(heading)
    lang = locale[:2]
    assert page.evaluate("document.documentElement.lang") == lang
    info = httpx.get(f"{web.url}/v1/portal/{web.source}").json()
    for p in info["purposes"]:
        expect(page.get_by_role("heading", name=p["texts"][lang]["title"])).to_be_visible()


def test_narrow_keyboard_axe_and_screenshots(web: Web, open_portal: Callable[..., Any]) -> None:
    me = person()
    page = open_portal("#token=" + token(web, me), width=375)
    toggle = page.locator("button[data-purpose=analytics]")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    assert_fits(page, 375)  # no sideways scroll
    toggle.focus()
    page.keyboard.press("Space")  # the keyboard works as the mouse does
    expect(toggle).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    axe_check(page)
    screenshot(page, "portal")
    page.click("#file-erasure")
    expect(page.locator("#confirm-erasure")).to_be_focused()  # focus moves to the question
    axe_check(page)


def test_a_source_name_of_markup_stays_text(open_portal: Callable[..., Any]) -> None:
    page = open_portal(source="%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    expect(page.get_by_role("alert")).to_contain_text("no privacy portal")
    assert page.locator("img").count() == 0 and dialogs == []
    assert "<img" in page.title()  # shown as the text it is
