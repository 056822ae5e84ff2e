"""Write .env.example from the app's settings classes: every SEALMEM_* variable with its default and meaning.

    .venv/bin/python docker/gen_env_example.py > .env.example
    .venv/bin/python docker/gen_env_example.py --compose    # the x-sealmem-settings block of docker-compose.yml

tests/deploy/test_settings_names.py checks that .env.example names every setting with its current default.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (module, class, heading); a class that does not exist (yet) is skipped. Settings inherits StoreSettings.
SOURCES = [
    ("memory_store.settings", "StoreSettings", "Storage core (memory_store/settings.py StoreSettings)"),
    ("service.settings", "Settings", "REST service (service/settings.py Settings)"),
    ("service.chat.settings", "ChatSettings", "Chat and LLM backend (service/chat/settings.py ChatSettings)"),
    ("service.llm.kv.settings", "KVSettings", "KV memory injection (service/llm/kv/settings.py KVSettings)"),
]

# One line for fields whose Field() has no description.
FALLBACK = {
    "embedding_batch_size": "Texts embedded per forward pass (batch adds).",
    "index_ivf_nprobe": "IVF lists probed per query (faiss backend, tenants above SEALMEM_INDEX_EXACT_MAX).",
    "sqlite_synchronous": "SQLite durability: FULL survives power loss, NORMAL survives a process crash.",
    "db_pool_size": "PostgreSQL connections kept per process (as many again may overflow).",
    "db_statement_timeout_ms": "PostgreSQL statement timeout in milliseconds; 0 disables it.",
    "port": "Port `sealmem serve` listens on.",
    "max_text_chars": "Longest memory text in characters (may only tighten the storage core's cap).",
    "max_metadata_bytes": "Largest metadata object, JSON bytes (may only tighten the storage core's cap).",
    "max_metadata_depth": "Deepest metadata nesting (may only tighten the storage core's cap).",
    "log_level": "Log level; logs are JSON lines on stderr.",
    "openai_connect_timeout_seconds": "Connect timeout to the OpenAI-compatible server.",
    "chat_facts_header": "Heading of the retrieved memories in the system message.",
    "chat_answer_instruction": "Instruction at the end of the system message.",
    "chat_default_injection": "How retrieved memories reach the model by default.",
    "chat_max_k": "Largest number of memories a chat request may ask for.",
    "chat_max_message_chars": "Longest chat message accepted, in characters.",
}

# Deployment advice appended to a field's line.
NOTES = {
    "data_dir": "The image uses /var/lib/sealmem (compose: set it here to move it).",
    "database_url": "Compose: postgresql+psycopg://sealmem@postgres:5432/sealmem (password via PGPASSWORD_FILE).",
    "master_key": "Prefer SEALMEM_MASTER_KEY_FILE; never put a key in .env.",
    "master_key_file": "Compose: /run/secrets/master_key (`sealmem keygen > secrets/master_key`).",
    "token_secret": "Prefer SEALMEM_TOKEN_SECRET_FILE; never put a secret in .env.",
    "token_secret_file": "Compose: /run/secrets/token_secret.",
    "vector_backend": "Compose uses pgvector.",
    "host": "The image uses 0.0.0.0.",
    "llm_cache_dir": "The image uses /opt/sealmem/llm-cache (SmolLM2 converted at build time).",
    "openai_api_key": "Not needed for the compose vLLM service (internal network).",
}


def _discovered() -> list[tuple[str, str, str]]:
    """Settings classes not in SOURCES (a class whose name ends in "Settings" in the app's packages)."""
    known = {(m, c) for m, c, _ in SOURCES}
    out = []
    for package in ("memory_store", "service"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for match in re.finditer(r"^class (\w+)\((\w*Settings)\):", path.read_text(encoding="utf-8"), re.M):
                if (module, match.group(1)) not in known:
                    out.append((module, match.group(1), f"{match.group(1)} ({path.relative_to(ROOT).as_posix()})"))
    return out


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    found = []
    for module_name, class_name, heading in SOURCES + _discovered():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and issubclass(cls, BaseSettings):
            found.append((heading, cls))
    return found


def env_name(cls: type[BaseSettings], name: str) -> str:
    return (str(cls.model_config.get("env_prefix", "")) + name).upper()


def render_default(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    text = str(value)
    if "\n" in text or text != text.strip():
        return json.dumps(text)  # double-quoted with escapes, as .env files (python-dotenv) read them
    return text


def describe(name: str, field: FieldInfo) -> str:
    text = (field.description or FALLBACK.get(name) or "").strip()
    if not text:
        raise SystemExit(f"no description for {name}: add one to FALLBACK")
    annotation = field.annotation
    literals = [a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal]
    if literals and "One of" not in text:
        text += " One of: " + ", ".join(str(v) for v in get_args(literals[0])) + "."
    if field.default is None:
        text += " Unset by default."
    if name in NOTES:
        text += " " + NOTES[name]
    return text


HEADER = """\
# Every setting of Sealmem, read from environment variables (pydantic-settings). Generated by
# docker/gen_env_example.py; tests/deploy checks it against the settings classes.
#
# Each entry: a one-line description, then the variable with the app's DEFAULT, commented out. Uncomment a line to
# change it; leave a line commented to keep the default (an uncommented empty value is not "unset").
#
# Docker Compose reads .env from this folder: `cp .env.example .env`, then edit. docker-compose.yml passes every
# SEALMEM_* variable set here (or in your shell) into the sealmem containers, except the two secrets
# (SEALMEM_MASTER_KEY, SEALMEM_TOKEN_SECRET: files only) and those the image and compose file set themselves:
# host 0.0.0.0, port 8080, LLM cache dir /opt/sealmem/llm-cache, the database URL and the secret files (Docker
# secrets under /run/secrets). The data dir (/var/lib/sealmem) and vector backend (pgvector) can be set here.
"""

FOOTER = """\

# ==== Not app settings: variables of docker-compose.yml and docker/entrypoint.sh ====

# Host address:port where the `lb` service publishes the API (0.0.0.0:8080 for every interface).
# HTTP_PUBLISH=127.0.0.1:8080

# Image name the `sealmem` service builds and runs.
# APP_IMAGE=sealmem:latest

# PyTorch build of the image: cpu, or a CUDA variant the PyTorch index publishes for torch 2.13.0 (e.g. cu126).
# TORCH_VARIANT=cpu

# PostgreSQL's shared_buffers (the `postgres` service): about a quarter of the host's memory, and enough for the
# pgvector index and rows searches read (~4 KB per memory; docs/deploy.md, "PostgreSQL sizing").
# PG_SHARED_BUFFERS=1GB

# Entrypoint: seconds `serve` waits for PostgreSQL to accept connections before giving up.
# DB_WAIT_SECONDS=60

# Entrypoint: file holding the PostgreSQL password, exported as PGPASSWORD for libpq (compose sets it).
# PGPASSWORD_FILE=/run/secrets/pg_password

# vLLM (profile gpu): image, model (Hugging Face id or a path inside the container), name Sealmem asks for.
# VLLM_IMAGE=vllm/vllm-openai:latest
# VLLM_MODEL=Qwen/Qwen2.5-7B-Instruct
# VLLM_SERVED_MODEL_NAME=sealmem-chat

# vLLM context length (docker-compose.gpu.yml also gives it to Sealmem as SEALMEM_LLM_CONTEXT_TOKENS).
# VLLM_MAX_MODEL_LEN=8192

# Share of the GPU's memory vLLM may use (weights + KV cache).
# VLLM_GPU_MEMORY_UTILIZATION=0.90

# 1 once the model is in the hf-cache volume: vLLM then never touches the network.
# VLLM_HF_HUB_OFFLINE=0

# Hugging Face token, only for gated models.
# HF_TOKEN=
"""


# Set in docker-compose.yml itself or by the image, or secrets (files only): not in the pass-through block.
NOT_PASSED = {
    "SEALMEM_DATA_DIR",
    "SEALMEM_DATABASE_URL",
    "SEALMEM_MASTER_KEY",
    "SEALMEM_MASTER_KEY_FILE",
    "SEALMEM_TOKEN_SECRET",
    "SEALMEM_TOKEN_SECRET_FILE",
    "SEALMEM_HOST",
    "SEALMEM_PORT",
    "SEALMEM_VECTOR_BACKEND",
    "SEALMEM_LLM_CACHE_DIR",
}


def compose_block() -> None:
    """The same variables in the same order as .env.example, less NOT_PASSED."""
    for line in _env_lines():
        var = line[2:].split("=", 1)[0]
        if var not in NOT_PASSED:
            sys.stdout.write(f"  {var}:\n")


def _env_lines() -> list[str]:
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        write_env_example()
    return [line for line in buffer.getvalue().splitlines() if line.startswith("# SEALMEM_") and "=" in line]


def main() -> None:
    if sys.argv[1:] == ["--compose"]:
        compose_block()
    else:
        write_env_example()


def write_env_example() -> None:
    out = [HEADER]
    seen: set[str] = set()
    classes = settings_classes()
    # Each field under the class that declares it (Settings inherits the storage and chat settings), then, to be
    # safe, anything not declared by a listed class.
    for own_only in (True, False):
        for heading, cls in classes:
            declared = inspect.get_annotations(cls)
            entries = []
            for name, field in cls.model_fields.items():
                var = env_name(cls, name)
                if var in seen or (own_only and name not in declared):
                    continue
                seen.add(var)
                entries.append(f"\n# {describe(name, field)}\n# {var}={render_default(field.default)}\n")
            if entries:
                out.append(f"\n# ==== {heading}{'' if own_only else ' (inherited)'} ====\n")
                out.extend(entries)
    out.append(FOOTER)
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
