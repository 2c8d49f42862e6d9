"""Group commit: many concurrent appends share a transaction; failures become 503s."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from aap.errors import ServiceUnavailable
from aap.log.base import Append
from aap.log.committer import GroupCommitter
from aap.log.sqlite import SQLiteLog


class CountingLog(SQLiteLog):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[int] = []

    def append(self, batches: Sequence[Append]) -> list[int]:
        self.calls.append(len(batches))
        return super().append(batches)


def test_concurrent_appends_are_grouped_and_each_gets_its_offset(tmp_path: Path) -> None:
    log = CountingLog(tmp_path)
    c = GroupCommitter(log)

    async def main() -> list[int]:
        return await asyncio.gather(*(c.append(Append("s", 1, str(i).encode()))
                                      for i in range(300)))

    offsets = asyncio.run(main())
    c.close()
    assert sorted(offsets) == offsets == list(range(1, 301))
    assert [r.payload for r in log.read(0, 1000)] == [str(i).encode() for i in range(300)]
    assert len(log.calls) < 300  # at least some requests shared a commit


class BrokenLog(SQLiteLog):
    def append(self, batches: Sequence[Append]) -> list[int]:
        raise OSError(28, "No space left on device")


def test_a_log_that_cannot_take_the_batch_gives_503(tmp_path: Path) -> None:
    c = GroupCommitter(BrokenLog(tmp_path), retry_after=3)
    with pytest.raises(ServiceUnavailable) as err:
        asyncio.run(c.append(Append("s", 1, b"x")))
    assert err.value.retry_after == 3 and err.value.code == "log_unavailable"
    assert c.pending == 0
    c.close()


def test_too_many_pending_batches_give_503(tmp_path: Path) -> None:
    c = GroupCommitter(SQLiteLog(tmp_path), max_pending=0)
    with pytest.raises(ServiceUnavailable):
        asyncio.run(c.append(Append("s", 1, b"x")))
    c.close()
