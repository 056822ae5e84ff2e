"""Tenant activity for the admin console's overview: memories by status, and writes per day. Reads plaintext
columns only (status, event times), in grouped queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from memory_store.models import Memory, MemoryEvent, utcnow
from memory_store.retry import retry_read


@dataclass(frozen=True, kw_only=True)
class Activity:
    by_status: dict[str, int]
    writes_per_day: list[tuple[date, int]]  # oldest first, one entry per day (zeros included)


@retry_read
def tenant_activity(sessions: sessionmaker[Session], *, tenant_id: str, days: int = 30) -> Activity:
    """Memories of the tenant by status, and memory writes (history events: add, update, supersede, delete) per
    UTC day over the last ``days`` days."""
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=utcnow().tzinfo)
    day = func.date(MemoryEvent.at)
    with sessions.begin() as session:
        by_status = dict(
            session.execute(
                select(Memory.status, func.count()).where(Memory.tenant_id == tenant_id).group_by(Memory.status)
            ).all()
        )
        rows = session.execute(
            select(day, func.count()).where(MemoryEvent.tenant_id == tenant_id, MemoryEvent.at >= since).group_by(day)
        ).all()
    counts: dict[date, int] = {}
    for stamp, n in rows:
        key = stamp if isinstance(stamp, date) else date.fromisoformat(str(stamp)[:10])
        counts[key] = counts.get(key, 0) + int(n)
    series = [(first + timedelta(days=i), counts.get(first + timedelta(days=i), 0)) for i in range(days)]
    return Activity(by_status={str(k): int(v) for k, v in by_status.items()}, writes_per_day=series)
