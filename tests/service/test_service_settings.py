"""Settings validation, secret files and the JSON log format."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from memory_store.errors import ConfigurationError
from service.keyfiles import resolve_secret_files, token_secret_from_settings
from service.logs import JsonFormatter
from service.settings import Settings

GOOD_SECRET = "Zx8vQ2mN7pL4kR9tW3yB6cF1hJ5sD0gA"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"token_secret": "short"}, "at least 32"),
        ({"token_secret": "a" * 40}, "placeholder"),
        ({"token_secret": GOOD_SECRET, "token_secret_file": "/x"}, "not both"),
        ({"token_default_ttl_seconds": 7200}, "must not exceed"),
        ({"max_text_chars": 10**6}, "max_text_chars"),
        ({"max_k": 0}, "max_k"),
    ],
)
def test_bad_settings_are_refused(values, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**values)


def test_settings_come_from_the_environment_and_keep_secrets_hidden(monkeypatch):
    monkeypatch.setenv("SEALMEM_TOKEN_SECRET", GOOD_SECRET)
    monkeypatch.setenv("SEALMEM_MAX_K", "7")
    settings = Settings()
    assert settings.max_k == 7 and token_secret_from_settings(settings) == GOOD_SECRET
    assert GOOD_SECRET not in repr(settings) and GOOD_SECRET not in str(settings.model_dump())


def test_secret_files_are_created_only_when_asked_and_picked_up_later(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert resolve_secret_files(settings, create=False).master_key_file is None
    created = resolve_secret_files(settings, create=True)
    assert created.master_key_file == tmp_path / "master.key"
    assert len(token_secret_from_settings(created)) >= 32
    again = resolve_secret_files(Settings(data_dir=tmp_path), create=False)
    assert again.master_key_file == created.master_key_file
    assert token_secret_from_settings(again) == token_secret_from_settings(created)


def test_no_secret_files_are_created_for_an_external_database(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://db/sealmem")
    resolved = resolve_secret_files(settings, create=True)
    assert resolved.master_key_file is None and not list(tmp_path.iterdir())
    with pytest.raises(ConfigurationError, match="no token signing secret"):
        token_secret_from_settings(resolved)


def test_a_weak_token_secret_file_is_refused(tmp_path):
    (tmp_path / "weak").write_text("tooshort\n")
    with pytest.raises(ConfigurationError, match="at least 32"):
        token_secret_from_settings(Settings(data_dir=tmp_path, token_secret_file=tmp_path / "weak"))


def test_json_log_lines_carry_whitelisted_fields_only():
    record = logging.LogRecord("sealmem.access", logging.INFO, __file__, 1, "GET %s %d", ("/healthz", 200), None)
    record.request_id = "abc"
    record.route = "/healthz"
    record.body = "must not appear"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /healthz 200" and line["request_id"] == "abc" and line["route"] == "/healthz"
    assert line["level"] == "INFO" and line["logger"] == "sealmem.access" and "body" not in line
