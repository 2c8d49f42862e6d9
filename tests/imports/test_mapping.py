"""The import's mapping: read from TOML, refused with the line and column of what is
wrong; and the rows it turns into messages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aap.collect.segment import Rejection, WireMessage
from aap.imports import convert, mapping

GOOD = """\
timestamp = "ts"
user_id = "user"
event = "name"

[properties]
plan = "plan"
"""


def error(text: str) -> str:
    with pytest.raises(mapping.MappingError) as exc:
        mapping.parse(text, "m.toml")
    return str(exc.value)


def test_a_toml_syntax_error_names_its_line_and_column() -> None:
    assert "line 2, column" in error('timestamp = "ts"\nuser_id = \n')


def test_an_unknown_key_names_its_line_and_column() -> None:
    msg = error('timestamp = "ts"\n\n  userid = "u"\n')
    assert msg.startswith("m.toml, line 3, column 3: unknown key 'userid'"), msg


def test_a_value_of_the_wrong_kind_names_its_line() -> None:
    msg = error('timestamp = "ts"\nuser_id = 42\nevent = "e"\n')
    assert msg.startswith("m.toml, line 2, column 1: `user_id` must be a column name"), msg
    msg = error(GOOD + 'price = 3\n')
    assert msg.startswith("m.toml, line 7, column 1: `properties.price`"), msg
    msg = error('timestamp_unit = "days"\n' + GOOD)
    assert msg.startswith("m.toml, line 1, column 1: timestamp_unit 'days'"), msg


def test_what_is_missing_is_said() -> None:
    assert "needs `timestamp`" in error('user_id = "u"\nevent = "e"\n')
    assert "needs `user_id` or `anonymous_id`" in error('timestamp = "t"\nevent = "e"\n')
    assert "needs `event`" in error('timestamp = "t"\nuser_id = "u"\n')


def test_a_column_the_input_lacks_names_the_mapping_line() -> None:
    m = mapping.parse(GOOD, "m.toml")
    with pytest.raises(mapping.MappingError) as exc:
        mapping.check_columns(m, ["ts", "user", "name"], "m.toml")
    assert str(exc.value).startswith("m.toml, line 6, column 1: the input has no column 'plan'")
    mapping.check_columns(m, ["ts", "user", "name", "plan", "more"], "m.toml")


def test_rows_become_messages_with_ids_from_their_content() -> None:
    m = mapping.parse(GOOD + '[context]\nip = "ip"\n', "m.toml")
    to = convert.build(m)
    row = {"ts": "1700000000123", "user": "u1", "name": "Ordered", "plan": "pro",
           "ip": "203.0.113.9"}
    got = to(row)
    assert isinstance(got, WireMessage)
    assert got.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert (got.type, got.event, got.user_id, got.properties, got.context) == (
        "track", "Ordered", "u1", {"plan": "pro"}, {"ip": "203.0.113.9"})
    again = to(dict(row))
    assert isinstance(again, WireMessage) and again.message_id == got.message_id
    other = to({**row, "plan": "free"})
    assert isinstance(other, WireMessage) and other.message_id != got.message_id
    bad = to({**row, "ts": "yesterday"})
    assert isinstance(bad, Rejection) and bad.reason == "invalid_timestamp"


def test_a_whole_object_column_loses_what_other_fields_read() -> None:
    m = mapping.preset("mixpanel")
    got = convert.build(m)({"event": "Played", "properties": {
        "time": 1602611311, "distinct_id": "d-1", "$insert_id": "ins-1", "ip": "203.0.113.9",
        "song": "x"}})
    assert isinstance(got, WireMessage)
    assert got.properties == {"song": "x"}
    assert (got.anonymous_id, got.message_id, got.context) == ("d-1", "ins-1",
                                                               {"ip": "203.0.113.9"})
