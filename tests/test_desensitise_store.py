"""Desensitisation in the storage core, on real SQLite and PostgreSQL with the real Presidio detector: values
are pseudonymised with subject-stable placeholders, masked, or rejected by the tenant's policy before they are
embedded or encrypted; originals come back only through ``reveal`` for allowed roles, and a forget removes
them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from memory_store import MemoryStore, NewMemory
from memory_store.audit import AuditEvent
from memory_store.models import SensitiveValue
from memory_store.sensitive.vault import SensitiveDataRejected
from tests.recording import RecordingEmbedder

EMAIL = "ana.canary@example.org"
CARD = "4111 1111 1111 1111"
KEY = "sk-proj-Q7vX2mN9pL4kR8sT1wY6zB3cD5fG0hJ"
AUDIT = AuditEvent(credential_id="k1", role="app", action="memory.add")


def add(store: MemoryStore, tenant_id: str, text: str, subject: str = "ana", **kwargs: Any) -> Any:
    return store.add(tenant_id=tenant_id, item=NewMemory(subject=subject, text=text), **kwargs)


def vault_rows(store: MemoryStore, tenant_id: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(SensitiveValue.tenant_id == tenant_id)) or 0)


def test_pseudonyms_are_stable_within_a_subject_and_revealed_by_role(
    recording_store: MemoryStore, recording: RecordingEmbedder
) -> None:
    tenant_id = recording_store.create_tenant(name="acme").id
    first = add(recording_store, tenant_id, f"My email is {EMAIL} and my card is {CARD}.")
    assert first.text == "My email is <EMAIL_ADDRESS_1> and my card is <CREDIT_CARD_1>."
    again = add(recording_store, tenant_id, f"Write to {EMAIL.upper()} about card {CARD.replace(' ', '')}.")
    other = add(recording_store, tenant_id, "My work email is bo@corp.example.com.")
    assert again.text == "Write to <EMAIL_ADDRESS_1> about card <CREDIT_CARD_1>."
    assert other.text == "My work email is <EMAIL_ADDRESS_2>."
    elsewhere = add(recording_store, tenant_id, "Reach me at bo@corp.example.com.", subject="bo")
    assert elsewhere.text == "Reach me at <EMAIL_ADDRESS_1>."  # numbered per subject
    # The embedder never saw a value, only the placeholder's type.
    assert not [t for t in recording.texts if EMAIL in t or "4111" in t or "bo@corp" in t]
    assert "My email is <EMAIL_ADDRESS> and my card is <CREDIT_CARD>." in recording.texts

    stored = recording_store.list(tenant_id=tenant_id, subject="ana").items
    assert all("<EMAIL_ADDRESS_" in m.text for m in stored)
    shown = {m.id: m.text for m in recording_store.reveal(tenant_id=tenant_id, records=stored, role="app")}
    assert shown[first.id] == f"My email is {EMAIL} and my card is {CARD}."
    assert shown[again.id] == f"Write to {EMAIL} about card {CARD}."  # the first spelling is the one sealed
    assert shown[other.id] == "My work email is bo@corp.example.com."
    for role in ("reader", "admin"):
        assert [m.text for m in recording_store.reveal(tenant_id=tenant_id, records=stored, role=role)] == [
            m.text for m in stored
        ]
    # Search finds the memory by what the placeholder stands for, and hands out the stored text.
    hits = recording_store.search(tenant_id=tenant_id, subject="ana", query="what is my email address", k=3)
    assert hits and all(EMAIL not in h.memory.text for h in hits)
    # A query holding a value is screened like a write: the embedder never sees it, and the value the vault
    # holds is searched as its placeholder, so the keyword index finds the memories that mention it.
    recording.texts.clear()
    hits = recording_store.search(tenant_id=tenant_id, subject="ana", query=f"card {CARD.replace(' ', '-')}", k=3)
    assert recording.texts == ["card <CREDIT_CARD_1>"]
    assert {h.memory.id for h in hits if h.lexical_score} == {first.id, again.id}


def test_secrets_are_masked_for_good_and_rejection_stores_nothing(recording_store: MemoryStore) -> None:
    tenant_id = recording_store.create_tenant(name="acme").id
    masked = add(recording_store, tenant_id, f"The deploy key is {KEY}, keep it safe.")
    assert masked.text == "The deploy key is <API_KEY>, keep it safe."
    (shown,) = recording_store.reveal(tenant_id=tenant_id, records=[masked], role="app")
    assert shown.text == masked.text and vault_rows(recording_store, tenant_id) == 0

    recording_store.set_sensitive_policy(tenant_id=tenant_id, actions={"CREDIT_CARD": "reject", "IBAN_CODE": "reject"})
    before = recording_store.stats(tenant_id=tenant_id).memories
    with pytest.raises(SensitiveDataRejected) as caught:
        recording_store.add_batch(
            tenant_id=tenant_id,
            items=[
                NewMemory(subject="ana", text="A clean memory about my dog Biscuit."),
                NewMemory(subject="ana", text=f"Pay with {CARD}."),
            ],
        )
    assert caught.value.types == ["CREDIT_CARD"] and caught.value.code == "sensitive_data_rejected"
    assert "4111" not in str(caught.value)
    assert recording_store.stats(tenant_id=tenant_id).memories == before  # all or nothing

    recording_store.set_sensitive_policy(tenant_id=tenant_id, actions={"CREDIT_CARD": "keep"})
    kept = add(recording_store, tenant_id, f"Pay with {CARD}.")
    assert kept.text == f"Pay with {CARD}."


def test_updates_are_screened_and_audited_with_counts_never_values(recording_store: MemoryStore) -> None:
    tenant_id = recording_store.create_tenant(name="acme").id
    memory = add(recording_store, tenant_id, "My phone changed.", audit=AUDIT)
    updated = recording_store.update(
        tenant_id=tenant_id,
        memory_id=memory.id,
        text=f"My email is {EMAIL}, my old one was old.mail@example.net.",
        audit=AUDIT,
    )
    assert updated.text == "My email is <EMAIL_ADDRESS_1>, my old one was <EMAIL_ADDRESS_2>."
    entries = recording_store.audit.entries(tenant_id=tenant_id)
    assert entries[0].detail["desensitised"] == {"EMAIL_ADDRESS": 2}
    assert "desensitised" not in entries[1].detail
    assert all(EMAIL not in repr(e) and "old.mail" not in repr(e) for e in entries)
    assert recording_store.screener.counts().get("EMAIL_ADDRESS", 0) >= 2


def test_a_policy_changed_while_a_write_is_screened_applies_to_that_write(
    recording_store: MemoryStore, recording: RecordingEmbedder, open_store: Callable[..., MemoryStore]
) -> None:
    """The write screened its text under "pseudonymise"; before its transaction, another process makes cards
    "reject". The write must not store the card: it sees the new revision under the write lock and re-runs."""
    tenant_id = recording_store.create_tenant(name="acme").id
    other = open_store()
    add(recording_store, tenant_id, "warm the policy cache")

    def change() -> None:
        other.set_sensitive_policy(tenant_id=tenant_id, actions={"CREDIT_CARD": "reject"})

    for _ in range(5):
        recording.before = change
        with pytest.raises(SensitiveDataRejected):
            add(recording_store, tenant_id, f"Pay with {CARD}.")
        other.set_sensitive_policy(tenant_id=tenant_id, actions={"CREDIT_CARD": "pseudonymise"})
        add(recording_store, tenant_id, "refresh this process's cached policy")  # re-read on the next mismatch
    assert not [m for m in recording_store.list(tenant_id=tenant_id, subject="ana").items if "CREDIT_CARD" in m.text]


def test_concurrent_writers_number_distinct_values_distinctly(recording_store: MemoryStore) -> None:
    tenant_id = recording_store.create_tenant(name="acme").id
    for round_ in range(5):
        emails = [f"user{round_}x{i}@example.com" for i in range(6)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(emails))

        def write(email: str, barrier: threading.Barrier, errors: list[BaseException]) -> None:
            try:
                barrier.wait()
                add(recording_store, tenant_id, f"Contact: {email}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(e, barrier, errors)) for e in emails]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
    stored = recording_store.list(tenant_id=tenant_id, subject="ana", limit=100).items
    placeholders = [m.text.removeprefix("Contact: ") for m in stored]
    assert len(set(placeholders)) == len(placeholders) == 30
    shown = recording_store.reveal(tenant_id=tenant_id, records=stored, role=None)
    assert sorted(m.text for m in shown) == sorted(
        f"Contact: user{r}x{i}@example.com" for r in range(5) for i in range(6)
    )


def test_forget_removes_the_sealed_originals(recording_store: MemoryStore) -> None:
    tenant_id = recording_store.create_tenant(name="acme").id
    add(recording_store, tenant_id, f"My email is {EMAIL}.")
    add(recording_store, tenant_id, "Mine is bo@corp.example.com.", subject="bo")
    assert vault_rows(recording_store, tenant_id) == 2
    recording_store.forget_subject(tenant_id=tenant_id, subject="ana")
    assert vault_rows(recording_store, tenant_id) == 1
    # Coming back, the subject starts a fresh vault: nothing of the old one is reachable.
    again = add(recording_store, tenant_id, "My email is new@example.org.")
    assert again.text == "My email is <EMAIL_ADDRESS_1>."
    (shown,) = recording_store.reveal(tenant_id=tenant_id, records=[again], role=None)
    assert shown.text == "My email is new@example.org."


def test_a_policy_relaxed_by_another_process_reaches_this_one_within_the_cache_age(
    recording_store: MemoryStore, open_store: Callable[..., MemoryStore]
) -> None:
    import time

    tenant_id = recording_store.create_tenant(name="acme").id
    other = open_store()
    other.set_sensitive_policy(tenant_id=tenant_id, actions={"CREDIT_CARD": "reject"})
    recording_store.screener.read_ttl_s = 0.2
    with pytest.raises(SensitiveDataRejected):
        add(recording_store, tenant_id, f"Pay with {CARD}.")  # this process now caches "reject"
    other.set_sensitive_policy(tenant_id=tenant_id, actions={"CREDIT_CARD": "pseudonymise"})
    time.sleep(0.3)
    assert add(recording_store, tenant_id, f"Pay with {CARD}.").text == "Pay with <CREDIT_CARD_1>."
