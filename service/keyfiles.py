"""Where the master key and the token signing secret come from, and their creation on first start."""

from __future__ import annotations

import logging
import secrets

from memory_store.crypto import encode_key, generate_key, write_secret_file
from memory_store.errors import ConfigurationError
from service.settings import Settings, check_token_secret

log = logging.getLogger("sealmem.keyfiles")


def resolve_secret_files(settings: Settings, *, create: bool) -> Settings:
    """Fill in unset secret settings from ``<data_dir>/master.key`` and ``<data_dir>/token.secret``.

    With ``create`` (``sealmem serve`` and ``sealmem tenant create``) and the embedded SQLite database, a
    missing file is created with mode 0600 and the fact is logged; the master key only while the database does
    not exist yet, so a lost key file can never silently be replaced by a new key for existing data.
    """
    updates: dict[str, object] = {}
    db_is_new = not (settings.data_dir / "sealmem.db").exists()
    if settings.master_key is None and settings.master_key_file is None:
        path = settings.default_master_key_file
        if not path.exists() and create and settings.embedded and db_is_new:
            write_secret_file(path, encode_key(generate_key()))
            log.warning("created a new master key in %s (mode 0600): back it up, data is unreadable without it", path)
        if path.exists():
            updates["master_key_file"] = path
    if settings.token_secret is None and settings.token_secret_file is None:
        path = settings.default_token_secret_file
        if not path.exists() and create and settings.embedded:
            write_secret_file(path, secrets.token_urlsafe(48))
            log.warning("created a new token signing secret in %s (mode 0600)", path)
        if path.exists():
            updates["token_secret_file"] = path
    return settings.model_copy(update=updates) if updates else settings


def token_secret_from_settings(settings: Settings) -> str:
    if settings.token_secret is not None:
        return settings.token_secret.get_secret_value()
    if settings.token_secret_file is not None:
        try:
            text = settings.token_secret_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"token secret file {settings.token_secret_file} is unreadable") from exc
        try:
            return check_token_secret(text)
        except ValueError as exc:
            raise ConfigurationError(f"token secret file {settings.token_secret_file}: {exc}") from exc
    raise ConfigurationError(
        "no token signing secret: set SEALMEM_TOKEN_SECRET or SEALMEM_TOKEN_SECRET_FILE "
        "(generate one with `sealmem keygen`)"
    )
