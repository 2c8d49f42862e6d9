"""The shared PostgreSQL (``AAP_META_URL``) of ``aap cluster up --collectors 2
--processors 2 --query 1`` on Kafka (librdkafka's mock cluster) goes away under load, as
in a crash (``pg_ctl stop -m immediate``), and comes back on the same port a while later
(:mod:`tests.e2e.outage`).

Meanwhile every answer a client gets is a 200 or a 503 with ``Retry-After`` and a JSON
body naming the problem (never another 5xx); a query and a privacy request filed on the
query node are answered too (the request with 503 ``shared_state_unavailable``: it is
kept on the shared state); every role's ``/healthz`` stays 200 and none dies but a
processor killed meanwhile (``kill -9``), whose replacement waits for the database (it
does not exit to be started again and again) and runs once it is back. Once the
server is back every acknowledged event is published (what the query node reads) exactly
once, the query node counts them, and a privacy request filed then is done (with the
worker of before, whose thread ended at the first failed claim, it stayed pending)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aap.store.meta import SharedStateUnavailable
from aap.store.tiers import TierConfig
from tests.e2e.outage import body, check_common, through_outage
from tests.pg import new_database, postgres_cluster

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_postgresql_down_under_load_then_back_loses_and_doubles_nothing(
        tmp_path: Path) -> None:
    with postgres_cluster() as pg:  # a server of its own: the test stops it
        out = through_outage(tmp_path, new_database(pg.url), {},
                             TierConfig(str(tmp_path / "cluster" / "tiers")), pg.stop, pg.start,
                             kill_processor=True)
    Path(os.environ.get("AAP_OUTAGE_LOG", "/tmp/pg-outage.log")).write_text(out.log)
    check_common(out)
    # the request needs the shared state (rights requests live there): refused, not lost
    assert out.filed.status_code == 503, out.filed.text
    assert body(out.filed)["code"] == SharedStateUnavailable.code, out.filed.text
    assert out.erasure.status_code == 503 and not out.erased, out.erasure.text
