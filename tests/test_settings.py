"""Every setting is documented in the README (datasette's rule)."""

from __future__ import annotations

import base64
from dataclasses import FrozenInstanceError, fields
from pathlib import Path
from typing import get_type_hints

import pytest
from cryptography.exceptions import InvalidTag

from aap.settings import SECTIONS, SETTINGS, Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_setting_is_documented(setting) -> None:  # type: ignore[no-untyped-def]
    assert f"`{setting.env}`" in README, f"{setting.env} is missing from the README"
    assert setting.help


def test_environment_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAP_MAX_EVENT_BYTES", "123")
    assert Settings().collector.max_event_bytes == 123
    assert Settings(max_event_bytes=7).collector.max_event_bytes == 7
    with pytest.raises(TypeError):
        Settings(no_such_setting=1)


def test_every_setting_is_in_exactly_one_typed_section() -> None:
    owners: dict[str, list[str]] = {}
    for attr, section in SECTIONS.items():
        hints = get_type_hints(section)
        for f in fields(section):
            owners.setdefault(f.name, []).append(attr)
            default = next(s.default for s in SETTINGS if s.name == f.name)
            assert hints[f.name] is type(default), (f.name, hints[f.name], type(default))
    assert {s.name for s in SETTINGS} == set(owners)
    assert all(len(v) == 1 for v in owners.values()), owners
    assert {f.name for f in fields(Settings)} == set(SECTIONS)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(FrozenInstanceError):
        s.query.sql_max_rows = 1  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        s.query = s.query  # type: ignore[misc]


def test_secrets_are_never_printed_nor_handed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"AAP_MASTER_KEY": base64.b64encode(b"m" * 32).decode(), "AAP_API_KEY": "ak_canary",
              "AAP_ID_HASH_KEY": base64.b64encode(b"i" * 32).decode(),
              "AAP_AUDIT_KEY": base64.b64encode(b"a" * 32).decode(),
              "AAP_SUBJECT_TOKEN_KEY": base64.b64encode(b"t" * 32).decode(),
              "AAP_METRICS_TOKEN": "mt_canary", "AAP_S3_SECRET_KEY": "s3_canary",
              "AAP_MQTT_BROKER": "mqtt://aap-bridge:mq_canary@127.0.0.1:1883",
              "AAP_META_URL": "postgresql://aap:pg_canary@127.0.0.1:5432/aap"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.privacy.master_key_bytes == b"m" * 32 and s.client.api_key == "ak_canary"
    shown = repr(s) + str(s) + repr(s.as_env())
    assert not [v for v in values.values() if v in shown]
    assert {x.env for x in SETTINGS if x.secret} == set(values)
    assert set(s.as_env()) == {x.env for x in SETTINGS if not x.secret}


@pytest.mark.parametrize(("env", "message"), [
    ({"AAP_COLD_DAYS": "1000"}, "AAP_COLD_DAYS=1000"),
    ({"AAP_RETENTION_INTERVAL_S": "7200"}, "at most an hour late"),
    ({"AAP_LOG_RETENTION_HOURS": "0"}, "0 (forever) is refused"),
    ({"AAP_SQL_MEMORY": "lots"}, "AAP_SQL_MEMORY"),
    ({"AAP_SQL_MEMORY": "10MB"}, "AAP_SQL_MEMORY=10MB: at least 384 MiB"),
    ({"AAP_MAX_RESPONSE_BYTES": "10"}, "AAP_MAX_RESPONSE_BYTES=10"),
    ({"AAP_QUERY_CONCURRENCY": "1"}, "AAP_QUERY_CONCURRENCY=1"),
    ({"AAP_QUERY_QUEUE_PER_KEY": "-1"}, "AAP_QUERY_QUEUE_PER_KEY"),
    ({"AAP_MAX_INSIGHT_CELLS": "0"}, "AAP_MAX_INSIGHT_CELLS"),
    ({"AAP_LOG_BACKEND": "kafka"}, "unknown log backend"),
    ({"AAP_META_URL": "mysql://x"}, "AAP_META_URL must be a postgresql:// URL"),
    ({"AAP_TLS_CERT": "/x.pem"}, "TLS needs both"),
    ({"AAP_IPV4_PREFIX": "40"}, "AAP_IPV4_PREFIX=40"),
    ({"AAP_TRUSTED_PROXIES": "10.0.0.0/8, nowhere"}, "AAP_TRUSTED_PROXIES"),
    ({"AAP_MASTER_KEY": base64.b64encode(b"short").decode()}, "AAP_MASTER_KEY"),
    ({"AAP_ID_HASH_KEY": base64.b64encode(b"s" * 31).decode()}, "AAP_ID_HASH_KEY: the key must be 32"),
    ({"AAP_AUDIT_KEY": "not base64!"}, "AAP_AUDIT_KEY: not base64"),
    ({"AAP_PORT": "eighty"}, "AAP_PORT"),
    ({"AAP_MQTT_BROKER": "http://aap-bridge:pw_canary@127.0.0.1"}, "AAP_MQTT_BROKER"),
    ({"AAP_DEVICE_LOCATION_DECIMALS": "5"}, "no precise coordinates"),
    ({"AAP_DEVICE_MAX_READINGS": "0"}, "AAP_DEVICE_MAX_READINGS"),
])
def test_a_bad_value_is_refused_when_the_settings_are_made(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError) as exc:
        Settings()
    assert message in str(exc.value)
    assert not any(v in str(exc.value) for k, v in env.items()
                   if k in ("AAP_MASTER_KEY", "AAP_ID_HASH_KEY", "AAP_AUDIT_KEY",
                            "AAP_MQTT_BROKER"))


def test_the_data_dir_resolves_and_names_its_paths(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d")
    assert s.data_path == (tmp_path / "d").resolve()
    assert s.data.core_socket == s.data_path / "run" / "core.sock"


def test_the_keystore_takes_aap_master_key_from_the_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aap.datadir import DataDir
    from aap.privacy.keystore import Keystore

    monkeypatch.setenv("AAP_MASTER_KEY", base64.b64encode(b"k" * 32).decode())
    wrapped = Keystore(tmp_path).master.wrap(7, b"d" * 32)
    assert not DataDir(tmp_path).master_key.exists()
    monkeypatch.delenv("AAP_MASTER_KEY")
    with pytest.raises(InvalidTag):  # the file's key is another
        Keystore(tmp_path).master.unwrap(7, wrapped)
    assert DataDir(tmp_path).master_key.exists()
