"""Input rules shared by every write path of the store."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from memory_store.errors import ValidationError
from memory_store.types import NewMemory

_IDENT = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_TEXT_CHARS = 32_000
MAX_METADATA_BYTES = 16_384
MAX_METADATA_DEPTH = 5


def check_identifier(value: str, what: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value) or value != value.strip():
        raise ValidationError(f"{what} must be 1-256 printable characters without surrounding spaces")
    return value


def check_text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise ValidationError(f"text is longer than {MAX_TEXT_CHARS} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError("text is not valid Unicode") from exc
    return text


def nesting_depth(value: Any, *, stop_above: int | None = None) -> int:
    """Nesting depth of containers: a scalar is 0, ``{}`` and ``{"a": 1}`` are 1, ``{"a": {"b": 1}}`` is 2.

    Iterative (a recursive walk of hostile JSON nested hundreds of levels deep raised RecursionError, a 500);
    with ``stop_above`` it returns as soon as the depth exceeds that number.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if stop_above is not None and deepest > stop_above:
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise ValidationError("metadata must be an object")
    # Depth first: serialising very deep JSON can itself fail (RecursionError) before any size check.
    if nesting_depth(metadata, stop_above=MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
        raise ValidationError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        raw = json.dumps(metadata, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("metadata must be JSON (finite numbers, string keys)") from exc
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise ValidationError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError("metadata is not valid Unicode") from exc
    return metadata


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ValidationError("kind must be a lowercase identifier such as 'fact' or 'turn'")
    return kind


def check_importance(importance: float) -> float:
    if not isinstance(importance, int | float) or math.isnan(importance) or not 0.0 <= importance <= 1.0:
        raise ValidationError("importance must be between 0 and 1")
    return float(importance)


def check_new_memory(item: NewMemory) -> NewMemory:
    check_identifier(item.subject, "subject")
    check_text(item.text)
    check_metadata(item.metadata)
    check_kind(item.kind)
    check_importance(item.importance)
    for value, what in (
        (item.agent_id, "agent_id"),
        (item.session_id, "session_id"),
        (item.source_ref, "source_ref"),
    ):
        if value is not None:
            check_identifier(value, what)
    check_kind(item.source)
    for stamp, what in ((item.occurred_at, "occurred_at"), (item.expires_at, "expires_at")):
        if stamp is not None and stamp.tzinfo is None:
            raise ValidationError(f"{what} must carry a timezone")
    return item
