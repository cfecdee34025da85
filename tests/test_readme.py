"""The README documents every setting and both set-up commands."""

from __future__ import annotations

from pathlib import Path

from shipway.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    missing = [
        f"SHIPWAY_{name.upper()}"
        for name in Settings.model_fields
        if f"`SHIPWAY_{name.upper()}`" not in text
    ]
    assert missing == [], f"README.md's configuration table lacks {missing}"


def test_readme_gives_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
