"""Every setting is documented in the README (datasette's rule)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aap.settings import SETTINGS, Settings

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
