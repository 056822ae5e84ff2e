"""Isolation as a property: hypothesis generates sequences of operations by principals of two tenants (admin,
app and reader keys, subject tokens of several subjects with random scopes, revoked credentials) and after
every step checks that

- the status is exactly what the credential allows (401 revoked, 403 role/scope, 404 outside the tenant or
  another subject than a token's, else success);
- no response carries the text of a memory outside what the credential may see (every memory text is a
  unique marker; responses are scanned for all markers the caller must not see);
- the stored state equals the model: nothing was written, changed or deleted outside the credential's reach
  (chat write-back included: it may only add memories of the chatting subject);
- the audit trail matches what happened: exactly the records the operation owes, in the caller's tenant only,
  naming the caller's credential, role, token, the request id, the outcome and the memory ids handed out; none
  for 401/403; never memory text; and both tenants' hash chains verify.

One app serves every generated example; each example provisions two fresh tenants (the other examples'
tenants stay around as more foreign data no one may reach).
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from memory_store.types import Filters
from tests.harness import Harness, bearer, fresh_data_dir, make_settings
from tests.proofs.conftest import serve_app

SUBJECTS = ("alice", "bob", "carol")
SCOPE_SETS = (
    frozenset({"read"}),
    frozenset({"write"}),
    frozenset({"chat"}),
    frozenset({"read", "write"}),
    frozenset({"read", "write", "chat"}),
)
EXAMPLES = int(os.environ.get("SEALMEM_ISOLATION_EXAMPLES", "30"))
STEPS = int(os.environ.get("SEALMEM_ISOLATION_STEPS", "40"))
AUDITED_READS = {"get": "memory.get", "history": "memory.history", "list": "memory.list", "search": "memory.search"}


@dataclass(frozen=True)
class Principal:
    label: str
    tenant: int  # index into the machine's two tenants
    role: str  # admin, app, reader, subject
    credential: str
    key_id: str  # for a token: the key that minted it
    scopes: frozenset[str] = frozenset()
    subject: str | None = None
    token_id: str | None = None

    @property
    def is_token(self) -> bool:
        return self.role == "subject"

    def may(self, scope: str, key_roles: set[str]) -> bool:
        return scope in self.scopes if self.is_token else self.role in key_roles

    def sees(self, tenant: int, subject: str) -> bool:
        """Whose memory content may reach this principal at all (by any operation its credential permits)."""
        return tenant == self.tenant and (not self.is_token or subject == self.subject)


@dataclass
class Memory:
    id: str
    tenant: int
    subject: str
    text: str


@dataclass
class App:
    served: Harness
    tenants_made: Iterator[int] = field(default_factory=itertools.count)


APP: App | None = None
OUTCOMES: Counter[str] = Counter()  # "rule status" -> count, to show the generated mix covers every branch


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, migrated_db: Path) -> Iterator[App]:
    global APP
    data_dir = fresh_data_dir(tmp_path_factory.mktemp("isolation") / "data", migrated_db)
    with serve_app(make_settings(data_dir, chat_default_k=10)) as served:
        APP = App(served)
        yield APP
        APP = None


class Isolation(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert APP is not None
        self.app = APP
        self.served = APP.served
        self.markers = itertools.count(1)
        self.marker_owner: dict[str, tuple[int, str]] = {}
        self.tenant_ids: list[str] = []
        self.principals: list[Principal] = []
        self.revoked_keys: set[str] = set()
        self.memories: dict[str, Memory] = {}  # live memories of this example's two tenants
        self.deleted: dict[str, Memory] = {}  # deleted memories: their history stays readable until forget
        self.gone: list[str] = []  # ids of forgotten memories (probed again)
        self.subjects: list[set[str]] = [set(), set()]  # subjects that exist in each tenant
        self.audit_heads: list[int] = [0, 0]

    # ---- set-up -------------------------------------------------------------------------------------------

    @initialize()
    def tenants(self) -> None:
        n = next(self.app.tenants_made)
        for index in range(2):
            services = self.served.services
            info = services.store.create_tenant(name=f"iso-{n}-{index}")
            issued = services.keys.create(tenant_id=info.id, role="admin", name="admin", created_by="test")
            self.tenant_ids.append(info.id)
            admin = Principal(f"t{index}-admin", index, "admin", issued.secret, issued.info.id)
            self.principals.append(admin)
            for role in ("app", "reader"):
                self.principals.append(self._new_key(admin, role))
            self.audit_heads[index] = self._head(index)

    def _new_key(self, admin: Principal, role: str) -> Principal:
        response = self.served.client.post(
            "/v1/admin/keys", json={"role": role, "name": role}, headers=bearer(admin.credential)
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return Principal(f"t{admin.tenant}-{role}", admin.tenant, role, body["key"], body["id"])

    def _head(self, tenant: int) -> int:
        entries = self.served.services.auditor.log.entries(tenant_id=self.tenant_ids[tenant], limit=1)
        return entries[0].seq if entries else 0

    # ---- the model ----------------------------------------------------------------------------------------

    def pick(self, index: int) -> Principal:
        return self.principals[index % len(self.principals)]

    def marker(self, principal: Principal, subject: str) -> str:
        """A memory text: unique, fenced, fixed width (never a substring of another), owned by one subject; it
        may only ever reach principals that see that subject (chat turns quoting it belong to it too)."""
        marker = f"<<m{next(self.markers):05d}t{principal.tenant}>>"
        self.marker_owner[marker] = (principal.tenant, subject)
        return f"memo of {subject} {marker}"

    def target_memory(self, index: int) -> str:
        ids = [*self.memories, *self.deleted, *self.gone, "00000000-0000-4000-8000-000000000000"]
        return ids[index % len(ids)]

    def _live(self, tenant: int, subject: str) -> dict[str, Memory]:
        return {m.id: m for m in self.memories.values() if m.tenant == tenant and m.subject == subject}

    # ---- sending and checking -----------------------------------------------------------------------------

    def send(self, principal: Principal, method: str, path: str, **kwargs: Any) -> Any:
        self.served.drain()
        response = self.served.client.request(method, path, headers=bearer(principal.credential), **kwargs)
        self.served.drain()  # chat write-back finishes before the state is compared
        assert response.status_code < 500, response.text
        self.check_no_foreign_content(principal, response.text)
        return response

    def expect(self, principal: Principal, response: Any, status: int) -> bool:
        """The status the model predicts (revoked credentials: 401 whatever else); True on success."""
        if principal.key_id in self.revoked_keys:
            status = 401
        OUTCOMES[f"{response.request.method} {response.request.url.path.split('/')[2]} {response.status_code}"] += 1
        assert response.status_code == status, (principal.label, response.request.url, response.text[:400])
        return status < 400

    def check_no_foreign_content(self, principal: Principal, text: str) -> None:
        for marker, (tenant, subject) in self.marker_owner.items():
            if not principal.sees(tenant, subject):
                assert marker not in text, f"{principal.label} got content of {subject}@t{tenant}"

    def audit(
        self,
        principal: Principal,
        response: Any,
        action: str | None,
        *,
        subject: str | None = None,
        memory_ids: list[str] | None = None,
    ) -> list[Any]:
        """The audit records this request added: in the caller's tenant only, exactly what is owed."""
        caller, other = principal.tenant, 1 - principal.tenant
        new = [e for e in self._entries(caller) if e.seq > self.audit_heads[caller]]
        assert self._head(other) == self.audit_heads[other], "a request was audited in the other tenant"
        self.audit_heads[caller] = max([self.audit_heads[caller], *(e.seq for e in new)])
        status = response.status_code
        if status in (401, 403) or action is None:
            assert new == [], [(e.action, e.outcome) for e in new]
            return []
        assert new, f"no audit record for {action}"
        request_id = response.headers["X-Request-ID"]
        for entry in new:
            assert entry.credential_id == principal.key_id and entry.role == principal.role
            assert entry.token_id == principal.token_id
            assert entry.request_id == request_id
            dumped = json.dumps([entry.detail, entry.memory_ids, entry.subject])
            assert "<<m" not in dumped, "memory text in an audit record"
        first = min(new, key=lambda e: e.seq)
        assert first.action == action, (first.action, action)
        outcome = "ok" if status < 400 else "not_found" if status == 404 else "rejected"
        assert first.outcome == outcome, (first.outcome, outcome, response.text[:200])
        if subject is not None and status < 400:
            assert first.subject == subject
        if memory_ids is not None and status < 400:
            # A read or change spanning subjects is recorded once per subject: together they name every memory.
            named = [m for e in new if e.action == action for m in e.memory_ids]
            assert sorted(named) == sorted(memory_ids), (named, memory_ids)
            split = [e for e in new if e.action == action and e.memory_ids]
            assert len(split) == 1 or all(e.subject is not None for e in split), "a split record without its subject"
        return new

    def _entries(self, tenant: int) -> list[Any]:
        entries: list[Any] = self.served.services.auditor.log.entries(tenant_id=self.tenant_ids[tenant], limit=1000)
        return entries

    @invariant()
    def stored_state_is_the_model(self) -> None:
        if not self.tenant_ids:
            return
        store = self.served.services.store
        for tenant, tenant_id in enumerate(self.tenant_ids):
            actual: dict[str, tuple[str, str]] = {}
            listed_subjects = {s.subject for s in store.list_subjects(tenant_id=tenant_id, limit=100, offset=0)}
            assert listed_subjects == self.subjects[tenant], (listed_subjects, self.subjects[tenant])
            for subject in listed_subjects:
                page = store.list(
                    tenant_id=tenant_id, subject=subject, filters=Filters(include_superseded=True), limit=1000
                )
                actual.update({m.id: (m.subject, m.text) for m in page.items})
            expected = {m.id: (m.subject, m.text) for m in self.memories.values() if m.tenant == tenant}
            assert actual == expected

    # ---- rules: memories ----------------------------------------------------------------------------------

    @rule(who=st.integers(0, 5), subject=st.sampled_from(SUBJECTS))
    def add_with_a_key(self, who: int, subject: str) -> None:
        """Keys are most of the traffic (and fill the store for the other rules to probe)."""
        self.add(who, subject, True)

    @rule(who=st.integers(0, 10**6), subject=st.sampled_from(SUBJECTS), name_it=st.booleans())
    def add(self, who: int, subject: str, name_it: bool) -> None:
        principal = self.pick(who)
        if principal.is_token and not name_it:
            subject = principal.subject or subject
        text = self.marker(principal, subject)
        body: dict[str, Any] = {"text": text}
        if name_it or not principal.is_token:
            body["subject"] = subject
        response = self.send(principal, "POST", "/v1/memories", json=body)
        if not principal.may("write", {"admin", "app"}):
            status = 403
        elif principal.is_token and subject != principal.subject:
            status = 404
        else:
            status = 201
        if self.expect(principal, response, status):
            created = response.json()
            assert created["subject"] == subject and created["text"] == text
            self.memories[created["id"]] = Memory(created["id"], principal.tenant, subject, text)
            self.subjects[principal.tenant].add(subject)
            self.audit(principal, response, "memory.add", subject=subject, memory_ids=[created["id"]])
        else:
            self.audit(principal, response, "memory.add")

    def _visible(self, principal: Principal, memory_id: str, among: dict[str, Memory] | None = None) -> Memory | None:
        memory = (self.memories if among is None else among).get(memory_id)
        if memory is None or not principal.sees(memory.tenant, memory.subject):
            return None
        return memory

    @rule(who=st.integers(0, 10**6), which=st.integers(0, 10**6), op=st.sampled_from(["get", "history"]))
    def read_one(self, who: int, which: int, op: str) -> None:
        principal, memory_id = self.pick(who), self.target_memory(which)
        path = f"/v1/memories/{memory_id}" + ("/history" if op == "history" else "")
        response = self.send(principal, "GET", path)
        memory = self._visible(principal, memory_id)
        if op == "history" and memory is None:
            memory = self._visible(principal, memory_id, self.deleted)
        status = 403 if not principal.may("read", {"admin", "app", "reader"}) else 200 if memory else 404
        if self.expect(principal, response, status) and op == "get":
            assert response.json()["text"] == memory.text  # type: ignore[union-attr]
        self.audit(principal, response, AUDITED_READS[op], memory_ids=[memory_id])

    @rule(who=st.integers(0, 10**6), which=st.integers(0, 10**6), delete=st.booleans())
    def change_one(self, who: int, which: int, delete: bool) -> None:
        principal, memory_id = self.pick(who), self.target_memory(which)
        memory = self._visible(principal, memory_id)
        if delete:
            response = self.send(principal, "DELETE", f"/v1/memories/{memory_id}")
            ok = 204
        else:
            subject = memory.subject if memory else "nobody"
            text = self.marker(principal, subject)
            response = self.send(principal, "PATCH", f"/v1/memories/{memory_id}", json={"text": text})
            ok = 200
        status = 403 if not principal.may("write", {"admin", "app"}) else ok if memory else 404
        succeeded = self.expect(principal, response, status)
        self.audit(principal, response, "memory.delete" if delete else "memory.update", memory_ids=[memory_id])
        if succeeded and memory is not None:
            if delete:
                self.deleted[memory_id] = self.memories.pop(memory_id)
            else:
                memory.text = text

    def _subject_status(self, principal: Principal, subject: str, scope: str, roles: set[str]) -> int:
        if not principal.may(scope, roles):
            return 403
        if principal.is_token and subject != principal.subject:
            return 404
        return 200 if subject in self.subjects[principal.tenant] else 404

    @rule(
        who=st.integers(0, 10**6),
        subject=st.sampled_from(SUBJECTS),
        search=st.booleans(),
        name_it=st.sampled_from([False, False, True]),
    )
    def read_subject(self, who: int, subject: str, search: bool, name_it: bool) -> None:
        principal = self.pick(who)
        if principal.is_token and not name_it:
            subject = principal.subject or subject
        named = subject if (name_it or not principal.is_token) else None
        if search:
            body: dict[str, Any] = {"query": f"memo of {subject}", "k": 100}
            if named:
                body["subject"] = named
            response = self.send(principal, "POST", "/v1/memories/search", json=body)
            items = response.json().get("results", [])
        else:
            params = {"subject": named, "limit": 200} if named else {"limit": 200}
            response = self.send(principal, "GET", "/v1/memories", params=params)
            items = response.json().get("items", [])
        status = self._subject_status(principal, subject, "read", {"admin", "app", "reader"})
        returned = [m["id"] for m in items]
        if self.expect(principal, response, status):
            live = self._live(principal.tenant, subject)
            assert {m["subject"] for m in items} <= {subject}
            if search:
                assert set(returned) <= set(live)
            else:
                assert sorted(returned) == sorted(live)
        self.audit(principal, response, "memory.search" if search else "memory.list", memory_ids=returned)

    # ---- rules: administration ----------------------------------------------------------------------------

    @rule(who=st.integers(0, 10**6), subject=st.sampled_from(SUBJECTS), op=st.sampled_from(["export", "inspect"]))
    def admin_read(self, who: int, subject: str, op: str) -> None:
        principal = self.pick(who)
        if op == "export":
            response = self.send(principal, "GET", f"/v1/admin/subjects/{subject}/export")
            items = response.json().get("memories", [])
            exists = subject in self.subjects[principal.tenant]
        else:
            response = self.send(principal, "GET", "/v1/admin/memories", params={"subject": subject, "limit": 200})
            items = response.json().get("items", [])
            exists = subject in self.subjects[principal.tenant]
        status = 403 if principal.role != "admin" else 200 if exists else 404
        returned = [m["id"] for m in items]
        if self.expect(principal, response, status):
            assert sorted(returned) == sorted(self._live(principal.tenant, subject))
        self.audit(principal, response, "subject.export" if op == "export" else "admin.inspect", memory_ids=returned)

    @rule(who=st.integers(0, 10**6))
    def admin_subjects_and_stats(self, who: int) -> None:
        principal = self.pick(who)
        subjects = self.send(principal, "GET", "/v1/admin/subjects", params={"limit": 200})
        if self.expect(principal, subjects, 200 if principal.role == "admin" else 403):
            listed = {s["subject"]: s["memory_count"] for s in subjects.json()["subjects"]}
            assert set(listed) == self.subjects[principal.tenant]
            for subject, count in listed.items():
                assert count == len(self._live(principal.tenant, subject))
        self.audit(principal, subjects, "admin.subjects")
        stats = self.send(principal, "GET", "/v1/admin/stats")
        if self.expect(principal, stats, 200 if principal.role == "admin" else 403):
            mine = [m for m in self.memories.values() if m.tenant == principal.tenant]
            assert stats.json()["memories"] == len(mine)
            assert stats.json()["index_vectors"] == len(mine)
        self.audit(principal, stats, "admin.stats")

    @rule(who=st.integers(0, 10**6), subject=st.sampled_from(SUBJECTS))
    def forget(self, who: int, subject: str) -> None:
        principal = self.pick(who)
        response = self.send(principal, "DELETE", f"/v1/admin/subjects/{subject}")
        exists = subject in self.subjects[principal.tenant]
        status = 403 if principal.role != "admin" else 200 if exists else 404
        if self.expect(principal, response, status):
            removed = self._live(principal.tenant, subject)
            assert response.json()["memories_deleted"] == len(removed)
            for memory_id in removed:
                del self.memories[memory_id]
                self.gone.append(memory_id)
            owner = (principal.tenant, subject)
            for memory_id in [i for i, m in self.deleted.items() if (m.tenant, m.subject) == owner]:
                del self.deleted[memory_id]
                self.gone.append(memory_id)
            self.subjects[principal.tenant].discard(subject)
        self.audit(principal, response, "subject.forget", subject=subject)

    @rule(
        who=st.integers(0, 10**6),
        subject=st.sampled_from(SUBJECTS),
        scopes=st.sampled_from(SCOPE_SETS),
    )
    def mint(self, who: int, subject: str, scopes: frozenset[str]) -> None:
        principal = self.pick(who)
        response = self.send(principal, "POST", "/v1/tokens", json={"subject": subject, "scopes": sorted(scopes)})
        if self.expect(principal, response, 201 if principal.role in ("admin", "app") else 403):
            body = response.json()
            self.principals.append(
                Principal(
                    f"t{principal.tenant}-token-{subject}-{'+'.join(sorted(scopes))}",
                    principal.tenant,
                    "subject",
                    body["token"],
                    principal.key_id,
                    scopes,
                    subject,
                    body["token_id"],
                )
            )
            self.audit(principal, response, "token.mint", subject=subject)
        else:
            self.audit(principal, response, "token.mint")

    @precondition(lambda self: len(self.tenant_ids) == 2)
    @rule(tenant=st.integers(0, 1), role=st.sampled_from(["app", "reader"]))
    def revoke_and_replace(self, tenant: int, role: str) -> None:
        """An admin revokes a key (and with it every token it minted) and issues a new one."""
        admin = next(p for p in self.principals if p.tenant == tenant and p.role == "admin")
        victims = [p for p in self.principals if p.tenant == tenant and p.role == role]
        victim = next((p for p in victims if p.key_id not in self.revoked_keys), None)
        if victim is None or admin.key_id in self.revoked_keys:
            return
        response = self.send(admin, "DELETE", f"/v1/admin/keys/{victim.key_id}")
        assert response.status_code == 200, response.text
        self.audit(admin, response, "key.revoke")
        self.revoked_keys.add(victim.key_id)
        replacement = self._new_key(admin, role)
        self.audit_heads[tenant] = self._head(tenant)  # the key.create record
        self.principals.append(replace(replacement, label=replacement.label + "-new"))

    @rule(who=st.integers(0, 10**6), which=st.integers(0, 10**6))
    def cross_tenant_key_revoke(self, who: int, which: int) -> None:
        """An admin of one tenant cannot revoke the other tenant's keys: 404, and the key keeps working."""
        principal, target = self.pick(who), self.pick(which)
        if principal.tenant == target.tenant or target.is_token:
            return
        response = self.send(principal, "DELETE", f"/v1/admin/keys/{target.key_id}")
        self.expect(principal, response, 404 if principal.role == "admin" else 403)
        self.audit(principal, response, "key.revoke")

    # ---- rules: chat --------------------------------------------------------------------------------------

    @rule(
        who=st.integers(0, 10**6),
        subject=st.sampled_from(SUBJECTS),
        name_it=st.booleans(),
        write_back=st.booleans(),
        completions=st.booleans(),
    )
    def chat(self, who: int, subject: str, name_it: bool, write_back: bool, completions: bool) -> None:
        principal = self.pick(who)
        if principal.is_token and not name_it:
            subject = principal.subject or subject
        named = subject if (name_it or not principal.is_token) else None
        message = f"what about memo of {subject}?"
        if completions:
            body: dict[str, Any] = {"messages": [{"role": "user", "content": message}], "write_back": write_back}
            if named:
                body["user"] = named
            response = self.send(principal, "POST", "/v1/chat/completions", json=body)
        else:
            body = {"message": message, "session_id": "s1", "write_back": write_back, "k": 10}
            if named:
                body["subject"] = named
            response = self.send(principal, "POST", "/v1/chat", json=body)
        if not principal.may("chat", {"admin", "app"}):
            status = 403
        elif principal.is_token and subject != principal.subject:
            status = 404
        else:
            status = 200
        succeeded = self.expect(principal, response, status)
        records = self.audit(principal, response, "chat.retrieve", subject=subject if succeeded else None)
        if not succeeded:
            return
        live = self._live(principal.tenant, subject)
        out = response.json()
        used = [m["id"] for m in (out["sealmem"] if completions else out)["memories_used"]]
        assert set(used) <= set(live), "chat retrieved another subject's memory"
        for record in records:
            assert record.subject == subject
            assert set(record.memory_ids) <= set(live) | self._new_memories(principal.tenant, subject)
        if write_back:
            self._absorb_chat_writes(principal.tenant, subject)

    def _new_memories(self, tenant: int, subject: str) -> set[str]:
        store = self.served.services.store
        try:
            page = store.list(
                tenant_id=self.tenant_ids[tenant], subject=subject, filters=Filters(include_superseded=True), limit=1000
            )
        except Exception:
            return set()
        return {m.id for m in page.items} - set(self.memories)

    def _absorb_chat_writes(self, tenant: int, subject: str) -> None:
        """Write-back may add (turns, distilled facts) or update memories of the chatting subject only."""
        store = self.served.services.store
        page = store.list(
            tenant_id=self.tenant_ids[tenant], subject=subject, filters=Filters(include_superseded=True), limit=1000
        )
        for m in page.items:
            if m.id in self.memories:
                self.memories[m.id].text = m.text  # a near-duplicate fact may have updated it
            else:
                self.memories[m.id] = Memory(m.id, tenant, subject, m.text)
        self.subjects[tenant].add(subject)

    @invariant()
    def audit_chains_verify(self) -> None:
        for tenant_id in self.tenant_ids:
            assert self.served.services.auditor.log.verify(tenant_id=tenant_id).ok


Isolation.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=os.environ.get("SEALMEM_ISOLATION_RANDOM") != "1",
    database=None,
    suppress_health_check=list(HealthCheck),
)


def run(examples: int, steps: int) -> None:
    OUTCOMES.clear()
    run_state_machine_as_test(
        Isolation, settings=settings(Isolation.TestCase.settings, max_examples=examples, stateful_step_count=steps)
    )
    print(json.dumps(dict(sorted(OUTCOMES.items())), indent=0))
    statuses = {key.rsplit(" ", 1)[1] for key in OUTCOMES}
    assert {"200", "201", "401", "403", "404"} <= statuses, OUTCOMES


def test_no_principal_ever_reaches_outside_its_credential(app: App) -> None:
    run(EXAMPLES, STEPS)


@pytest.mark.slow
def test_no_principal_ever_reaches_outside_its_credential_long_run(app: App) -> None:
    run(EXAMPLES * 5, STEPS + 20)
