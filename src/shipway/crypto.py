"""Secrets at rest: Fernet keys from settings, a column type that encrypts, key rotation.

``SHIPWAY_SECRETS_KEYS`` lists Fernet keys, newest first: the first encrypts, every
one decrypts (cryptography's ``MultiFernet``). Without it a key is generated once in
``data_dir/secrets.key`` (mode 0600), so the embedded mode needs no set-up. A column
typed ``EncryptedText`` holds a Fernet token in the database and the plain text in
Python; ``rotate`` re-encrypts every such column with the first key.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Connection, Text, select, type_coerce, update
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from shipway.config import get_settings
from shipway.db import Base
from shipway.errors import ServiceUnavailable

log = logging.getLogger(__name__)

KEY_FILE = "secrets.key"


class SecretsKeyError(ServiceUnavailable):
    """A stored secret cannot be decrypted with any configured key (or a key is malformed)."""

    code = "secrets_key_mismatch"


def generate_key() -> str:
    """A new Fernet key (url-safe base64 of 32 random bytes)."""
    return Fernet.generate_key().decode()


def key_file(data_dir: Path) -> Path:
    """The generated key of the embedded mode: made once (0600), then read."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        temporary = data_dir / f".{KEY_FILE}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_key() + "\n")
        try:
            os.link(temporary, path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path


@lru_cache(maxsize=8)
def _keyring(keys: str, data_dir: Path) -> MultiFernet:
    listed = [key.strip() for key in keys.split(",") if key.strip()]
    source = "SHIPWAY_SECRETS_KEYS"
    if not listed:
        path = key_file(data_dir)
        listed, source = [path.read_text().strip()], str(path)
    try:
        return MultiFernet([Fernet(key.encode()) for key in listed])
    except (ValueError, TypeError):
        raise SecretsKeyError(
            f"{source} holds a malformed key (each must be a Fernet key: "
            "`shipway secrets generate-key` prints one)"
        ) from None


def keyring() -> MultiFernet:
    """The keys of the current settings, the first one encrypting."""
    settings = get_settings()
    return _keyring(settings.secrets_keys, settings.data_dir.resolve())


def encrypt(plain: str) -> str:
    """A Fernet token of ``plain`` under the first key."""
    return keyring().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    """The plain text of a token made under any configured key."""
    try:
        return keyring().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretsKeyError(
            "a stored secret cannot be decrypted with the configured keys: was a key dropped "
            "before `shipway secrets rotate` ran? Put the old key back in SHIPWAY_SECRETS_KEYS"
        ) from None


class EncryptedText(TypeDecorator[str]):
    """Text encrypted at rest: a Fernet token in the database, plain text in Python.

    A token no configured key opens raises ``SecretsKeyError``; a ``lenient`` column
    reads as None instead (logged), so one unreadable value (a TLS key) does not stop
    every query that loads its table.
    """

    impl = Text
    cache_ok = True

    def __init__(self, *, lenient: bool = False) -> None:
        super().__init__()
        self.lenient = lenient

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        try:
            return decrypt(value)
        except SecretsKeyError:
            if not self.lenient:
                raise
            log.error("an encrypted value is unreadable with the configured keys; read as empty")
            return None


def looks_encrypted(value: str) -> bool:
    """Whether ``value`` is a Fernet token (version byte 0x80, base64 ``gAAAAA``)."""
    return value.startswith("gAAAAA")


def rotate(connection: Connection) -> dict[str, int]:
    """Re-encrypt every ``EncryptedText`` column of every table with the first key.

    Runs in the caller's transaction; answers how many values each column had. A value
    no configured key opens raises ``SecretsKeyError`` (the caller's transaction then
    writes nothing).
    """
    ring = keyring()
    counts: dict[str, int] = {}
    for table in Base.metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        for column in [c for c in table.columns if isinstance(c.type, EncryptedText)]:
            stored = type_coerce(column, Text)  # the token, not decrypted
            rows = connection.execute(select(*keys, stored).where(column.is_not(None))).all()
            for row in rows:
                try:
                    fresh = ring.rotate(row[-1].encode()).decode()
                except InvalidToken:
                    raise SecretsKeyError(
                        f"a value of {table.name}.{column.name} cannot be decrypted with the "
                        "configured keys; add the key it was made with and run rotate again"
                    ) from None
                connection.execute(
                    update(table)
                    .where(*[key == row[i] for i, key in enumerate(keys)])
                    .values({column.name: type_coerce(fresh, Text)})
                )
            counts[f"{table.name}.{column.name}"] = len(rows)
    return counts
