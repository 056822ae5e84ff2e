"""Screening and embedding done ahead of a search or an add (``prepare_search``, ``prepare_add``): used when it is
for the same input under the tenant's current policy, never otherwise, on real SQLite with the real detector."""

from __future__ import annotations

import pytest

from memory_store import MemoryStore, NewMemory
from memory_store.sensitive.vault import SensitiveDataRejected

EMAIL = "ana.canary@example.org"
FACTS = [
    "I play the cello in a quartet on Thursdays.",
    "We went hiking up the volcano last weekend.",
    "My sister moved to Porto in March.",
    "The dog is called Biscuit and loves the beach.",
]


@pytest.fixture
def backend() -> str:
    """The preparation's checks do not depend on the database: SQLite is enough here."""
    return "sqlite"


def _filled(store: MemoryStore, name: str = "acme") -> str:
    tenant_id = store.create_tenant(name=name).id
    store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="ana", text=t) for t in FACTS])
    return tenant_id


def _ranked(hits):
    return [(h.memory.id, round(h.score, 6)) for h in hits]


def test_a_prepared_search_ranks_as_a_plain_one_without_embedding_again(recording_store, recording):
    tenant_id = _filled(recording_store)
    plain = recording_store.search(tenant_id=tenant_id, subject="ana", query="who plays the cello?", k=3)
    prepared = recording_store.prepare_search(tenant_id=tenant_id, subject="ana", query="where does my sister live?")
    assert prepared.early is not None  # the subject's id is known from the first search: embedded ahead
    embedded = len(recording.texts)
    hits = recording_store.search(
        tenant_id=tenant_id, subject="ana", query="where does my sister live?", k=3, prepared=prepared
    )
    assert len(recording.texts) == embedded
    assert hits[0].memory.text == FACTS[2]
    assert _ranked(hits) == _ranked(
        recording_store.search(tenant_id=tenant_id, subject="ana", query="where does my sister live?", k=3)
    )
    assert _ranked(plain) != _ranked(hits)


@pytest.mark.parametrize("field", ["query", "subject", "tenant", "role"])
def test_a_search_prepared_for_other_input_is_not_used(recording_store, field):
    tenant_id = _filled(recording_store)
    other_tenant = _filled(recording_store, "other") if field == "tenant" else tenant_id
    recording_store.search(tenant_id=tenant_id, subject="ana", query="warm up", k=1)
    recording_store.add(tenant_id=tenant_id, item=NewMemory(subject="bo", text="Bo keeps bees."))
    recording_store.search(tenant_id=tenant_id, subject="bo", query="warm up", k=1)
    prepared = recording_store.prepare_search(
        tenant_id=other_tenant,
        subject="bo" if field == "subject" else "ana",
        query="who keeps bees?" if field == "query" else "who plays the cello?",
        role="reader" if field == "role" else None,
    )
    hits = recording_store.search(
        tenant_id=tenant_id, subject="ana", query="who plays the cello?", k=3, prepared=prepared
    )
    assert _ranked(hits) == _ranked(
        recording_store.search(tenant_id=tenant_id, subject="ana", query="who plays the cello?", k=3)
    )
    assert hits[0].memory.text == FACTS[0]


def test_a_prepared_add_is_stored_without_embedding_again(recording_store, recording):
    tenant_id = _filled(recording_store)
    items = [NewMemory(subject="ana", text=f"Write to me at {EMAIL} about the concert.")]
    prepared = recording_store.prepare_add(tenant_id=tenant_id, items=items)
    embedded = list(recording.texts)
    (record,) = recording_store.add_batch(tenant_id=tenant_id, items=items, prepared=prepared)
    assert recording.texts == embedded
    assert record.text == "Write to me at <EMAIL_ADDRESS_1> about the concert."
    assert EMAIL not in " ".join(recording.texts)
    hits = recording_store.search(tenant_id=tenant_id, subject="ana", query="concert email", k=1)
    assert hits[0].memory.id == record.id


def test_an_add_prepared_for_other_texts_embeds_its_own(recording_store, recording):
    tenant_id = _filled(recording_store)
    prepared = recording_store.prepare_add(tenant_id=tenant_id, items=[NewMemory(subject="ana", text="I like tea.")])
    (record,) = recording_store.add_batch(
        tenant_id=tenant_id, items=[NewMemory(subject="ana", text="I like coffee.")], prepared=prepared
    )
    assert record.text == "I like coffee."
    assert recording.texts[-1] == "I like coffee."
    assert (
        recording_store.search(tenant_id=tenant_id, subject="ana", query="I like coffee.", k=1)[0].memory.id
        == record.id
    )


def test_an_add_prepared_under_an_older_policy_is_screened_again(recording_store, recording):
    """Prepared while email addresses were pseudonymised; the tenant then rejects them: the add is rejected."""
    tenant_id = _filled(recording_store)
    items = [NewMemory(subject="ana", text=f"My email is {EMAIL}.")]
    prepared = recording_store.prepare_add(tenant_id=tenant_id, items=items)
    recording_store.set_sensitive_policy(tenant_id=tenant_id, actions={"EMAIL_ADDRESS": "reject"})
    with pytest.raises(SensitiveDataRejected):
        recording_store.add_batch(tenant_id=tenant_id, items=items, prepared=prepared)
    assert all(EMAIL not in t for t in recording.texts)


def test_an_add_prepared_before_another_process_changed_the_policy_is_screened_again(open_store, recording):
    """The preparing process still caches the old policy: the write's policy check fails, and its retry screens
    again under the new one instead of reusing what was prepared."""
    first = open_store(embedder=recording)
    second = open_store(embedder=recording)
    tenant_id = _filled(first)
    first.sensitive_policy(tenant_id)  # cached in the first store
    items = [NewMemory(subject="ana", text=f"My email is {EMAIL}.")]
    prepared = first.prepare_add(tenant_id=tenant_id, items=items)
    second.set_sensitive_policy(tenant_id=tenant_id, actions={"EMAIL_ADDRESS": "mask"})
    (record,) = first.add_batch(tenant_id=tenant_id, items=items, prepared=prepared)
    assert record.text == "My email is <EMAIL_ADDRESS>."
    assert first.list(tenant_id=tenant_id, subject="ana", limit=10).items[0].text == "My email is <EMAIL_ADDRESS>."
