"""Liveness, readiness and Prometheus metrics (no credential needed; no tenant data exposed)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from memory_store.migrate import require_head
from service.errors import ErrorBody, NotReady
from service.schemas import Health
from service.services import Services

router = APIRouter(tags=["health"], responses={422: {"model": ErrorBody, "description": "An unknown query parameter."}})


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: database reachable and migrated, index directory usable, model loaded",
    responses={503: {"model": ErrorBody, "description": "Not ready."}},
)
def readyz(request: Request) -> Health:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise NotReady("not ready: starting")
    store = services.store
    try:
        with store.engine.begin() as conn:  # commits, as every read does (memory_store.db.make_sessionmaker)
            conn.execute(text("SELECT 1"))
        require_head(store.engine)
    except Exception:
        raise NotReady("not ready: database unreachable or not migrated") from None
    index_dir = services.settings.index_dir
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise NotReady("not ready: index directory cannot be created") from None
    if not os.access(index_dir, os.W_OK):
        raise NotReady("not ready: index directory is not writable")
    return Health(
        status="ready",
        checks={"database": "ok", "index": "ok", "embedder": store.embedder.model_id},
    )


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Text exposition."}},
)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
