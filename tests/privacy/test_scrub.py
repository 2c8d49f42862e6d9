"""The scrubbing rule on its own (no server): addresses found wherever they sit in a
string, personal names at any depth, and everything taken out put back exactly."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from aap.events import Event
from aap.privacy.personal import is_personal_path
from aap.privacy.scrub import REDACTED, holds_address, put_back, redact, take_personal
from aap.privacy.sealing import Sealer

emails = st.builds(lambda a, b, c: f"{a}.{b}@{c}.example.org",
                   st.from_regex(r"[a-z][a-z0-9]{2,8}", fullmatch=True),
                   st.from_regex(r"[a-z0-9_+-]{1,6}", fullmatch=True),
                   st.from_regex(r"[a-z]{3,8}", fullmatch=True))
v4 = st.ip_addresses(v=4).filter(lambda a: a.packed[0] not in (0, 127)).map(str)
v6 = st.ip_addresses(v=6).filter(
    lambda a: not (a.is_loopback or a.is_unspecified or (a.ipv4_mapped is not None and (
        a.ipv4_mapped.is_loopback or a.ipv4_mapped.is_unspecified)))).map(str)
mapped = v4.map(lambda a: f"::ffff:{a}")
addresses = st.one_of(emails, v4, v6, mapped)
# text around an address: letters, spaces and punctuation that end an address
filler = st.text(alphabet="abcxyz ,;!()<>\"'=&?#/|", max_size=12)
clean = st.text(alphabet=st.characters(blacklist_characters="@%:.",
                                       blacklist_categories=("Cs",)), max_size=40)


def shapes(addr: str) -> list[str]:
    """The address as it appears in text and URLs: bare, bracketed with a port (IPs),
    percent-encoded in a query."""
    out = [addr, quote(addr, safe="")]
    if "@" not in addr:
        host = f"[{addr}]" if ":" in addr else addr
        out += [f"{host}:8443", f"http://{host}:8080/x?y=1"]
    return out


@given(addresses, filler, filler, st.data())
def test_an_address_anywhere_in_a_string_is_redacted(addr: str, before: str, after: str,
                                                     data: st.DataObject) -> None:
    shape = data.draw(st.sampled_from(shapes(addr)))
    text = f"{before} {shape} {after}"
    out = redact(text)
    assert addr not in out and quote(addr, safe="") not in out, (text, out)
    assert REDACTED in out
    assert holds_address(text)


@given(clean)
def test_text_without_an_address_is_left_alone(text: str) -> None:
    assert redact(text) == text
    assert not holds_address(text)


@given(addresses, st.sampled_from(("query", "fragment", "path")))
def test_urls_keep_their_path_and_other_values(addr: str, part: str) -> None:
    url = {"query": f"https://shop.example/docs/a?plan=pro&who={addr}&x=1",
           "fragment": f"https://shop.example/docs/a?plan=pro#who={addr}",
           "path": f"https://shop.example/docs/a/{addr}/b?plan=pro"}[part]
    out = redact(url)
    assert out.startswith("https://shop.example/docs/a") and "plan=pro" in out
    assert addr not in out


def test_versions_timestamps_and_words_are_not_addresses() -> None:
    ua = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
    assert redact(ua, user_agent=True) == ua
    for text in ("2026-12-03T22:06:33.123Z", "std::vector", "version 1.2.3", "a :: b",
                 "10.0.19045.3803", "price 12.50 EUR", "https://shop.example:8443/a",
                 "http://127.0.0.1:8000/docs", "http://[::1]:8000/", "0.0.0.0"):
        assert redact(text) == text, text


NAMES = ("Email", "e_mail", "EmailAddress", "E-Mail", "$email", "IP_Address", "$ip",
         "last_ip", "LASTIP", "ipAddress", "phoneNumber", "first_name")
keys = st.sampled_from(("a", "info", "meta", "plan", "items", "x"))
json_leaf = st.one_of(st.integers(-5, 5), st.booleans(), st.none(),
                      st.text(alphabet="abc -_", max_size=8))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=10)


@st.composite
def planted(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A random nested object with personal fields and addresses at random paths."""
    root: dict[str, Any] = draw(st.dictionaries(keys, json_values, max_size=4))
    canaries = []
    for i in range(draw(st.integers(1, 4))):
        node: Any = root
        for _ in range(draw(st.integers(0, 3))):
            k = draw(keys)
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        canary = draw(addresses)
        if draw(st.booleans()):
            node[draw(st.sampled_from(NAMES))] = canary
        else:
            node[f"note{i}"] = [f"see {canary}"] if draw(st.booleans()) else f"see {canary}"
        canaries.append(canary)
    return root, canaries


@given(planted(), planted(), planted(), st.sampled_from(("traits", "properties", "context")))
def test_take_personal_leaves_nothing_and_put_back_restores_all(
        props: tuple[dict[str, Any], list[str]], traits: tuple[dict[str, Any], list[str]],
        ctx: tuple[dict[str, Any], list[str]], _: str) -> None:
    ev = Event(type="track", event="Clicked", message_id="m1", received_at=datetime.now(UTC),
               source="s", properties=props[0], traits=traits[0], context=ctx[0])
    before = copy.deepcopy(msgspec.to_builtins(ev))
    taken = take_personal(ev, hash)
    stored = msgspec.json.encode(ev).decode()
    for canary in props[1] + traits[1] + ctx[1]:
        assert canary not in stored and quote(canary, safe="") not in stored
    for path, _value in taken:  # nothing personal by name is left under its name
        assert path[0] in ("traits", "properties", "context")
    # round trip through the log's encoding, then unseal
    back = msgspec.json.decode(msgspec.json.encode(ev), type=Event)
    put_back(back, msgspec.json.decode(msgspec.json.encode(taken)))
    assert msgspec.to_builtins(back) == before


def test_names_of_things_are_not_people() -> None:
    assert not is_personal_path("context.library.name")
    assert not is_personal_path("context.os.name")
    assert not is_personal_path("products.name")
    assert is_personal_path("context.device.name")
    assert is_personal_path("contact.email") and is_personal_path("$set.Email")
    ev = Event(type="track", event="x", message_id="m", received_at=datetime.now(UTC),
               source="s", context={"library": {"name": "analytics.js"},
                                    "device": {"name": "Alice's phone", "ip": "203.0.113.9"}},
               properties={"products": [{"name": "Shoe", "email": "a@b.example.org"}]})
    taken = take_personal(ev, hash)
    assert ev.context == {"library": {"name": "analytics.js"}, "device": {}}
    assert ev.properties == {"products": [{"name": "Shoe"}]}
    assert sorted(str(p) for p, _ in taken) == sorted(str(p) for p in (
        ["context", "device", "name"], ["context", "device", "ip"],
        ["properties", "products", 0, "email"]))


def test_ids_holding_an_address_become_keyed_hashes() -> None:
    ev = Event(type="group", message_id="a@b.example.org", group_id="10.1.2.3",
               user_id="u", received_at=datetime.now(UTC), source="s")
    take_personal(ev, lambda s: len(s))
    assert ev.message_id == "redacted-000000000000000f"
    assert ev.group_id == "redacted-0000000000000008"


def test_page_company_and_product_names_are_not_people() -> None:
    at = datetime.now(UTC)
    page = Event(type="page", name="Pricing", message_id="m", user_id="u", received_at=at,
                 source="s", properties={"name": "Pricing", "email": "p@q.example.org"})
    group = Event(type="group", group_id="acme", message_id="m", user_id="u", received_at=at,
                  source="s", traits={"name": "Acme Inc", "email": "billing@acme.example"})
    person = Event(type="identify", message_id="m", user_id="u", received_at=at, source="s",
                   traits={"name": "Alice Martin", "plan": "pro"})
    product = Event(type="track", event="Product Viewed", message_id="m", user_id="u",
                    received_at=at, source="s", properties={"name": "Shoe", "sku": "s1"})
    invited = Event(type="track", event="User Invited", message_id="m", user_id="u",
                    received_at=at, source="s", properties={"name": "Bob Smith"})
    for ev in (page, group, person, product, invited):
        take_personal(ev, hash)
    assert product.properties == {"name": "Shoe", "sku": "s1"}
    assert invited.properties == {}
    assert page.properties == {"name": "Pricing"}
    assert group.traits == {"name": "Acme Inc"}
    assert person.traits == {"plan": "pro"}


def test_a_deeply_nested_object_is_taken_out_whole_and_put_back() -> None:
    deep: Any = {"email": "deep@x.example.org"}
    for _ in range(300):
        deep = {"a": [deep]}
    ev = Event(type="track", event="x", message_id="m", received_at=datetime.now(UTC),
               source="s", properties={"deep": deep, "plan": "pro"})
    before = msgspec.json.encode(ev.properties)
    taken = take_personal(ev, hash)
    assert b"deep@x" not in msgspec.json.encode(ev.properties)
    assert ev.properties["plan"] == "pro"
    put_back(ev, taken)
    assert msgspec.json.encode(ev.properties) == before


def test_sealed_fields_open_with_the_key_and_are_gone_with_it(tmp_path: Path, meta_url: str
                                                             ) -> None:
    """Sealing puts what was taken under the subject's data key: unseal gives it back;
    after crypto-shredding the key, it stays unreadable. Without a raw id to seal under
    (CNIL mode: a visitor key only) it is dropped. (Keys in SQLite, then in PostgreSQL.)"""
    sealer = Sealer(tmp_path)
    at = datetime.now(UTC)
    ev = Event(type="track", event="Mailed", message_id="m1", user_id="seal-user",
               received_at=at, source="s",
               properties={"contact": {"Email": "sealed@x.example.org"},
                           "url": "https://a.example/?ip=203.0.113.5"})
    anon = Event(type="track", event="Mailed", message_id="m2", anonymous_key=42,
                 received_at=at, source="s", properties={"e_mail": "gone@x.example.org"})
    sent = msgspec.to_builtins(ev.properties)
    sealer.seal([ev, anon])
    stored = msgspec.json.encode([ev, anon])
    assert b"sealed@x" not in stored and b"203.0.113.5" not in stored and b"gone@x" not in stored
    assert set(ev.sealed) == {"fields"} and anon.sealed == {}
    logged = msgspec.json.decode(stored, type=list[Event])
    opened = sealer.unseal(logged[0])
    assert opened.user_id == "seal-user" and opened.properties == sent
    assert sealer.unseal(logged[1]).properties == {}
    assert ev.user_key is not None
    sealer.keystore.destroy([ev.user_key])
    again = Sealer(tmp_path).unseal(msgspec.json.decode(stored, type=list[Event])[0])
    assert again.properties == {"contact": {}, "url": "https://a.example/?ip=[redacted]"}


def test_hostile_strings_take_linear_time() -> None:
    """30,000 letters then an "@", runs of colons or percent signs: each pattern starts
    only where its run starts, so this takes milliseconds (quadratic backtracking would
    take minutes: the bound is loose enough for a loaded machine)."""
    n = 30_000
    hostile = ["a" * n + "@", "%" + "a" * n, "::" + "a" * n, ":a" * (n // 2),
               "a." * n + "@x", "[::" + "f" * n + "]", "%40" * (n // 3), "1:2:3:4:5:6:" * (n // 12)]
    t0 = time.process_time()
    for s in hostile:
        redact(s)
    assert time.process_time() - t0 < 20


def test_a_devices_own_id_and_push_token_are_taken_a_products_id_stays() -> None:
    """The mobile SDKs send the phone's vendor id / Android id as ``context.device.id``
    (Segment's, RudderStack's) and a push token: they single out one phone, so they are
    sealed like ``deviceId``; ``id`` elsewhere (a product's, a page's) stays."""
    ev = Event(type="screen", name="Home", message_id="m", user_id="u",
               received_at=datetime.now(UTC), source="s",
               context={"device": {"id": "7F3A-VENDOR-ID", "Token": "push-tok",
                                   "model": "iPhone15,2", "manufacturer": "Apple"},
                        "app": {"id": "com.example.app"}},
               properties={"products": [{"id": "sku-1"}], "id": "home"})
    taken = take_personal(ev, hash)
    assert ev.context == {"device": {"model": "iPhone15,2", "manufacturer": "Apple"},
                          "app": {"id": "com.example.app"}}
    assert ev.properties == {"products": [{"id": "sku-1"}], "id": "home"}
    assert sorted(str(p) for p, _ in taken) == sorted(str(p) for p in (
        ["context", "device", "id"], ["context", "device", "Token"]))
    assert is_personal_path("context.device.id") and not is_personal_path("context.app.id")
