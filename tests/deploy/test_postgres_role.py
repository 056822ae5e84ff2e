"""The app's own PostgreSQL role (issue #11, item 12): docker-compose.yml lets the postgres image run
docker/postgres-init/10-sealmem-role.sh on first start, and the app connects as the unprivileged role it makes.

No Docker engine is needed: the script runs as the superuser against a private pgserver cluster (PostgreSQL 16 +
pgvector, with its own psql), then Sealmem's migrations and a write and a search run over a password-checked
connection as that role, which must not be able to do anything a superuser or database creator could."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import URL, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from memory_store import HashingEmbedder, MasterKey, MemoryStore, NewMemory, StoreSettings, generate_key
from memory_store.crypto import encode_key
from memory_store.migrate import current_revision, head_revision, upgrade
from tests.deploy.conftest import COMPOSE, ROOT

pytestmark = pytest.mark.postgres

INIT_DIR = ROOT / "docker" / "postgres-init"
INIT_SCRIPT = INIT_DIR / "10-sealmem-role.sh"
APP_USER = "sealmem"
APP_DB = "sealmem"
# Quotes, a backslash, a dollar sign and a colon: the script must pass it to PostgreSQL as data.
APP_PASSWORD = "pa'ss\"wo\\rd $HOME :x 'ü"


@dataclass(frozen=True)
class Cluster:
    server: Any
    socket_dir: str
    bin_dir: Path
    password_file: Path

    def script_env(self, **extra: str) -> dict[str, str]:
        """The environment the postgres image gives an init script: psql on PATH, the superuser's name."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "APP_DB_"))}
        env.update(
            PATH=f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
            PGHOST=self.socket_dir,
            POSTGRES_USER="postgres",
            POSTGRES_DB="postgres",
            APP_DB_USER=APP_USER,
            APP_DB_NAME=APP_DB,
            APP_DB_PASSWORD_FILE=str(self.password_file),
        )
        env.update(extra)
        return env

    def run_script(self, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(INIT_SCRIPT)], env=self.script_env(**extra), capture_output=True, text=True, timeout=120, check=False
        )

    def url(self, database: str, *, user: str = "postgres", password: str | None = None) -> URL:
        return URL.create(
            "postgresql+psycopg", username=user, password=password, database=database, query={"host": self.socket_dir}
        )

    def engine(self, database: str, *, user: str = "postgres", password: str | None = None) -> Engine:
        return create_engine(self.url(database, user=user, password=password))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A private cluster (the script changes cluster-wide roles and grants), the role's password demanded on
    every connection of the app role (pgserver trusts local connections otherwise)."""
    pgserver = pytest.importorskip("pgserver")
    folder = tempfile.mkdtemp(prefix="sealmem-pg-role-")
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        socket_dir = str(server.get_uri().split("host=", 1)[1].split("&", 1)[0])
        password_file = Path(folder) / "pg_password"
        password_file.write_text(APP_PASSWORD + "\n", encoding="utf-8")  # as `openssl rand ... >` leaves it
        password_file.chmod(0o644)
        found = Cluster(server, socket_dir, Path(pgserver.__file__).parent / "pginstall" / "bin", password_file)
        admin = found.engine("postgres")
        with admin.connect() as conn:
            hba = Path(conn.execute(text("SHOW hba_file")).scalar_one())
        rules = f"local all {APP_USER} scram-sha-256\nhost all {APP_USER} all scram-sha-256\n"
        hba.write_text(rules + hba.read_text(encoding="utf-8"), encoding="utf-8")
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # Every statement logged: the script must keep the password out of the log on its own.
            conn.execute(text("ALTER SYSTEM SET log_statement = 'all'"))
            conn.execute(text("SELECT pg_reload_conf()"))
        admin.dispose()
        yield found
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def initialised(cluster: Cluster) -> Cluster:
    result = cluster.run_script()
    assert result.returncode == 0, result.stderr
    assert APP_PASSWORD not in result.stdout + result.stderr
    return cluster


@pytest.fixture
def app_engine(initialised: Cluster) -> Iterator[Engine]:
    engine = initialised.engine(APP_DB, user=APP_USER, password=APP_PASSWORD)
    yield engine
    engine.dispose()


def _refused(engine: Engine, sql: str) -> str:
    """The error PostgreSQL answers ``sql`` with (the test fails if it succeeds); outside a transaction, as
    CREATE DATABASE must be."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn, pytest.raises(DBAPIError) as raised:
        conn.execute(text(sql))
    return str(raised.value.orig)


# ---- the compose file -------------------------------------------------------------------------------------


def test_compose_runs_the_init_script_and_the_app_connects_as_its_role() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    pg, app = compose["services"]["postgres"], compose["services"]["sealmem"]
    pg_env, app_env = pg["environment"], app["environment"]
    assert "./docker/postgres-init:/docker-entrypoint-initdb.d:ro" in pg["volumes"]
    assert INIT_SCRIPT.is_file() and os.access(INIT_SCRIPT, os.X_OK), "the image sources, not runs, a non-executable"
    assert [p.name for p in INIT_DIR.iterdir()] == [INIT_SCRIPT.name], "the image runs every file in the folder"

    url = app_env["SEALMEM_DATABASE_URL"]
    user, database = url.split("//", 1)[1].split("@", 1)[0], url.rsplit("/", 1)[1]
    assert (user, database) == (pg_env["APP_DB_USER"], pg_env["APP_DB_NAME"]) == (APP_USER, APP_DB)
    assert pg_env["POSTGRES_USER"] != user, "the app must not connect as the superuser"
    assert pg_env["APP_DB_PASSWORD_FILE"] == app_env["PGPASSWORD_FILE"], "one secret: the app role's password"
    superuser_secret = pg_env["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/")
    app_secret = app_env["PGPASSWORD_FILE"].removeprefix("/run/secrets/")
    assert superuser_secret != app_secret
    assert superuser_secret in pg["secrets"] and superuser_secret in compose["secrets"]
    assert superuser_secret not in app["secrets"], "the app container never gets the superuser's password"
    assert app_secret in pg["secrets"] and app_secret in app["secrets"]


def test_the_init_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(INIT_SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout


# ---- the script against PostgreSQL 16 + pgvector -------------------------------------------------------------


def test_migrations_write_and_search_work_as_the_app_role(initialised: Cluster, app_engine: Engine, tmp_path: Path):
    upgrade(app_engine)  # 0003 runs CREATE EXTENSION IF NOT EXISTS vector: a no-op the role may run
    assert current_revision(app_engine) == head_revision(app_engine)
    key = MasterKey(generate_key())
    settings = StoreSettings(
        data_dir=tmp_path / "data",
        database_url=app_engine.url.render_as_string(hide_password=False),
        vector_backend="pgvector",
        master_key=encode_key(key.material),  # type: ignore[arg-type]
    )
    store = MemoryStore.open(settings, master_key=key, embedder=HashingEmbedder(dim=384))
    try:
        tenant = store.create_tenant(name="acme").id
        texts = ["My dog is named Biscuit.", "I live in Lisbon.", "Green tea every morning."]
        store.add_batch(tenant_id=tenant, items=[NewMemory(subject="user-42", text=t) for t in texts])
        hits = store.search(tenant_id=tenant, subject="user-42", query="My dog is named Biscuit.", k=1)
        assert hits[0].memory.text == texts[0]
    finally:
        store.close()
    with app_engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar_one() == APP_USER
        others = conn.execute(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> current_user")
        ).scalar_one()
        assert others == 0, "the role owns every table of its schema"
        assert conn.execute(text("SELECT count(*) FROM memories")).scalar_one() == 3


def test_the_app_role_is_no_superuser_and_reaches_only_its_own_database(initialised: Cluster, app_engine: Engine):
    with app_engine.connect() as conn:
        role = conn.execute(
            text(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
                "FROM pg_roles WHERE rolname = current_user"
            )
        ).one()
        assert tuple(role) == (False, False, False, False, False, True)
        owner = conn.execute(
            text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        ).scalar_one()
        assert owner == APP_USER
        member_of = conn.execute(
            text("SELECT count(*) FROM pg_auth_members WHERE member = (SELECT oid FROM pg_roles WHERE rolname = :r)"),
            {"r": APP_USER},
        ).scalar_one()
        assert member_of == 0, "no predefined roles (pg_read_all_data, pg_read_server_files, ...)"
    assert "permission denied to create database" in _refused(app_engine, "CREATE DATABASE sealmem_other")
    assert "permission denied to create role" in _refused(app_engine, "CREATE ROLE intruder")
    assert "permission denied" in _refused(app_engine, "SELECT pg_read_file('postgresql.conf')")
    assert "permission denied" in _refused(app_engine, "ALTER SYSTEM SET log_statement = 'all'")
    assert "must be owner" in _refused(app_engine, "DROP EXTENSION vector")

    # Another database on the cluster, with data: the role may not read it.
    admin = initialised.engine("postgres")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("DROP DATABASE IF EXISTS other_app"))
        conn.execute(text("CREATE DATABASE other_app"))
    other_admin = initialised.engine("other_app")
    with other_admin.begin() as conn:
        conn.execute(text("CREATE TABLE secrets (value text)"))
        conn.execute(text("INSERT INTO secrets VALUES ('not for sealmem')"))
    other_admin.dispose()
    admin.dispose()
    other = initialised.engine("other_app", user=APP_USER, password=APP_PASSWORD)
    try:
        assert "permission denied for table secrets" in _refused(other, "SELECT value FROM secrets")
    finally:
        other.dispose()
    # The maintenance database is closed to it altogether, and so is a wrong password.
    for database, password, error in [
        ("postgres", APP_PASSWORD, "permission denied for database"),
        (APP_DB, APP_PASSWORD + "x", "password authentication failed"),
    ]:
        engine = initialised.engine(database, user=APP_USER, password=password)
        with pytest.raises(DBAPIError, match=error):
            engine.connect().close()
        engine.dispose()


def test_no_other_role_may_connect_to_the_app_database(initialised: Cluster):
    admin = initialised.engine("postgres")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("DROP ROLE IF EXISTS bystander"))
        conn.execute(text("CREATE ROLE bystander LOGIN"))
        acl = conn.execute(text("SELECT datacl::text FROM pg_database WHERE datname = :d"), {"d": APP_DB}).scalar_one()
    admin.dispose()
    assert acl == f"{{{APP_USER}=CTc/{APP_USER}}}", "no grant to PUBLIC"
    bystander = initialised.engine(APP_DB, user="bystander")
    with pytest.raises(DBAPIError, match="permission denied for database"):
        bystander.connect().close()
    bystander.dispose()


def test_the_script_is_idempotent_and_keeps_the_password_out_of_sight(initialised: Cluster, app_engine: Engine):
    again = initialised.run_script()
    assert again.returncode == 0, again.stderr
    assert APP_PASSWORD not in again.stdout + again.stderr
    with app_engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar_one() == APP_USER
    admin = initialised.engine("postgres")
    with admin.connect() as conn:
        stored = conn.execute(text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": APP_USER}).scalar()
        data_dir = Path(conn.execute(text("SELECT current_setting('data_directory')")).scalar_one())
    admin.dispose()
    assert stored is not None and stored.startswith("SCRAM-SHA-256$") and APP_PASSWORD not in stored
    server_log = (data_dir / "log").read_text(encoding="utf-8", errors="replace")  # pgserver's `pg_ctl -l log`
    assert "CREATE EXTENSION IF NOT EXISTS vector" in server_log, "statements are logged"
    assert APP_PASSWORD not in server_log and "ALTER ROLE" not in server_log


def test_the_script_refuses_to_run_without_a_password_or_as_the_app_role(initialised: Cluster, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    for extra, error in [
        ({"APP_DB_PASSWORD_FILE": str(tmp_path / "missing")}, "is not readable"),
        ({"APP_DB_PASSWORD_FILE": str(empty)}, "is empty"),
        ({"POSTGRES_USER": APP_USER, "POSTGRES_DB": APP_DB, "PGPASSWORD": APP_PASSWORD}, "other than the app role"),
    ]:
        result = initialised.run_script(**extra)
        assert result.returncode != 0 and error in result.stderr, (extra, result.stderr)
