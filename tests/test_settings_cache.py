"""get_settings: a cache_clear wins over a read that was already under way."""

from __future__ import annotations

import threading

import pytest

from shipway import config


def test_a_read_straddling_a_clear_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = config._SettingsCache()
    reading = threading.Event()
    release = threading.Event()
    real_settings = config.Settings

    def slow_settings() -> config.Settings:
        read = real_settings()  # the environment as it is now ...
        reading.set()
        assert release.wait(10)  # ... returned after the clear below
        return read

    monkeypatch.setenv("SHIPWAY_API_PORT", "1111")
    monkeypatch.setattr(config, "Settings", slow_settings)
    stale: list[config.Settings] = []
    reader = threading.Thread(target=lambda: stale.append(cache()))
    reader.start()
    assert reading.wait(10)
    monkeypatch.setenv("SHIPWAY_API_PORT", "2222")  # the reader began before this change
    cache.cache_clear()
    monkeypatch.setattr(config, "Settings", real_settings)
    release.set()
    reader.join(10)
    assert stale and stale[0].api_port == 1111  # the reader gets what it read ...
    assert cache().api_port == 2222  # ... but the cache holds the read after the clear


def test_settings_are_read_once_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = config._SettingsCache()
    monkeypatch.setenv("SHIPWAY_API_PORT", "3333")
    first = cache()
    monkeypatch.setenv("SHIPWAY_API_PORT", "4444")
    assert cache() is first
    cache.cache_clear()
    assert cache().api_port == 4444
