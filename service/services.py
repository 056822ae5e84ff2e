"""The components one app instance works with, built once in the lifespan and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from memory_store.console_sessions import ConsoleSessionStore
from memory_store.credentials import ApiKeyStore
from memory_store.db import make_sessionmaker
from memory_store.store import MemoryStore
from service.admission import Admission
from service.ahead import AheadOfRequests
from service.auditing import Auditor
from service.auth import Authenticator
from service.balance import WorkerBoard
from service.keyfiles import token_secret_from_settings
from service.limits import Limits
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.settings import Settings
from service.tokens import TokenSigner


@dataclass(frozen=True, kw_only=True)
class Services:
    settings: Settings
    store: MemoryStore
    keys: ApiKeyStore
    auditor: Auditor
    signer: TokenSigner
    auth: Authenticator
    limits: Limits
    metrics: Metrics
    console_sessions: ConsoleSessionStore
    ahead: AheadOfRequests
    """Threads that screen and embed a search's or an add's text before the request thread takes it."""
    admission: Admission
    """The turn of a search's or an add's store work: oldest request first, across the server's workers."""


def build_services(
    settings: Settings, store: MemoryStore, metrics: Metrics, *, board: WorkerBoard | None = None
) -> Services:
    sessions = make_sessionmaker(store.engine)
    keys = ApiKeyStore(sessions)
    signer = TokenSigner(token_secret_from_settings(settings), max_ttl_seconds=settings.token_max_ttl_seconds)
    auth = Authenticator(
        keys=keys,
        signer=signer,
        metrics=metrics,
        token_limiter=RateLimiter(
            per_minute=settings.rate_limit_token_per_minute, burst=settings.rate_limit_token_burst
        ),
        key_limiter=RateLimiter(per_minute=settings.rate_limit_key_per_minute, burst=settings.rate_limit_key_burst),
        failure_limiter=RateLimiter(per_minute=settings.rate_limit_auth_failures_per_minute),
    )
    return Services(
        settings=settings,
        store=store,
        keys=keys,
        auditor=Auditor(store.audit),
        signer=signer,
        auth=auth,
        limits=Limits(settings),
        metrics=metrics,
        console_sessions=ConsoleSessionStore(
            sessions,
            lambda token: store.pseudonym("console-session", token),
            idle=timedelta(seconds=settings.console_idle_timeout_seconds),
            lifetime=timedelta(seconds=settings.console_session_lifetime_seconds),
        ),
        ahead=AheadOfRequests.for_embedder(store.embedder, settings.prepare_niceness),
        admission=Admission(
            per_worker=settings.admission_per_worker, board=board, on_wait=metrics.admission_wait.observe
        ),
    )
