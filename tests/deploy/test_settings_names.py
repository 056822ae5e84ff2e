"""Settings names in the deployment files match the app's settings: no typo'd variable is silently ignored,
and .env.example documents every setting with its real default."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr, TypeAdapter, ValidationError

from tests.deploy.conftest import (
    COMPOSE,
    COMPOSE_GPU,
    DEPLOY_DOC,
    DOCKERFILE,
    ENTRYPOINT,
    ENV_EXAMPLE,
    ROOT,
    env_example_entries,
    sealmem_names_in,
    setting_vars,
    settings_classes,
)

FILES = [ENV_EXAMPLE, COMPOSE, COMPOSE_GPU, DOCKERFILE, ENTRYPOINT, DEPLOY_DOC]


def test_settings_classes_are_found() -> None:
    names = {cls.__name__ for cls in settings_classes()}
    assert {"StoreSettings", "Settings"} <= names
    assert "SEALMEM_DATABASE_URL" in setting_vars()
    assert "SEALMEM_VECTOR_BACKEND" in setting_vars()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_sealmem_name_is_a_setting(path) -> None:
    unknown = sorted(sealmem_names_in(path) - set(setting_vars()))
    assert not unknown, f"{path.name} names SEALMEM_* variables that no settings class reads: {unknown}"


def test_env_example_documents_every_setting() -> None:
    documented = {name for name in env_example_entries() if name.startswith("SEALMEM_")}
    missing = sorted(set(setting_vars()) - documented)
    assert not missing, f".env.example lacks {missing}: run `python docker/gen_env_example.py > .env.example`"


def test_env_example_entries_have_a_description() -> None:
    for name, (_, comment) in env_example_entries().items():
        assert comment.startswith("# ") and len(comment) > 8, f"{name} has no one-line description above it"


def _same(value: str, default: Any, annotation: Any) -> bool:
    if value == "":
        return default is None or default == "" or isinstance(default, SecretStr)
    if default is None:
        return False
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = json.loads(value)  # quoted (multi-line or space-padded) defaults
    try:
        return bool(TypeAdapter(annotation).validate_python(value) == default)
    except ValidationError:
        return False


def test_env_example_shows_the_real_defaults() -> None:
    entries = env_example_entries()
    wrong = []
    for name, var in setting_vars().items():
        if name in entries and not _same(entries[name][0], var.default, var.annotation):
            wrong.append(f"{name}: .env.example says {entries[name][0]!r}, the default is {var.default!r}")
    assert not wrong, "\n".join(wrong)


def test_env_example_sets_nothing() -> None:
    """Every entry is commented out: copying it to .env changes no behaviour and holds no secret."""
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        assert not line or line.startswith("#"), f"uncommented line in .env.example: {line!r}"
