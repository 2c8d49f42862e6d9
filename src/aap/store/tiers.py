"""Warm and cold tiers: Parquet files on local disk or any S3-compatible store, through
one ``pyarrow.fs`` filesystem.

- warm: one or more files per day (``events/day=YYYY-MM-DD/part-….parquet``, zstd);
- cold: older days compacted per month into one archive file each
  (``events/month=YYYY-MM/part-….parquet``, zstd level 19, large row groups) that every
  query still reads, and that ``aap`` can copy back like any Parquet file.

The list of live files is :mod:`aap.store.filelist`: by default a table of the warehouse
(``tier_files``), so moving data is one transaction: the new file appears in the list in
the same commit that deletes the rows it holds from where they were. With publishing on
(``AAP_PUBLISH_SECONDS``) it is on the shared-state database, and batch files
(``warm/events/day=D/batch-<writer>-<seq>.parquet``, :mod:`aap.store.publish`) join it.
A query reads the list and the hot table in one snapshot: no gaps and no duplicates,
also while a partition moves. Files dropped from
the list are deleted only after a grace period, so queries that still read them finish.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from aap.errors import ServiceUnavailable
from aap.store.schema import EVENT_ARROW_SCHEMA

if TYPE_CHECKING:
    from aap.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class TierConfig:
    url: str
    """``/path/on/disk`` or ``s3://bucket/prefix``."""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"

    @classmethod
    def from_settings(cls, settings: Settings) -> TierConfig:
        """``AAP_TIER_URL`` (or the data dir's ``tiers``) and the ``AAP_S3_*`` settings."""
        s3 = settings.s3
        return cls(settings.tier_url, s3_endpoint=s3.s3_endpoint_url,
                   s3_access_key=s3.s3_access_key, s3_secret_key=s3.s3_secret_key,
                   s3_region=s3.s3_region)


def s3_filesystem(endpoint_url: str, access_key: str, secret_key: str, region: str
                  ) -> pafs.S3FileSystem:
    """The S3 (or S3-compatible, at ``endpoint_url``) store of the ``AAP_S3_*`` settings."""
    endpoint = urlparse(endpoint_url) if endpoint_url else None
    return pafs.S3FileSystem(
        access_key=access_key or None, secret_key=secret_key or None, region=region,
        endpoint_override=endpoint.netloc if endpoint else None,
        scheme=endpoint.scheme if endpoint else "https",
    )


READ_ATTEMPTS = 3
"""How often a read whose answer :func:`broke_off`, or that met a file
:func:`gone_meanwhile`, is made before its failure stands."""


def broke_off(exc: BaseException) -> bool:
    """Whether a read failed because the store's answer to it was cut or garbled (more
    bytes than the range asked for, a body that ended early: the AWS SDK calls it
    ``INTERNAL_FAILURE`` ... ``Failed to flush response stream`` and, unlike a failed
    connection, neither it nor Arrow's client asks again). The file is not at fault:
    the same read asked again is answered; a read-only caller asks again
    (:data:`READ_ATTEMPTS`)."""
    return (isinstance(exc, (OSError, duckdb.Error))
            and "Failed to flush response stream" in str(exc))


def gone_meanwhile(exc: BaseException) -> bool:
    """Whether a read failed because a file it was given is not in the store. A file
    leaves the list of live files before it is deleted, and the tiering job deletes
    only after a grace period; but an erasure's rewrite deletes the files it replaced at
    once (the erased rows leave the disk with the erasure), so a query that read the list
    just before may not find one. Made again, the read takes the list anew, which names
    the new version; a file still listed and gone fails every time, and its failure
    stands after :data:`READ_ATTEMPTS`."""
    if isinstance(exc, FileNotFoundError):
        return True
    return isinstance(exc, (OSError, duckdb.Error)) and any(
        m in str(exc) for m in ("Path does not exist", "No such file or directory"))


def tier_read_failed(exc: BaseException) -> bool:
    """Whether DuckDB failed reading the tier files a query was given (its message for a
    registered stream that raised: a file the store did not answer, or answered wrong):
    the store's fault, never the query's, whatever DuckDB's error type says."""
    return isinstance(exc, duckdb.Error) and "reading the stream registered as" in str(exc)


STORAGE_UNAVAILABLE = "storage_unavailable"
"""The code of the 503 a request is answered when the tier files cannot be read now."""


def unreadable() -> ServiceUnavailable:
    """The answer to a request that met the tier store away (:meth:`TierStore.away`) or
    a read that failed every time (:func:`tier_read_failed`): try again later."""
    return ServiceUnavailable("the tier store (AAP_TIER_URL) cannot be read now: try"
                              " again later", code=STORAGE_UNAVAILABLE, retry_after=5)


def read_again(read: Callable[[], T]) -> T:
    """``read()`` (something that only reads, and reads the list of live files each
    time), made again while the tier store's answer to it :func:`broke_off` or it met a
    file :func:`gone_meanwhile`, at most :data:`READ_ATTEMPTS` times in all. Nested
    (``read`` calls it again), only the outermost asks again: not attempts squared."""
    if _ASKING_AGAIN.get():  # inside another read_again (a route's, around a handler
        return read()        # whose query has its own): that one asks again
    token = _ASKING_AGAIN.set(True)
    try:
        return _read_again(read)
    finally:
        _ASKING_AGAIN.reset(token)


_ASKING_AGAIN: ContextVar[bool] = ContextVar("aap_read_again", default=False)


def _read_again(read: Callable[[], T]) -> T:
    attempt = 1
    while True:
        try:
            return read()
        except (OSError, duckdb.Error) as exc:
            if attempt == READ_ATTEMPTS:
                raise
            if broke_off(exc):
                log.warning("a read of the tier store broke off (%s); reading again", exc)
            elif gone_meanwhile(exc):
                log.info("a file a read was given is gone (replaced meanwhile?): reading"
                         " the list again (%s)", exc)
            else:
                raise
            attempt += 1


ROW_GROUP_ROWS = {False: 256_000, True: 1_000_000}
"""Rows in a row group of a warm (``False``) and a cold (``True``) file."""
SCAN_ROWS = 32_000
"""Rows in a batch of :meth:`TierStore.scan` (a 256,000-row group of events read in
batches of 128,000 grew the process by 230 MB, of 16,000 by 80 MB)."""


def _parquet(cold: bool, level: int | None = None) -> dict[str, Any]:
    """How an events' tier file is written: zstd at the tier's level (cold 19, warm 6)
    or ``level``, with dictionaries and statistics."""
    return {"compression": "zstd", "compression_level": level or (19 if cold else 6),
            "use_dictionary": True, "write_statistics": True}


def _conformed(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch of a tier file in the events' schema: a column it lacks (a file older
    than the column) is null, one of another type is cast."""
    have = set(batch.schema.names)
    return pa.RecordBatch.from_arrays(
        [batch.column(f.name).cast(f.type) if f.name in have else pa.nulls(batch.num_rows, f.type)
         for f in EVENT_ARROW_SCHEMA], schema=EVENT_ARROW_SCHEMA)


class TierStore:
    """Where warm and cold files live."""

    def __init__(self, cfg: TierConfig) -> None:
        parsed = urlparse(cfg.url)
        if parsed.scheme == "s3":
            self.fs: pafs.FileSystem = s3_filesystem(cfg.s3_endpoint, cfg.s3_access_key,
                                                     cfg.s3_secret_key, cfg.s3_region)
            self.root = (parsed.netloc + parsed.path).rstrip("/")
        elif parsed.scheme in ("", "file"):
            self.fs = pafs.LocalFileSystem()
            self.root = (parsed.path if parsed.scheme else cfg.url).rstrip("/")
            self.fs.create_dir(self.root, recursive=True)
        else:
            raise ValueError(f"tier url {cfg.url!r}: use a path or s3://bucket/prefix")

    def path(self, partition: str, name: str, *, cold: bool = False) -> str:
        return f"{self.root}/{'cold' if cold else 'warm'}/events/{partition}/{name}.parquet"

    def write(self, table: pa.Table, partition: str, *, cold: bool = False,
              level: int | None = None, name: str = "") -> tuple[str, int]:
        """Write one file; returns its path and size. Durable when it returns. ``level``:
        a zstd level other than the tier's (erasure rewrites archives faster). ``name``:
        the file's name (without ``.parquet``; a file of that name is replaced), else a
        new ``part-…`` name."""
        path = self.path(partition, name or f"part-{uuid.uuid4().hex}", cold=cold)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=self.fs, row_group_size=ROW_GROUP_ROWS[cold],
                       **_parquet(cold, level))
        return path, int(self.fs.get_file_info(path).size)

    def write_batches(self, batches: Iterable[pa.RecordBatch], partition: str, *,
                      cold: bool = False, level: int | None = None, name: str = ""
                      ) -> tuple[str, int, int]:
        """:meth:`write` for rows that come in batches, each written as it comes (a fold
        of a day or a month, a rewrite of a file: larger than memory): returns the path,
        size and rows. Batches of any size make row groups of :data:`ROW_GROUP_ROWS`
        (at most a row group is held); a file left half written by a failure is
        deleted."""
        path = self.path(partition, name or f"part-{uuid.uuid4().hex}", cold=cold)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        group = ROW_GROUP_ROWS[cold]
        rows = 0
        held: list[pa.RecordBatch] = []
        try:
            with pq.ParquetWriter(path, EVENT_ARROW_SCHEMA, filesystem=self.fs,
                                  **_parquet(cold, level)) as out:
                for batch in batches:
                    if not batch.num_rows:
                        continue
                    held.append(batch.cast(EVENT_ARROW_SCHEMA))
                    if sum(b.num_rows for b in held) < group:
                        continue
                    table = pa.Table.from_batches(held, EVENT_ARROW_SCHEMA)
                    whole = table.num_rows // group * group
                    out.write_table(table.slice(0, whole), row_group_size=group)
                    held = table.slice(whole).to_batches()
                    rows += whole
                if held:
                    table = pa.Table.from_batches(held, EVENT_ARROW_SCHEMA)
                    out.write_table(table, row_group_size=group)
                    rows += table.num_rows
        except BaseException:
            self.delete(path)
            raise
        return path, int(self.fs.get_file_info(path).size), rows

    def write_table(self, table: pa.Table, kind: str, name: str) -> tuple[str, int]:
        """A published table's file (:mod:`aap.store.published`):
        ``warm/<kind>/<name>.parquet`` (a new ``part-…`` name when ``name`` is empty)."""
        path = f"{self.root}/warm/{kind}/{name or f'part-{uuid.uuid4().hex}'}.parquet"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=self.fs, compression="zstd",
                       compression_level=6, write_statistics=True)
        return path, int(self.fs.get_file_info(path).size)

    def read_table(self, paths: list[str]) -> pa.Table:
        """Published table files (their own schema) as one table."""
        return self.table_dataset(paths).to_table()

    def table_dataset(self, paths: list[str]) -> pads.Dataset:
        """Published table files as one dataset (read as a query scans it)."""
        return pads.dataset(paths, filesystem=self.fs, format="parquet")

    def scan(self, path: str) -> Iterator[pa.RecordBatch]:
        """One file's rows in batches of at most :data:`SCAN_ROWS`, in the events' schema
        (a column the file does not have is null), read as they are taken and without
        reading ahead: a file's rewrite holds a batch, not the file."""
        with self.fs.open_input_file(path) as raw:
            file = pq.ParquetFile(raw, pre_buffer=False)
            for batch in file.iter_batches(batch_size=SCAN_ROWS, use_threads=False):
                yield _conformed(batch)

    def read(self, paths: list[str], columns: list[str] | None = None) -> pa.Table:
        return pads.dataset(paths, filesystem=self.fs, format="parquet",
                            schema=EVENT_ARROW_SCHEMA).to_table(columns=columns)

    def dataset(self, paths: list[str], extra: pa.Table | None = None
                ) -> pads.Dataset | pa.Table:
        """The files as one dataset; ``extra``: rows read with them (hot rows being
        published, see :mod:`aap.store.filelist`)."""
        if not paths:
            return extra if extra is not None else EVENT_ARROW_SCHEMA.empty_table()
        files = pads.dataset(paths, filesystem=self.fs, format="parquet",
                             schema=EVENT_ARROW_SCHEMA)
        if extra is None or not extra.num_rows:
            return files
        return pads.dataset([files, pads.dataset(extra.cast(EVENT_ARROW_SCHEMA))])

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def away(self, exc: BaseException) -> bool:
        """Whether a read or write that failed with ``exc`` met the store's outage (S3
        down or out of reach: the store does not answer a look at its root now), rather
        than a fault of the caller's. Arrow's S3 client naming a failed connection says so
        too (the store may be back by the time it is looked at), and so does an answer
        that :func:`broke_off`."""
        if not isinstance(exc, (OSError, duckdb.Error)):
            return False
        if "AWS Error NETWORK_CONNECTION" in str(exc) or broke_off(exc):
            return True
        try:
            self.fs.get_file_info(self.root)
        except OSError:
            return True
        return False
