"""The live events' ring buffer and the query-string checks, in-process."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pyarrow as pa
import pytest

from aap import errors
from aap.api.live import LiveFeed
from aap.api.querystring import query_args
from aap.store.schema import EVENT_ARROW_SCHEMA


def chunk(*events: str, source: str = "src_1") -> pa.Table:
    n = len(events)
    cols = {f.name: pa.nulls(n, f.type) for f in EVENT_ARROW_SCHEMA}
    cols.update(event=pa.array(events, pa.string()), type=pa.array(["track"] * n),
                source=pa.array([source] * n), person_id=pa.array(range(n), pa.int64()),
                timestamp=pa.array([datetime(2026, 1, 1)] * n, pa.timestamp("us")))
    return pa.table([cols[f.name] for f in EVENT_ARROW_SCHEMA], schema=EVENT_ARROW_SCHEMA)


def test_a_poll_answers_what_came_after_its_cursor_with_names_and_filters() -> None:
    feed = LiveFeed(wait_s=0.05)
    feed.names = lambda ids: {"src_1": "web"}
    first = feed.poll({})
    assert first == {"cursor": 0, "events": []}
    feed.add(chunk("A", "B", "A"))
    got = feed.poll({"after": "0"})
    assert [e["event"] for e in got["events"]] == ["A", "B", "A"] and got["cursor"] == 3
    assert {e["source"] for e in got["events"]} == {"web"}
    assert [e["cursor"] for e in got["events"]] == [1, 2, 3]
    assert [e["event"] for e in feed.poll({"after": "0", "event": "B"})["events"]] == ["B"]
    assert feed.poll({"after": "0", "source": "other"})["events"] == []
    assert feed.poll({"after": "3"})["events"] == []


def test_a_waiting_poll_wakes_when_an_event_is_added() -> None:
    feed = LiveFeed(wait_s=30)
    out: list[dict[str, object]] = []
    t = threading.Thread(target=lambda: out.append(feed.poll({"after": "0", "event": "B"})))
    t.start()
    feed.add(chunk("A"))  # does not pass the filter: the poll goes on waiting
    t0 = time.monotonic()
    feed.add(chunk("B"))
    t.join(timeout=30)
    assert not t.is_alive() and time.monotonic() - t0 < 10
    assert [e["event"] for e in out[0]["events"]] == ["B"]  # type: ignore[union-attr]


def test_the_buffer_is_bounded_and_cursors_stay_monotonic() -> None:
    feed = LiveFeed(size=5, wait_s=0)
    feed.poll({})
    feed.add(chunk(*[f"e{i}" for i in range(8)]))
    got = feed.poll({"after": "0"})["events"]
    assert [e["cursor"] for e in got] == [4, 5, 6, 7, 8]


@pytest.mark.parametrize("query", ["after=-1", "after=x", "after=" + "9" * 30])
def test_bad_cursors_are_refused(query: str) -> None:
    with pytest.raises(errors.BadRequest):
        LiveFeed(wait_s=0).poll(query_args(query, ("after",)))


def test_query_args_takes_only_the_named_parameters_once() -> None:
    assert query_args("a=1&b=x%20y", ("a", "b")) == {"a": "1", "b": "x y"}
    assert query_args("", ()) == {}
    for bad in ("c=1", "a=1&a=2", "a", "a=" + "x" * 3000):
        with pytest.raises(errors.BadRequest):
            query_args(bad, ("a", "b"))
