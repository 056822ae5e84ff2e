"""Row decoding, filter-to-SQL translation and cursors."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, bindparam, or_, select

from memory_store.errors import ValidationError
from memory_store.models import Memory, Subject
from memory_store.sealing import MemorySealer
from memory_store.types import Filters, MemoryRecord

_Q = TypeVar("_Q", bound="Select[*tuple[Any, ...]]")


class RecordRow(Protocol):
    """What a memory's public view is built from: a ``Memory`` instance, or a row of :data:`RECORD_COLUMNS`
    (read without the ORM's per-object bookkeeping or the sealed embedding, for reads of many rows)."""

    @property
    def uid(self) -> str: ...
    @property
    def text_ct(self) -> bytes: ...
    @property
    def metadata_ct(self) -> bytes: ...
    @property
    def agent_id(self) -> str | None: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def superseded_by(self) -> str | None: ...
    @property
    def importance(self) -> float: ...
    @property
    def source(self) -> str: ...
    @property
    def source_ref(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def last_accessed_at(self) -> datetime | None: ...
    @property
    def occurred_at(self) -> datetime | None: ...
    @property
    def expires_at(self) -> datetime | None: ...


RECORD_COLUMNS = (
    Memory.id,
    Memory.uid,
    Memory.text_ct,
    Memory.metadata_ct,
    Memory.agent_id,
    Memory.session_id,
    Memory.kind,
    Memory.status,
    Memory.superseded_by,
    Memory.importance,
    Memory.source,
    Memory.source_ref,
    Memory.created_at,
    Memory.updated_at,
    Memory.last_accessed_at,
    Memory.occurred_at,
    Memory.expires_at,
)
"""The columns :func:`decode` needs (and the row id), for ``select(*RECORD_COLUMNS)``."""


def decode(row: RecordRow, subject: Subject, sealer: MemorySealer) -> MemoryRecord:
    return record(
        row,
        subject.external_id,
        text=sealer.open_text(row.uid, row.text_ct),
        metadata=sealer.open_metadata(row.uid, row.metadata_ct),
    )


def record(row: RecordRow, subject: str, *, text: str, metadata: dict[str, Any]) -> MemoryRecord:
    """The public view of a row whose content is already in plaintext (decrypted, or just written)."""
    return MemoryRecord(
        id=row.uid,
        subject=subject,
        text=text,
        metadata=metadata,
        agent_id=row.agent_id,
        session_id=row.session_id,
        kind=row.kind,
        status=row.status,
        superseded_by=row.superseded_by,
        importance=row.importance,
        source=row.source,
        source_ref=row.source_ref,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_accessed_at=row.last_accessed_at,
        occurred_at=row.occurred_at,
        expires_at=row.expires_at,
    )


FilterShape = tuple[bool, ...]
"""Which of a :class:`Filters`' SQL conditions apply (:func:`filter_shape`): a statement is built once per shape."""


def filter_shape(filters: Filters) -> FilterShape:
    return (
        filters.include_superseded,
        filters.agent_id is not None,
        filters.session_id is not None,
        bool(filters.kinds),
        filters.created_after is not None,
        filters.created_before is not None,
        filters.occurred_after is not None,
        filters.occurred_before is not None,
    )


@functools.cache  # 2**8 shapes at most
def filter_conditions(shape: FilterShape) -> tuple[ColumnElement[bool], ...]:
    """SQL conditions for every filter except metadata equality (that needs decryption), their values left to
    bind (:func:`filter_params`): built once per shape, so a search does not pay for building them."""
    superseded, agent, session, kinds, created_after, created_before, occurred_after, occurred_before = shape
    conditions = [or_(Memory.expires_at.is_(None), Memory.expires_at > bindparam("f_now"))]
    if not superseded:
        conditions.append(Memory.status == "active")
    if agent:
        conditions.append(Memory.agent_id == bindparam("f_agent_id"))
    if session:
        conditions.append(Memory.session_id == bindparam("f_session_id"))
    if kinds:
        conditions.append(Memory.kind.in_(bindparam("f_kinds", expanding=True)))
    if created_after:
        conditions.append(Memory.created_at >= bindparam("f_created_after"))
    if created_before:
        conditions.append(Memory.created_at < bindparam("f_created_before"))
    if occurred_after:
        conditions.append(Memory.occurred_at >= bindparam("f_occurred_after"))
    if occurred_before:
        conditions.append(Memory.occurred_at < bindparam("f_occurred_before"))
    return tuple(conditions)


def filter_params(filters: Filters, now: datetime) -> dict[str, Any]:
    """The values :func:`filter_conditions` binds, for ``filters`` at time ``now``."""
    params: dict[str, Any] = {"f_now": now}
    for name in ("agent_id", "session_id", "created_after", "created_before", "occurred_after", "occurred_before"):
        value = getattr(filters, name)
        if value is not None:
            params[f"f_{name}"] = value
    if filters.kinds:
        params["f_kinds"] = list(filters.kinds)
    return params


def apply_filters(query: _Q, filters: Filters, now: datetime) -> _Q:
    """``query`` with :func:`filter_conditions`, their values bound."""
    return query.where(*filter_conditions(filter_shape(filters))).params(filter_params(filters, now))


def metadata_matches(metadata: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(key in metadata and metadata[key] == value for key, value in wanted.items())


@functools.cache
def candidate_statement(shape: FilterShape, *, with_metadata: bool = False) -> Select[*tuple[Any, ...]]:
    """Ids of one subject's candidate memories (``tenant_id`` and ``subject_id`` bound, with
    :func:`filter_params`); ``(id, uid, metadata_ct)`` when a metadata filter must decrypt them.

    The default shape (active, unexpired) is answered from the ``ix_memories_candidates`` index alone.
    """
    columns = (Memory.id, Memory.uid, Memory.metadata_ct) if with_metadata else (Memory.id,)
    return select(*columns).where(
        Memory.tenant_id == bindparam("tenant_id"),
        Memory.subject_id == bindparam("subject_id"),
        *filter_conditions(shape),
    )


MAX_CURSOR_ID = 2**63 - 1
"""The largest row id a cursor may carry: ids are signed 64-bit integers in SQLite and PostgreSQL."""
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]{1,64}={0,2}")
_CURSOR_VALUE = re.compile(r"v1:([1-9][0-9]{0,18})")


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The row id of a cursor made by :func:`encode_cursor`: an integer ``1 <= id <= 2**63 - 1``.

    Anything else (not URL-safe base64, another version, a sign, spaces, leading zeros, non-ASCII digits, a
    value past int64 that the database driver could not bind) is a :class:`ValidationError`, never reaching SQL.
    """
    if not _CURSOR_TEXT.fullmatch(cursor):
        raise ValidationError("cursor is malformed")
    unpadded = cursor.rstrip("=")
    try:
        raw = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), altchars=b"-_", validate=True)
        match = _CURSOR_VALUE.fullmatch(raw.decode("ascii"))
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValidationError("cursor is malformed") from exc
    if match is None or not 1 <= (value := int(match.group(1))) <= MAX_CURSOR_ID:
        raise ValidationError("cursor is malformed")
    return value
