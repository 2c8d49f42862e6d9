"""The core of a query node (``aap serve --role query``): the REST API over a reader
warehouse.

The reader warehouse is a DuckDB of the node's own (its data dir) with no processor, no
log, no tiering and no publisher: its events are the batch, daily and monthly files of
the shared list (:class:`aap.store.filelist.SharedList` on ``AAP_META_URL``, files in
``AAP_TIER_URL``), read through one snapshot of the list per query as the processor's
own queries read them; its hot table stays empty. ``person_overrides`` mirrors the shared
merges (:mod:`aap.store.mirror`) and ``person_flags`` the shared flags (restriction,
objection: :mod:`aap.store.flags`, brought up to date before each query). Persons,
orders, order items and products are published too and read as views of their batch
files (:mod:`aap.store.published`); the persons' ids (``person_ids``) are not, so what
needs them is refused (:mod:`aap.query.published`; the person lookup and the consent
lookup of the privacy center likewise).

Privacy requests filed here go to the shared requests table (``AAP_META_URL``) and are
run by a processor's core: this node has no rows of its own to erase and never runs
one. Its ``/healthz`` says whether the shared list and merges were read lately.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aap import errors
from aap.api.rest import RestAPI
from aap.core.operator_sql import sql_answer
from aap.privacy.audit import AuditLog
from aap.privacy.ids import IdHasher
from aap.privacy.keystore import Keystore
from aap.privacy.requests import Requests
from aap.privacy.rights import Rights
from aap.settings import Settings
from aap.sources import Sources
from aap.store import flags
from aap.store.identities import SharedIdentities
from aap.store.mirror import OverridesMirror
from aap.store.publish import shared_list
from aap.store.tiers import TierConfig, TierStore
from aap.store.warehouse import Warehouse

STALE_AFTER_S = 30.0
"""``/healthz`` answers 503 when the merges were last read longer ago than this."""


def query_role_problem(settings: Settings) -> str | None:
    """Why this configuration cannot run a query node (None: it can)."""
    missing = []
    if settings.tiers.publish_seconds <= 0:
        missing.append("AAP_PUBLISH_SECONDS > 0 (the processors publish their events as"
                       " batch files: a query node reads nothing else)")
    if not settings.storage.meta_url:
        missing.append("AAP_META_URL=postgresql://… (the list of those files, the merges"
                       " and the privacy requests, shared with the processors; a SQLite"
                       " file under one data dir is not)")
    if not missing:
        return None
    return ("--role query needs " + " and ".join(missing) + ", set the same way as for the"
            " processors, with AAP_TIER_URL naming the processors' tier store")


class ReaderAPI(RestAPI):
    """The REST API of a query node: what needs unpublished tables says so."""

    reader_health: Callable[[], dict[str, Any]] | None = None
    """Set by :class:`ReaderCore`: what ``GET /health`` (role admin) answers here."""

    def health(self, params: dict[str, str], body: bytes, role: str) -> Any:
        if self.reader_health is None:
            raise errors.ServiceUnavailable("starting", code="starting")
        return self.reader_health()

    def person_lookup(self, params: dict[str, str], body: bytes, role: str) -> Any:
        from aap.query.published import refuse

        raise refuse("the person lookup")

    def consent_lookup(self, params: dict[str, str], body: bytes, role: str) -> Any:
        from aap.query.published import refuse

        raise refuse("the consent lookup (it finds a person's ids)")


class ReaderCore:
    """What :class:`aap.core.app.CoreApp` serves on a query node."""

    def __init__(self, settings: Settings) -> None:
        problem = query_role_problem(settings)
        if problem:
            raise ValueError(problem)
        self.settings = settings
        data = settings.data_path
        meta = settings.storage.meta_url
        self.warehouse = Warehouse(
            settings.data.warehouse, tiers=TierStore(TierConfig.from_settings(settings)),
            memory_limit=settings.storage.warehouse_memory,
            shared_list=shared_list(data, settings.tiers.publish_seconds, meta))
        self.warehouse.published_only = True
        self.identities = SharedIdentities(data, meta)
        self.mirror = OverridesMirror(self.warehouse, self.identities)
        self.mirror.reload()  # before the first query
        hasher = IdHasher.for_data_dir(data)  # the processors' key (AAP_ID_HASH_KEY)
        rights = Rights(data, self.warehouse, Keystore(data), hasher, AuditLog(data))
        # files requests on the shared table; never started: a processor runs them
        self.privacy = Requests(data, rights, Sources(data).scopes)
        self.rest = ReaderAPI(settings, self.warehouse, self.privacy)
        self.rest.reader_health = self.health
        self.started_at = time.time()

    def start(self) -> None:
        # the shared flags (restriction, objection): person_flags is their mirror,
        # brought up to date before each query, as on a processor (aap.store.flags)
        flags.attach(self.warehouse, self.settings.data_path, self.settings.storage.meta_url)
        self.mirror.start()
        self.rest.start()

    def close(self) -> None:
        self.rest.close()
        self.mirror.close()
        self.identities.close()
        self.warehouse.close()

    def health(self) -> dict[str, Any]:
        """200 while the shared list answers and the merges were read lately."""
        try:
            stats = self.warehouse.files.stats()
        except Exception as exc:
            raise errors.ServiceUnavailable(f"the shared list of files does not answer:"
                                            f" {type(exc).__name__}", code="shared_list") from None
        age = time.monotonic() - self.mirror.loaded_at
        if age > STALE_AFTER_S:
            raise errors.ServiceUnavailable(
                f"the shared merges were last read {age:.0f} s ago", code="stale_mirror")
        return {"status": "ok", "role": "query",
                "files": {t: {"files": f, "rows": r, "bytes": b}
                          for t, (f, r, b) in stats.items()},
                "merges": {"rows": self.mirror.rows, "age_s": round(age, 3),
                           "failures": self.mirror.failures}}

    def _not_here(self, body: bytes) -> Any:
        raise errors.Conflict("a query node does not run privacy requests: file one with"
                              " POST /api/v1/privacy/requests (a processor runs it), or"
                              " run this command against a processor's data dir",
                              code="not_on_query_node")

    erase = access = _not_here

    def rights_request(self, kind: str, body: bytes) -> Any:
        return self._not_here(body)

    def sql(self, body: bytes) -> dict[str, Any]:
        return sql_answer(self.warehouse, body, position=None)
