"""Screening a text by policy, and the vault of pseudonymised originals.

A write screens its texts before embedding (:func:`screen`): masked and pseudonymised values become ``<TYPE>``
in the text that is embedded, a rejected type stops the write. Inside the write's transaction (which holds the
tenant's write lock) :class:`Vault` gives each pseudonymised value its subject-stable ordinal (the same value,
told again, gets the same ``<TYPE_N>``) and seals new originals under the subject's data key; the text stored
then carries ``<TYPE_N>``. Originals are found again by a keyed digest (HMAC under a key derived from the
subject's data key), never by the value, and forgetting the subject deletes them with its key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from memory_store.crypto import associated_data, open_sealed, seal
from memory_store.errors import ValidationError
from memory_store.models import SensitiveValue, utcnow
from memory_store.sensitive.detector import ENTITY_TYPES, Finding
from memory_store.sensitive.policy import SensitivePolicy

# <TYPE> (masked) or <TYPE_N> (pseudonymised); TYPE has no digits, so "_N" is never part of it.
PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*[A-Z])(?:_([1-9][0-9]{0,8}))?>")
_DIGEST_LABEL = b"sealmem/v1/vault-digest"


class SensitiveDataRejected(ValidationError):
    """The text holds a type of sensitive value the tenant's policy rejects; nothing was stored."""

    code = "sensitive_data_rejected"

    def __init__(self, types: Iterable[str]) -> None:
        self.types = sorted(set(types))
        super().__init__(
            "the text contains sensitive data this tenant's policy rejects ("
            + ", ".join(self.types)
            + "); nothing was stored"
        )


def normalise(entity_type: str, value: str) -> str:
    """The form two spellings of one value share (a card with or without spaces, an email in any case)."""
    if entity_type == "EMAIL_ADDRESS":
        return value.strip().lower()
    if entity_type == "PHONE_NUMBER":
        return "".join(ch for ch in value if ch.isdigit() or ch == "+")
    if entity_type in ("CREDIT_CARD", "IBAN_CODE"):
        return "".join(ch for ch in value if ch.isalnum()).upper()
    return value.strip()


@dataclass(frozen=True)
class Pending:
    """A value to pseudonymise: its placeholder's ordinal is given inside the write's transaction."""

    entity_type: str
    value: str

    @property
    def norm(self) -> str:
        return normalise(self.entity_type, self.value)


@dataclass(frozen=True)
class Screened:
    """A text after the policy: ``embedded`` is what the embedder sees (pseudonymised values as ``<TYPE>``);
    :meth:`render` gives the stored text once the vault has numbered the pending values."""

    parts: tuple[str | Pending, ...]
    counts: dict[str, int] = field(default_factory=dict)  # detections by type, whatever the action

    @property
    def pending(self) -> list[Pending]:
        return [p for p in self.parts if isinstance(p, Pending)]

    @property
    def embedded(self) -> str:
        return "".join(p if isinstance(p, str) else f"<{p.entity_type}>" for p in self.parts)

    def render(self, ordinals: dict[tuple[str, str], int]) -> str:
        return "".join(
            p if isinstance(p, str) else f"<{p.entity_type}_{ordinals[(p.entity_type, p.norm)]}>" for p in self.parts
        )


def plain(text: str) -> Screened:
    return Screened(parts=(text,))


def screen(text: str, findings: Sequence[Finding], policy: SensitivePolicy) -> Screened:
    """Apply ``policy`` to ``findings`` (sorted, non-overlapping) in ``text``; raises
    :class:`SensitiveDataRejected` naming every rejected type found."""
    rejected = [f.entity_type for f in findings if policy.action(f.entity_type) == "reject"]
    if rejected:
        raise SensitiveDataRejected(rejected)
    parts: list[str | Pending] = []
    at = 0
    for finding in findings:
        action = policy.action(finding.entity_type)
        if action == "keep":
            continue
        parts.append(text[at : finding.start])
        value = text[finding.start : finding.end]
        parts.append(f"<{finding.entity_type}>" if action == "mask" else Pending(finding.entity_type, value))
        at = finding.end
    parts.append(text[at:])
    counts = Counter(f.entity_type for f in findings)
    return Screened(parts=tuple(p for p in parts if p != ""), counts=dict(counts))


def placeholders_in(text: str) -> set[tuple[str, int]]:
    """The numbered placeholders of known types in ``text``."""
    return {
        (m.group(1), int(m.group(2)))
        for m in PLACEHOLDER.finditer(text)
        if m.group(2) is not None and m.group(1) in ENTITY_TYPES
    }


def restore(text: str, originals: dict[tuple[str, int], str]) -> str:
    """``text`` with every numbered placeholder found in ``originals`` replaced by its value."""

    def one(match: re.Match[str]) -> str:
        if match.group(2) is None:
            return match.group(0)
        return originals.get((match.group(1), int(match.group(2))), match.group(0))

    return PLACEHOLDER.sub(one, text)


class Vault:
    """One subject's pseudonymised originals, inside a session (a write's, for :meth:`number`)."""

    def __init__(self, session: Session, *, tenant_id: str, subject_id: str, key: bytes) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._subject_id = subject_id
        self._key = key
        self._digest_key = hmac.new(key, _DIGEST_LABEL, hashlib.sha256).digest()

    def _digest(self, entity_type: str, norm: str) -> str:
        return hmac.new(self._digest_key, associated_data(entity_type, norm), hashlib.sha256).hexdigest()

    def _ad(self, entity_type: str, ordinal: int) -> bytes:
        return associated_data("vault", self._tenant_id, self._subject_id, entity_type, str(ordinal))

    def number(self, pending: Sequence[Pending]) -> dict[tuple[str, str], int]:
        """Ordinals for ``pending`` values: a value already in the vault keeps its own, a new one gets the next
        free ordinal of its type and is sealed in. Call with the tenant's write lock held."""
        wanted = {(p.entity_type, p.norm): p.value for p in pending}
        if not wanted:
            return {}
        digests = {self._digest(t, n): (t, n) for t, n in wanted}
        known: dict[tuple[str, str], int] = {}
        for digest, ordinal in self._session.execute(
            select(SensitiveValue.digest, SensitiveValue.ordinal).where(
                SensitiveValue.subject_id == self._subject_id, SensitiveValue.digest.in_(digests)
            )
        ):
            known[digests[digest]] = int(ordinal)
        missing = [(t, n) for (t, n) in wanted if (t, n) not in known]
        if missing:
            types = {t for t, _ in missing}
            top = {
                str(t): int(n)
                for t, n in self._session.execute(
                    select(SensitiveValue.entity_type, func.max(SensitiveValue.ordinal))
                    .where(SensitiveValue.subject_id == self._subject_id, SensitiveValue.entity_type.in_(types))
                    .group_by(SensitiveValue.entity_type)
                )
            }
            rows = []
            now = utcnow()
            for entity_type, norm in missing:
                ordinal = top.get(entity_type, 0) + 1
                top[entity_type] = ordinal
                known[(entity_type, norm)] = ordinal
                rows.append(
                    {
                        "tenant_id": self._tenant_id,
                        "subject_id": self._subject_id,
                        "entity_type": entity_type,
                        "ordinal": ordinal,
                        "digest": self._digest(entity_type, norm),
                        "value_ct": seal(
                            self._key, wanted[(entity_type, norm)].encode("utf-8"), self._ad(entity_type, ordinal)
                        ),
                        "created_at": now,
                    }
                )
            self._session.execute(insert(SensitiveValue), rows)
        return known

    def find(self, values: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Ordinals of values (type, original) already in the vault, keyed as given; nothing is added."""
        by_digest: dict[str, list[tuple[str, str]]] = {}
        for entity_type, value in set(values):
            by_digest.setdefault(self._digest(entity_type, normalise(entity_type, value)), []).append(
                (entity_type, value)
            )
        if not by_digest:
            return {}
        found: dict[tuple[str, str], int] = {}
        for digest, ordinal in self._session.execute(
            select(SensitiveValue.digest, SensitiveValue.ordinal).where(
                SensitiveValue.subject_id == self._subject_id, SensitiveValue.digest.in_(by_digest)
            )
        ):
            for key in by_digest[digest]:
                found[key] = int(ordinal)
        return found

    def top_ordinals(self) -> dict[str, int]:
        """The highest ordinal of each type in the vault."""
        return {
            str(t): int(n)
            for t, n in self._session.execute(
                select(SensitiveValue.entity_type, func.max(SensitiveValue.ordinal))
                .where(SensitiveValue.subject_id == self._subject_id)
                .group_by(SensitiveValue.entity_type)
            )
        }

    def originals(self, wanted: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The originals behind numbered placeholders (those the vault holds)."""
        pairs = set(wanted)
        if not pairs:
            return {}
        rows = self._session.execute(
            select(SensitiveValue.entity_type, SensitiveValue.ordinal, SensitiveValue.value_ct).where(
                SensitiveValue.subject_id == self._subject_id,
                SensitiveValue.entity_type.in_({t for t, _ in pairs}),
                SensitiveValue.ordinal.in_({n for _, n in pairs}),
            )
        )
        found: dict[tuple[str, int], str] = {}
        for entity_type, ordinal, blob in rows:
            pair = (str(entity_type), int(ordinal))
            if pair in pairs:
                found[pair] = open_sealed(self._key, blob, self._ad(*pair)).decode("utf-8")
        return found
