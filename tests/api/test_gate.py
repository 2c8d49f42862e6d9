"""The query gate on random arrivals of several keys: never more than ``per_key`` of a
key's queries or ``total`` of all running, a key is refused (429) only when its queue is
full, every admitted query runs once slots free, and a query that waits too long gets a
503."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.api.gate import QueryGate
from aap.errors import ServiceUnavailable, TooManyRequests


@given(arrivals=st.lists(st.sampled_from("abc"), min_size=1, max_size=25),
       total=st.integers(1, 5), per_key=st.integers(1, 3), queue=st.integers(0, 3))
def test_the_gate_keeps_its_limits(arrivals: list[str], total: int, per_key: int,
                                   queue: int) -> None:
    per_key = min(per_key, total)

    async def main() -> tuple[Counter[str], Counter[str], Counter[str]]:
        gate = QueryGate(total=total, per_key=per_key, queue_per_key=queue, max_wait_s=60)
        release = asyncio.Event()
        running: Counter[str] = Counter()
        ran: Counter[str] = Counter()
        refused: Counter[str] = Counter()

        async def one(key: str) -> None:
            try:
                async with gate.slot(key):
                    running[key] += 1
                    assert running[key] <= per_key
                    assert sum(running.values()) <= total
                    await release.wait()
                    running[key] -= 1
                    ran[key] += 1
            except TooManyRequests as exc:
                assert exc.status == 429 and exc.code == "too_many_queries"
                refused[key] += 1

        tasks = [asyncio.create_task(one(k)) for k in arrivals]
        for _ in range(20 * len(arrivals)):  # every arrival is in: running, waiting or refused
            await asyncio.sleep(0)
        # a query runs at once whenever its key and the total have room
        assert sum(running.values()) == min(total, sum(
            min(per_key, n) for n in Counter(arrivals).values()))
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return Counter(arrivals), ran, refused

    sent, ran, refused = asyncio.run(main())
    for key, n in sent.items():
        assert ran[key] + refused[key] == n
        assert refused[key] >= max(0, n - per_key - queue)  # a full queue refuses
        assert refused[key] <= max(0, n - queue)  # only when its queue is full
        if n <= per_key + queue and total >= len(sent) * per_key:
            assert refused[key] == 0  # never refused while its queue has room


def test_a_query_that_waits_too_long_gets_503() -> None:
    async def main() -> None:
        gate = QueryGate(total=1, per_key=1, queue_per_key=5, max_wait_s=0.2)
        hold = asyncio.Event()

        async def first() -> None:
            async with gate.slot("a"):
                await hold.wait()

        t = asyncio.create_task(first())
        await asyncio.sleep(0)
        with pytest.raises(ServiceUnavailable) as err:
            async with gate.slot("b"):
                pass
        assert err.value.code == "queries_busy" and err.value.retry_after >= 1
        hold.set()
        await t
        async with gate.slot("b"):  # free again, and nothing left counted
            assert gate.running == 1
        assert gate.running == 0 and not gate.by_key and not gate.waiting

    asyncio.run(main())
