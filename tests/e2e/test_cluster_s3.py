"""``aap cluster up --collectors 2 --processors 2 --query 1`` with its tier files on S3
(``AAP_TIER_URL=s3://…``, moto's server on 127.0.0.1), Kafka (librdkafka's mock cluster)
and PostgreSQL: the processors publish their batch files to the bucket and the query node
reads them from it. Under load the S3 server goes away for a while and comes back on its
port (moto keeps its objects in the test's process; :mod:`tests.e2e.outage`).

Meanwhile collectors keep accepting events (S3 is not on the ingestion path); a query on
the query node is answered 503 ``storage_unavailable`` with ``Retry-After``, never a 500;
an access and an erasure request filed meanwhile wait and are done once S3 is back (no
event of the erased person is left in the files); a processor killed meanwhile
(``kill -9``) is replaced, and its replacement starts while S3 is away and stays up;
every other role's
``/healthz`` stays 200 and none dies. Once S3 is back every acknowledged
event is in the bucket's published files exactly once and the query node counts them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from aap.runner import free_port
from aap.store.tiers import STORAGE_UNAVAILABLE, TierConfig
from tests.e2e.outage import body, check_common, through_outage
from tests.pg import new_database

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BUCKET = "aap-tiers"


class S3:
    """moto's S3 server on a fixed port, stopped and started again at will (its objects
    live in this process, so they outlast a stop)."""

    def __init__(self) -> None:
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: Any = None
        self.start()
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1").create_bucket(
            Bucket=BUCKET)

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def env(self) -> dict[str, str]:
        return {"AAP_TIER_URL": f"s3://{BUCKET}/cluster", "AAP_S3_ENDPOINT_URL": self.endpoint,
                "AAP_S3_ACCESS_KEY": "test", "AAP_S3_SECRET_KEY": "test"}

    def tiers(self) -> TierConfig:
        return TierConfig(f"s3://{BUCKET}/cluster", s3_endpoint=self.endpoint,
                          s3_access_key="test", s3_secret_key="test")


def test_the_cluster_publishes_to_s3_and_rides_out_an_s3_outage(tmp_path: Path, pg: Any
                                                                 ) -> None:
    s3 = S3()
    try:
        out = through_outage(tmp_path, new_database(pg.url), s3.env(), s3.tiers(), s3.stop,
                             s3.start, kill_processor=True)
    finally:
        s3.stop()
    Path(os.environ.get("AAP_OUTAGE_LOG", "/tmp/s3-outage.log")).write_text(out.log)
    check_common(out)
    assert out.during > 0, "the collectors stopped accepting while S3 was away"
    assert out.asked.status_code == 503, out.asked.text
    assert body(out.asked)["code"] == STORAGE_UNAVAILABLE, out.asked.text
    assert out.filed.status_code == 200, out.filed.text  # PostgreSQL is there
    # the request waited for S3 (it was not failed for the outage) and was done once back
    assert out.filed_then is not None and out.filed_then["status"] == "done", out.filed_then
    # so was an erasure, and it reached the files on S3 (check_common: none of the
    # person's events is published)
    assert out.erasure.status_code == 200, out.erasure.text
    assert out.erasure_then is not None and out.erasure_then["status"] == "done", (
        out.erasure_then)
    assert out.erased, "the erased person had no event acknowledged"
