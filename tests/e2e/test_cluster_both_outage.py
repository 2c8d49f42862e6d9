"""Both shared parts of ``aap cluster up --collectors 2 --processors 2 --query 1`` go away
at once under load — PostgreSQL (``AAP_META_URL``, ``pg_ctl stop -m immediate``) and S3
(``AAP_TIER_URL``, moto's server) — as when the network to both fails, and a processor is
killed meanwhile (``kill -9``); PostgreSQL comes back first, then S3
(:mod:`tests.e2e.outage`).

Meanwhile every answer is a 200 or a 503 with ``Retry-After`` and a JSON body naming the
problem; a query, a privacy request and an erasure filed on the query node are answered
503 (they need the shared state first: refused, not lost); every role's ``/healthz``
stays 200, no other role dies, and the killed processor's replacement waits for the
database and then runs. Once both are back every acknowledged event is in the bucket's
published files exactly once and the query node counts them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aap.store.meta import SharedStateUnavailable
from tests.e2e.outage import body, check_common, through_outage
from tests.e2e.test_cluster_s3 import S3
from tests.pg import new_database, postgres_cluster

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_postgresql_and_s3_away_at_once_then_back_loses_and_doubles_nothing(
        tmp_path: Path) -> None:
    s3 = S3()
    try:
        with postgres_cluster() as pg:  # a server of its own: the test stops it

            def down() -> None:
                pg.stop()
                s3.stop()

            def back() -> None:
                pg.start()
                s3.start()

            out = through_outage(tmp_path, new_database(pg.url), s3.env(), s3.tiers(),
                                 down, back, kill_processor=True)
    finally:
        s3.stop()
    Path(os.environ.get("AAP_OUTAGE_LOG", "/tmp/both-outage.log")).write_text(out.log)
    check_common(out)
    assert out.asked.status_code == 503, out.asked.text
    for filed in (out.filed, out.erasure):
        assert filed.status_code == 503, filed.text
        assert body(filed)["code"] == SharedStateUnavailable.code, filed.text
    assert not out.erased
