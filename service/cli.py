"""The ``sealmem`` command line: operator tasks on the same settings and data as ``sealmem serve``."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from memory_store.bulk import add_in_batches
from memory_store.credentials import ApiKeyStore
from memory_store.crypto import MasterKey, encode_key, generate_key, write_secret_file
from memory_store.db import make_engine, make_sessionmaker
from memory_store.embedder import Embedder
from memory_store.errors import NotFoundError, StoreError
from memory_store.migrate import current_revision, upgrade
from memory_store.sensitive.vault import SensitiveDataRejected
from memory_store.store import MemoryStore
from memory_store.types import NewMemory
from service.auditing import OPERATOR, Caller
from service.keyfiles import resolve_secret_files
from service.logs import configure_logging
from service.schemas import HistoryEntryOut, MemoryOut
from service.settings import Settings

log = logging.getLogger("sealmem.cli")
IMPORT_BATCH = 100


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


def _write_private(path: Path, lines: Iterator[str]) -> None:
    """Write a new file readable by its owner only (exports hold plaintext)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")


@dataclass(frozen=True)
class _CliEnv:
    """What the commands share: the injected ``settings`` and ``embedder`` (``None``: from the environment, the
    default embedder). It travels as the click context's ``obj``."""

    embedder: Embedder | None
    settings: Settings | None

    def load_settings(self) -> Settings:
        if self.settings is not None:
            return self.settings
        try:
            return Settings()
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise _fail(f"invalid settings: {exc}") from exc

    @contextmanager
    def opened(self, *, create_secrets: bool = False) -> Iterator[tuple[Settings, MemoryStore]]:
        """Migrate, then open the store; any storage error becomes a clean exit 1."""
        from service.app import open_store  # the app module pulls in FastAPI: only when needed

        resolved = resolve_secret_files(self.load_settings(), create=create_secrets)
        try:
            _upgrade(resolved)
            store = open_store(resolved, self.embedder)
        except StoreError as exc:
            raise _fail(str(exc)) from exc
        try:
            yield resolved, store
        except StoreError as exc:
            raise _fail(str(exc)) from exc
        finally:
            store.close()


def _env(ctx: typer.Context) -> _CliEnv:
    env = ctx.obj
    assert isinstance(env, _CliEnv), "commands run under make_cli()"
    return env


def _upgrade(settings: Settings) -> None:
    """Bring the database schema to the newest revision (a short-lived engine)."""
    engine = make_engine(settings)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _tenant_id_of(store: MemoryStore, tenant: str) -> str:
    for info in store.list_tenants():
        if tenant in (info.id, info.name):
            return info.id
    raise _fail(f"no tenant with id or name {tenant!r}")


def keygen() -> None:
    """Print a new random 32-byte key, base64-encoded (for SEALMEM_MASTER_KEY or SEALMEM_TOKEN_SECRET)."""
    typer.echo(encode_key(generate_key()))


def migrate(ctx: typer.Context) -> None:
    """Upgrade the database schema to the newest revision."""
    engine = make_engine(_env(ctx).load_settings())
    try:
        upgrade(engine)
        typer.echo(f"database schema at revision {current_revision(engine)}")
    except StoreError as exc:
        raise _fail(str(exc)) from exc
    finally:
        engine.dispose()


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default: SEALMEM_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: SEALMEM_PORT).")] = None,
) -> None:
    """Run migrations, then serve the API with uvicorn.

    On a first start with the embedded database, creates the master key and token secret files in the
    data directory (mode 0600). The data directory and everything in it are made owner-only (0700/0600), and
    so is everything the server creates there."""
    import uvicorn

    from service.app import create_app, protect_data_dir
    from service.balance import BOARD_ENV, create_board

    env = _env(ctx)
    base = env.load_settings()
    configure_logging(base.log_level)
    # Before anything is written (secret files, the database by the migrations); worker processes inherit it.
    protect_data_dir(base)
    resolved = resolve_secret_files(base, create=True)
    try:
        _upgrade(resolved)
    except StoreError as exc:
        raise _fail(str(exc)) from exc
    bind_host, bind_port = host or resolved.host, port or resolved.port
    workers = resolved.worker_count
    if workers > 1 and (env.embedder is not None or env.settings is not None):
        log.warning("one worker process: injected settings or embedder cannot reach other processes")
        workers = 1
    if workers == 1:
        app = create_app(resolved, embedder=env.embedder)
        uvicorn.run(app, host=bind_host, port=bind_port, log_config=None, access_log=False)
        return
    log.info("serving with %d worker processes", workers)
    # The workers' shared load board (service.balance), in a directory only this server can read; workers
    # inherit its path with the environment.
    with tempfile.TemporaryDirectory(prefix="sealmem-serve-") as private:
        try:
            os.environ[BOARD_ENV] = str(create_board(Path(private)))
        except OSError as exc:
            log.warning("worker load board unavailable (%s); connections are not rebalanced", exc)
        try:
            uvicorn.run(
                "service.app:app_from_environment",
                factory=True,
                workers=workers,
                host=bind_host,
                port=bind_port,
                log_config=None,
                access_log=False,
            )
        finally:
            os.environ.pop(BOARD_ENV, None)


def tenant_create(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Unique tenant name.")]) -> None:
    """Create a tenant and its first admin key; prints {"tenant_id", "admin_key"} (key shown once)."""
    with _env(ctx).opened(create_secrets=True) as (_, store):
        tenant = store.create_tenant(name=name)
        issued = ApiKeyStore(make_sessionmaker(store.engine)).create(
            tenant_id=tenant.id,
            role="admin",
            name="admin",
            created_by=OPERATOR,
            audit=Caller.operator().event("key.create"),
        )
    typer.echo(json.dumps({"tenant_id": tenant.id, "admin_key": issued.secret}))


def rotate_master_key(ctx: typer.Context) -> None:
    """Re-wrap every data key under a new master key.

    A key file is replaced atomically (the old one is kept as a backup); a key that came from
    SEALMEM_MASTER_KEY is printed for you to store."""
    new_key = MasterKey(generate_key())
    with _env(ctx).opened() as (resolved, store):
        key_file = resolved.master_key_file
        staged = key_file.with_name(key_file.name + ".new") if key_file is not None else None
        if staged is not None:
            # Written before the database changes: whatever happens next, the new key is on disk.
            staged.unlink(missing_ok=True)
            write_secret_file(staged, encode_key(new_key.material))
        try:
            moved = store.rotate_master_key(new_master_key=new_key, audit=Caller.operator().event("master_key.rotate"))
        except BaseException:
            if staged is not None:
                staged.unlink(missing_ok=True)
            raise
    if key_file is None or staged is None:
        typer.echo(f"re-wrapped {moved} data keys; new master key (set SEALMEM_MASTER_KEY to it now):")
        typer.echo(encode_key(new_key.material))
        return
    backup = key_file.with_name(f"{key_file.name}.{datetime.now(UTC):%Y%m%dT%H%M%SZ}.bak")
    os.link(key_file, backup)
    os.replace(staged, key_file)
    typer.echo(
        f"re-wrapped {moved} data keys; {key_file} now holds the new key "
        f"(fingerprint {new_key.fingerprint}); the old key is in {backup}"
    )


def reindex(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Tenant id or name (default: every tenant).")] = None,
) -> None:
    """Rebuild vector indexes from the encrypted embeddings in SQL."""
    with _env(ctx).opened() as (_, store):
        ids = [_tenant_id_of(store, tenant)] if tenant else [t.id for t in store.list_tenants()]
        with _progress() as progress:
            task = progress.add_task("reindexing tenants", total=len(ids))
            for tenant_id in ids:
                vectors = store.reindex_tenant(tenant_id=tenant_id)
                progress.console.print(f"{tenant_id}: {vectors} vectors")
                progress.advance(task)


def export(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="Tenant id or name.")],
    subject: Annotated[str, typer.Option(help="Subject to export.")],
    out: Annotated[Path, typer.Argument(help="New JSONL file to write (mode 0600; holds plaintext).")],
    reveal: Annotated[
        bool,
        typer.Option(
            help="Write pseudonymised values as their originals (for a subject's access request, or to import "
            "elsewhere); by default they stay placeholders such as <EMAIL_ADDRESS_1>."
        ),
    ] = False,
) -> None:
    """Export everything held about a subject as JSON lines: a subject line, memories, history."""
    if out.exists():
        raise _fail(f"{out} already exists")
    with _env(ctx).opened() as (_, store):
        tenant_id = _tenant_id_of(store, tenant)
        try:
            data = store.export_subject(tenant_id=tenant_id, subject=subject)
        except NotFoundError as exc:
            raise _fail(str(exc)) from exc
        if reveal:
            data["memories"] = store.reveal(tenant_id=tenant_id, records=data["memories"], role=None)
        store.audit.append(
            tenant_id=tenant_id,
            event=Caller.operator().event(
                "subject.export",
                subject=subject,
                memory_ids=[m.id for m in data["memories"]],
                detail={"revealed": reveal},
            ),
        )
    _write_private(out, _export_lines(data))
    typer.echo(f"exported {len(data['memories'])} memories and {len(data['history'])} history events to {out}")


def _export_lines(data: dict[str, Any]) -> Iterator[str]:
    """The JSON lines of an export: the subject, then its memories (with a progress bar), then its history."""
    memories, history = data["memories"], data["history"]
    created = data["created_at"].isoformat()
    yield json.dumps({"type": "subject", "subject": data["subject"], "created_at": created})
    with _progress() as progress:
        task = progress.add_task("exporting memories", total=len(memories))
        for memory in memories:
            yield json.dumps({"type": "memory", **MemoryOut.of(memory).model_dump(mode="json")})
            progress.advance(task)
    for event in history:
        yield json.dumps({"type": "event", **HistoryEntryOut.of(event).model_dump(mode="json")})


def import_(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="Tenant id or name.")],
    source: Annotated[Path, typer.Argument(help="JSONL file written by `sealmem export`.")],
    subject: Annotated[str | None, typer.Option(help="Import under this subject instead.")] = None,
) -> None:
    """Import the memories of an export file (validated completely before anything is written)."""
    items = _read_export(source, subject)
    with _env(ctx).opened() as (_, store):
        tenant_id = _tenant_id_of(store, tenant)
        caller = Caller.operator("cli-import")
        try:  # a type the tenant's policy rejects stops the import before its first batch is written
            store.screener.screen(tenant_id, [item.text for item in items])
        except SensitiveDataRejected as exc:
            raise _fail(f"nothing imported: {exc}") from exc
        with _progress() as progress:
            task = progress.add_task("importing memories", total=len(items))
            batches = [items[start : start + IMPORT_BATCH] for start in range(0, len(items), IMPORT_BATCH)]
            for stored in add_in_batches(  # the next batch is embedded on every core while one is written
                store,
                tenant_id=tenant_id,
                batches=batches,
                actor=caller.actor,
                audit=caller.event("memory.import"),
                guard=caller.guard(),
            ):
                progress.advance(task, len(stored))
    typer.echo(f"imported {len(items)} memories")


def mcp_command(
    url: Annotated[
        str, typer.Option(envvar="SEALMEM_URL", help="Base URL of the Sealmem server.")
    ] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="SEALMEM_SUBJECT_TOKEN",
            show_default=False,
            help="Subject token (POST /v1/tokens); prefer the environment variable to the option.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="SEALMEM_SUBJECT_TOKEN_FILE",
            show_default=False,
            help="File holding the subject token, read again on every call (replace it before it expires).",
        ),
    ] = None,
) -> None:
    """Serve MCP on stdin/stdout for one subject: tools remember, recall, list_memories and forget, each a REST
    request to URL with the subject token (an API key is refused)."""
    import anyio

    from service.mcp.stdio import RemoteConnector, TokenProblem, serve_stdio

    try:
        connector = RemoteConnector(url, token=token, token_file=token_file if token is None else None)
    except TokenProblem as exc:
        raise _fail(str(exc)) from exc
    configure_logging("WARNING")  # stderr only: stdout carries the protocol
    anyio.run(serve_stdio, connector)


def make_cli(*, embedder: Embedder | None = None, settings: Settings | None = None) -> typer.Typer:
    """Build the CLI. ``embedder`` and ``settings`` are injected by tests; by default both come from the
    environment (``SEALMEM_*``), exactly as for ``sealmem serve``."""
    cli = typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        help="Sealmem operator commands.",
        context_settings={"obj": _CliEnv(embedder=embedder, settings=settings)},
    )
    tenant_cli = typer.Typer(no_args_is_help=True, help="Tenants.")
    cli.add_typer(tenant_cli, name="tenant")
    tenant_cli.command("create")(tenant_create)
    cli.command()(keygen)
    cli.command()(migrate)
    cli.command()(serve)
    cli.command("rotate-master-key")(rotate_master_key)
    cli.command()(reindex)
    cli.command()(export)
    cli.command("import")(import_)
    cli.command("mcp")(mcp_command)
    return cli


def _read_export(source: Path, subject: str | None) -> list[NewMemory]:
    from memory_store import validation

    items: list[NewMemory] = []
    try:
        handle = source.open(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot read {source}: {exc.strerror}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line: dict[str, Any] = json.loads(raw)
                if line.get("type") != "memory":
                    continue
                item = NewMemory(
                    subject=subject or line["subject"],
                    text=line["text"],
                    metadata=line.get("metadata") or {},
                    agent_id=line.get("agent_id"),
                    session_id=line.get("session_id"),
                    kind=line.get("kind", "fact"),
                    importance=float(line.get("importance", 0.5)),
                    source="import",
                    source_ref=line.get("id"),
                    occurred_at=_when(line.get("occurred_at")),
                    expires_at=_when(line.get("expires_at")),
                )
                validation.check_new_memory(item)
            except (ValueError, KeyError, TypeError, AttributeError, StoreError) as exc:
                # Name the line and the problem, never the line's content.
                problem = str(exc) if isinstance(exc, StoreError) else type(exc).__name__
                if isinstance(exc, KeyError):
                    problem = f"missing field {exc}"
                raise _fail(f"{source}, line {number}: not a valid memory ({problem})") from None
            items.append(item)
    return items


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def main() -> None:
    """Entry point of the ``sealmem`` script."""
    make_cli()()
