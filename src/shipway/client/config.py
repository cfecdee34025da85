"""Where the CLI finds the API: ``SHIPWAY_API_URL``/``SHIPWAY_TOKEN``, else a config file.

The file is ``~/.config/shipway/config.toml`` (``$XDG_CONFIG_HOME`` honoured;
``SHIPWAY_CONFIG`` overrides the path) holding ``url = "..."`` and ``token = "..."``.
Environment variables win over the file, field by field.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8470"


class ConfigError(Exception):
    """The client is not configured well enough to call the API (a usage error)."""


@dataclass(frozen=True)
class ClientConfig:
    """The API base URL and the bearer token to send."""

    url: str
    token: str | None
    source: str  # where the token came from, for messages


def config_path() -> Path:
    """The config file path (``SHIPWAY_CONFIG``, else the XDG location)."""
    explicit = os.environ.get("SHIPWAY_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "shipway" / "config.toml"


def read_file(path: Path) -> dict[str, str]:
    """The ``url``/``token`` of a config file (empty if it does not exist)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    return {key: str(raw[key]) for key in ("url", "token") if isinstance(raw.get(key), str)}


def load_config() -> ClientConfig:
    """The effective configuration: environment first, then the config file."""
    path = config_path()
    stored = read_file(path)
    url = os.environ.get("SHIPWAY_API_URL") or stored.get("url") or DEFAULT_URL
    env_token = os.environ.get("SHIPWAY_TOKEN")
    if env_token:
        return ClientConfig(url=url.rstrip("/"), token=env_token, source="SHIPWAY_TOKEN")
    token = stored.get("token")
    return ClientConfig(url=url.rstrip("/"), token=token or None, source=str(path))


def save_config(*, url: str, token: str, path: Path | None = None) -> Path:
    """Write the config file (mode 0600, folder 0700); returns its path."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # json.dumps of a str is a valid TOML basic string (same escapes).
    text = f"url = {json.dumps(url.rstrip('/'))}\ntoken = {json.dumps(token)}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    path.chmod(0o600)
    return path
