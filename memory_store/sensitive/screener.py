"""The store's side of desensitisation: each tenant's policy (cached), detection, and counts by type."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from memory_store.errors import NotFoundError, PolicyChangedError
from memory_store.models import Tenant
from memory_store.sensitive.detector import Detector, Finding, default_detector
from memory_store.sensitive.policy import SensitivePolicy
from memory_store.sensitive.vault import Screened, plain, screen


class Screener:
    """Screens texts by their tenant's policy before they are embedded or encrypted.

    Policies are cached per process, at most ``read_ttl_s`` old when used. A write also re-checks the
    revision it screened under inside its transaction, under the tenant's write lock (:meth:`check`): a policy
    changed by another process since is a :class:`PolicyChangedError`, and the write runs again with the new
    one. So no write commits under an old policy, and a change reaches every process's reads, prompts and
    rejections within ``read_ttl_s``.
    """

    def __init__(
        self, sessions: sessionmaker[Session], detector: Detector | None = None, *, read_ttl_s: float = 2.0
    ) -> None:
        self._sessions = sessions
        self._detector = detector
        self.read_ttl_s = read_ttl_s
        self._lock = threading.Lock()
        self._policies: dict[str, tuple[SensitivePolicy, float]] = {}
        self._counts: Counter[str] = Counter()

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = default_detector()
        return self._detector

    def policy(self, tenant_id: str, *, max_age_s: float | None = None) -> SensitivePolicy:
        """The tenant's policy, from the cache when it is younger than ``max_age_s`` (None: any age)."""
        now = time.monotonic()
        with self._lock:
            cached = self._policies.get(tenant_id)
        if cached is not None and (max_age_s is None or now - cached[1] <= max_age_s):
            return cached[0]
        with self._sessions.begin() as session:
            row = session.execute(
                select(Tenant.sensitive_policy, Tenant.policy_rev).where(Tenant.id == tenant_id)
            ).first()
        if row is None:
            raise NotFoundError("tenant not found")
        policy = SensitivePolicy.stored(row[0], int(row[1] or 0))
        with self._lock:
            self._policies[tenant_id] = (policy, now)
        return policy

    def read_policy(self, tenant_id: str) -> SensitivePolicy:
        return self.policy(tenant_id, max_age_s=self.read_ttl_s)

    def check(self, tenant_id: str, policy: SensitivePolicy, revision: int) -> None:
        """Inside a write: ``revision`` is the tenant's current one (read with its write lock)."""
        if revision != policy.revision:
            with self._lock:
                self._policies.pop(tenant_id, None)
            raise PolicyChangedError("the desensitisation policy changed during the write")

    def store_policy(self, session: Session, tenant_id: str, policy: SensitivePolicy) -> SensitivePolicy:
        """Save ``policy`` as the tenant's inside ``session`` (which holds the tenant's write lock)."""
        revision = session.execute(
            update(Tenant)
            .where(Tenant.id == tenant_id)
            .values(sensitive_policy=policy.to_stored(), policy_rev=Tenant.policy_rev + 1)
            .returning(Tenant.policy_rev)
        ).scalar_one()
        return SensitivePolicy(actions=policy.actions, reveal_roles=policy.reveal_roles, revision=int(revision))

    def remember(self, tenant_id: str, policy: SensitivePolicy) -> None:
        """Cache a policy this process just committed."""
        with self._lock:
            self._policies[tenant_id] = (policy, time.monotonic())

    def detect(self, text: str) -> list[Finding]:
        return self.detector.detect(text)

    def screen(self, tenant_id: str, texts: Sequence[str]) -> tuple[SensitivePolicy, list[Screened]]:
        """``texts`` after the tenant's policy (raises ``SensitiveDataRejected``), with the policy used."""
        policy = self.policy(tenant_id, max_age_s=self.read_ttl_s)
        if not policy.screens:
            return policy, [plain(text) for text in texts]
        findings = [self.detect(text) for text in texts]
        self.count(Counter(f.entity_type for items in findings for f in items))
        return policy, [screen(text, items, policy) for text, items in zip(texts, findings, strict=True)]

    def mask_rejected(self, tenant_id: str, text: str) -> str:
        """``text`` with values of the types the policy rejects replaced by ``<TYPE>`` (for text that must be
        stored although it was not the caller's to refuse, such as an LLM's reply)."""
        policy = self.policy(tenant_id, max_age_s=self.read_ttl_s)
        if "reject" not in policy.actions.values():
            return text
        parts, at = [], 0
        for finding in self.detect(text):
            if policy.action(finding.entity_type) == "reject":
                parts += [text[at : finding.start], f"<{finding.entity_type}>"]
                at = finding.end
        return "".join(parts) + text[at:]

    def count(self, found: Counter[str]) -> None:
        """Add detections made outside writes (prompts masked for an outside LLM) to :meth:`counts`."""
        if found:
            with self._lock:
                self._counts.update(found)

    def counts(self) -> dict[str, int]:
        """Values detected since this process started, by type (for /metrics)."""
        with self._lock:
            return dict(self._counts)
