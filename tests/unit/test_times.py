"""Pages show times in [broker] timezone with UTC on hover; a bad zone is one clear line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broker.config import load_config
from broker.errors import ConfigError
from broker.http.times import time_filter


def test_local_time_with_utc_on_hover() -> None:
    when = time_filter(ZoneInfo("Europe/Berlin"))
    shown = when(datetime(2026, 7, 1, 12, 30, tzinfo=UTC))
    assert shown == ('<time datetime="2026-07-01T12:30:00+00:00" title="2026-07-01 12:30 UTC">'
                     "2026-07-01 14:30 CEST</time>")
    winter = when(datetime(2026, 1, 1, 12, 30), "%H:%M:%S")  # naive from SQLite: UTC
    assert ">13:30:00 CET</time>" in winter and 'title="12:30:00 UTC"' in winter
    assert when(None) == ""


def test_timezone_setting_is_validated(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text("[broker]\ntimezone = 'America/New_York'\n")
    assert load_config(config).settings.broker.timezone == "America/New_York"
    for bad in ("Mars/Olympus", "../etc/passwd", ""):
        config.write_text(f"[broker]\ntimezone = '{bad}'\n")
        with pytest.raises(ConfigError) as caught:
            load_config(config)
        assert "[broker] timezone" in str(caught.value) and "IANA time zone" in str(caught.value)
