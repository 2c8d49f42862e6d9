"""Planted user ids, emails and names never reach the disk in plain text: not in the log,
the warehouse, the warm tier, the ledgers or the server's own log — in plain, hex or
base64 form — while the events themselves are stored and the keys can open them."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest

from aap.datadir import DataDir
from aap.privacy.sealing import Sealer
from aap.runner import ServerProcess, create_source
from tests.privacy.test_ip_canary import scan

pytestmark = pytest.mark.slow  # a server end to end

USER = "canary-user-3c9f1e"
ANON = "canary-anon-77b2d0"
OLD_USER = "canary-previous-5aa1"
EMAIL = "canary.person.81f2@example.org"
NAME = "Canaryname Zqxwv"
MARKER = "stored-marker-0b7e"  # not personal: proves the scan reads what was stored


def forms(text: str) -> list[bytes]:
    """The text, its hex, and its base64 at each of the three alignments it can have
    inside a longer base64 string."""
    raw = text.encode()
    out = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw)
        skip = (pad * 4 + 2) // 3  # characters touched by the padding bytes
        out.add(enc[skip:len(enc) - 4])
        out.add(base64.urlsafe_b64encode(b"\0" * pad + raw)[skip:len(enc) - 4])
    return sorted(out)


def warehouse_text(data: Path) -> str:
    """Every row of every table of the hot store and of every Parquet file, as text."""
    parts = []
    con = duckdb.connect(str(DataDir(data).hot_db), read_only=True)
    try:
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            parts.append(repr(con.execute(f'SELECT * FROM "{table}"').fetchall()))
    finally:
        con.close()
    for f in data.rglob("*.parquet"):
        parts.append(repr(pq.read_table(f).to_pylist()))
    return "\n".join(parts)


@pytest.mark.parametrize("publish", ["0", "0.5"], ids=["local", "publishing"])
def test_personal_data_is_only_on_disk_sealed(tmp_path: Path, publish: str) -> None:
    """With publishing on, the published persons/orders files are scanned too."""
    data = tmp_path / "data"
    key = create_source(data, "crm", "--basis", "contract", "--historical")
    env = {"AAP_HOT_DAYS": "1", "AAP_TIERING_INTERVAL_S": "0.5", "AAP_PUBLISH_SECONDS": publish}
    day = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    batch = [
        {"type": "identify", "anonymousId": ANON, "timestamp": day,
         "traits": {"email": EMAIL, "name": NAME, "plan": "pro"}},
        {"type": "identify", "userId": USER, "anonymousId": ANON, "timestamp": day,
         "traits": {"email": EMAIL, "plan": "pro"}, "context": {"traits": {"email": EMAIL}}},
        {"type": "track", "userId": USER, "event": "Ordered", "timestamp": day,
         "properties": {"note": MARKER}},
        {"type": "alias", "previousId": OLD_USER, "userId": USER, "timestamp": day},
    ]
    with ServerProcess(data, workers=2, env=env) as server:
        for m in batch:
            m["messageId"] = str(uuid.uuid4())
        r = httpx.post(server.url + "/v1/batch", auth=(key, ""), json={"batch": batch})
        assert r.status_code == 200 and r.json()["accepted"] == 4
        server.wait_processed()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list(data.rglob("*.parquet")):
            time.sleep(0.2)
        assert list(data.rglob("*.parquet")), "the day should be in the warm tier"
        while publish != "0" and time.monotonic() < deadline and not list(
                data.rglob("warm/persons/*.parquet")):
            time.sleep(0.2)
        assert publish == "0" or list(data.rglob("warm/persons/*.parquet")), \
            "the persons should be published"
        # one person, identified, with the non-personal trait only
        assert server.sql("SELECT count(DISTINCT person_id) FROM events") == [[1]]
        assert server.sql("SELECT identified, traits::VARCHAR = '{\"plan\": \"pro\"}'"
                          " FROM persons WHERE identified") == [[True, True]]
    # DuckDB and Parquet compress what they store, so their contents are scanned as
    # decoded text too, next to every file's raw bytes
    contents = warehouse_text(data)
    assert MARKER in contents and scan(tmp_path, MARKER.encode()), "the scans must see rows"
    for canary in (USER, ANON, OLD_USER, EMAIL, NAME):
        for form in forms(canary):
            assert scan(tmp_path, form) == [], (canary, form)
            assert form.decode() not in contents, (canary, form)
    # and the data dir's keys open the sealed copies again (until a person is erased)
    from tests.conftest import Running

    stored = Running(ServerProcess(data), key).stored()
    assert {e.user_id for e in stored} == {None, USER}
    assert {e.previous_id for e in stored} == {None, OLD_USER}
    first = next(e for e in stored if e.type == "identify" and e.user_id is None)
    assert first.anonymous_id == ANON and first.traits == {"email": EMAIL, "name": NAME,
                                                           "plan": "pro"}
    assert Sealer(data).keystore.path.stat().st_mode & 0o777 == 0o600
