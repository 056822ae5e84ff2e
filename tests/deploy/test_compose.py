"""docker-compose.yml (and the GPU override) without a Docker engine: it parses, keeps to what Compose v1 1.29
and v2 both accept, wires the services as docs/deploy.md says, and references only files that exist or that the
docs tell the operator to create. With `docker-compose` (v1) installed, it is validated by Compose itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    COMPOSE,
    COMPOSE_GPU,
    DEPLOY_DOC,
    DOCKERFILE,
    ROOT,
    DockerIgnore,
    clean_env,
    dockerfile_instructions,
    env_example_entries,
    final_stage,
    have,
    setting_vars,
)

V2_ONLY_TOP_LEVEL = {"name", "include"}
SUBSTITUTION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
SECRET_SETTINGS = {"SEALMEM_MASTER_KEY", "SEALMEM_TOKEN_SECRET"}  # files only, never passed as values


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return load(COMPOSE_GPU)


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage(dockerfile_instructions()):
        if word == "ENV":
            for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", args):
                env[match.group(1)] = match.group(2)
    return env


def test_only_keys_compose_v1_accepts(compose: dict[str, Any], gpu: dict[str, Any]) -> None:
    for data in (compose, gpu):
        assert not V2_ONLY_TOP_LEVEL & set(data), "top-level name:/include: are Compose v2 only"
        assert str(data.get("version", "3.8")).startswith(("2.", "3.")), "no version, or a 2.x/3.x one"
        for name, service in data["services"].items():
            assert "develop" not in service, f"{name}: develop: is Compose v2 only"


def test_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "sealmem", "lb", "vllm"} <= set(compose["services"])


def test_postgres(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("pgvector/pgvector:pg16")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"]), "a data volume"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_superuser_password"
    assert "POSTGRES_PASSWORD" not in pg["environment"]


def test_sealmem(compose: dict[str, Any]) -> None:
    app = compose["services"]["sealmem"]
    assert app["build"]["context"] == "."
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = app["environment"]
    assert env["SEALMEM_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@" in env["SEALMEM_DATABASE_URL"] and ":" not in env["SEALMEM_DATABASE_URL"].split("//")[1].split("@")[0], (
        "no password in the URL"
    )
    assert "pgvector" in env["SEALMEM_VECTOR_BACKEND"]
    declared = set(compose["secrets"])
    for var in ("SEALMEM_MASTER_KEY_FILE", "SEALMEM_TOKEN_SECRET_FILE", "PGPASSWORD_FILE"):
        secret = env[var].removeprefix("/run/secrets/")
        assert env[var].startswith("/run/secrets/") and secret in declared and secret in app["secrets"], var
    assert not SECRET_SETTINGS & set(env), "secrets are passed as files, never as values"
    assert "/readyz" in " ".join(app["healthcheck"]["test"])
    assert any(str(v).endswith(":/var/lib/sealmem") for v in app["volumes"]), "a data volume"
    assert "ports" not in app, "replicas are reached through the lb service (so --scale works)"


def test_every_setting_reaches_the_container(compose: dict[str, Any]) -> None:
    """Each setting is set explicitly, passed through from .env/the shell, or set by the image; secrets only as
    files. A pass-through of a variable the image sets would UNSET it (Docker drops an empty `KEY` entry)."""
    env = compose["services"]["sealmem"]["environment"]
    from_image = image_env()
    passed = {k for k, v in env.items() if v is None}
    assert passed <= set(setting_vars()), sorted(passed - set(setting_vars()))
    assert not passed & set(from_image), f"pass-through would unset the image's {sorted(passed & set(from_image))}"
    missing = set(setting_vars()) - set(env) - set(from_image) - SECRET_SETTINGS
    assert not missing, (
        f"docker-compose.yml does not pass {sorted(missing)}: add them to x-sealmem-settings "
        "(`python docker/gen_env_example.py --compose` prints the block)"
    )


def test_vllm_gpu_profile(compose: dict[str, Any], gpu: dict[str, Any]) -> None:
    vllm = compose["services"]["vllm"]
    assert vllm["profiles"] == ["gpu"]
    assert "vllm/vllm-openai:" in vllm["image"]
    assert "--model" in vllm["command"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    port = str(vllm["expose"][0])
    app = gpu["services"]["sealmem"]
    assert app["environment"]["SEALMEM_LLM_BACKEND"] == "openai"
    assert app["environment"]["SEALMEM_OPENAI_BASE_URL"] == f"http://vllm:{port}/v1"
    assert app["depends_on"]["vllm"]["condition"] == "service_healthy"
    served = vllm["command"][vllm["command"].index("--served-model-name") + 1]
    assert served.split(":-")[-1].rstrip("}") in app["environment"]["SEALMEM_OPENAI_MODEL"]


def test_referenced_files_exist(compose: dict[str, Any]) -> None:
    assert (ROOT / compose["services"]["sealmem"]["build"]["context"] / "Dockerfile").is_file()
    assert DOCKERFILE.is_file()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind-mount source {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_secret_files_are_documented_and_never_shipped(compose: dict[str, Any]) -> None:
    """The secret files are created by the operator (docs/deploy.md says how), never committed or sent to a
    build: git and .dockerignore both leave the folder out."""
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    ignore = DockerIgnore.load()
    for name, secret in compose["secrets"].items():
        path = Path(secret["file"])
        assert path.parts[:2] == (".", "secrets") or path.parts[0] == "secrets", f"{name}: keep secrets in ./secrets"
        rel = Path(*[p for p in path.parts if p != "."]).as_posix()
        assert f"> {rel}" in doc, f"docs/deploy.md must show the command that creates {rel}"
        assert ignore.excluded(rel)
        ignored = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{rel} is not git-ignored"


def test_substitutions_are_documented(compose: dict[str, Any]) -> None:
    documented = set(env_example_entries())
    for path in (COMPOSE, COMPOSE_GPU):
        used = set(SUBSTITUTION.findall(path.read_text(encoding="utf-8")))
        assert used <= documented, f"{path.name}: document {sorted(used - documented)} in .env.example"


def test_lb_config_exists_and_targets_the_service(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    conf = next(str(v).split(":")[0] for v in lb["volumes"] if "nginx" in str(v))
    text = (ROOT / conf).read_text(encoding="utf-8")
    assert "http://sealmem:8080" in text and "resolver 127.0.0.11" in text
    assert lb["depends_on"]["sealmem"]["condition"] == "service_healthy"


# ---- with the real tools, when installed (`apt-get install -y docker-compose nginx-light`) ----------------


def _compose(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = have("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (v1) is not installed: apt-get install -y docker-compose")
    extra = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run(
        [binary, *extra, "--project-directory", str(ROOT), *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["-f", "docker-compose.yml", "config", "-q"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "--profile", "gpu", "config", "-q"],
    ],
    ids=["base", "gpu"],
)
def test_docker_compose_v1_validates(args: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    result = _compose(*args, env_file=empty)
    assert result.returncode == 0, result.stderr


def test_dotenv_values_reach_the_container(tmp_path: Path) -> None:
    """A setting in .env is passed through; the .env.example as it ships changes nothing."""
    env_file = tmp_path / ".env"
    env_file.write_text("SEALMEM_LOG_LEVEL=DEBUG\nSEALMEM_MAX_K=42\n", encoding="utf-8")
    result = _compose("-f", "docker-compose.yml", "config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    env = yaml.safe_load(result.stdout)["services"]["sealmem"]["environment"]
    assert env["SEALMEM_LOG_LEVEL"] == "DEBUG" and str(env["SEALMEM_MAX_K"]) == "42"
    assert env["SEALMEM_VECTOR_BACKEND"] == "pgvector"

    shipped = _compose("-f", "docker-compose.yml", "config", env_file=ROOT / ".env.example")
    assert shipped.returncode == 0, shipped.stderr
    env = yaml.safe_load(shipped.stdout)["services"]["sealmem"]["environment"]
    assert env["SEALMEM_LOG_LEVEL"] is None


def test_nginx_config_syntax(tmp_path: Path) -> None:
    nginx = have("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed: apt-get install -y nginx-light")
    main = tmp_path / "nginx.conf"
    temp = "".join(f"{k}_temp_path {tmp_path}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main.write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
        f"http {{ access_log off; {temp} include {ROOT}/docker/nginx.conf; }}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [nginx, "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
