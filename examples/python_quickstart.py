"""Sealmem from Python in one page: remember, recall, change, mint a subject token, chat (streamed).

    pip install ./clients/python            # the sealmem-client package of this repository
    export SEALMEM_URL=http://localhost:8080
    export SEALMEM_API_KEY=smk_...          # an app (or admin) key: POST /v1/admin/keys {"role": "app"}
    python examples/python_quickstart.py

Optional: SEALMEM_SUBJECT (default: a fresh "quickstart-..." subject). The memories it adds are deleted at
the end.
"""


from __future__ import annotations

import os
import uuid

from sealmem_client import NotFound, Sealmem, Unavailable


def main() -> None:
    subject = os.environ.get("SEALMEM_SUBJECT") or f"quickstart-{uuid.uuid4().hex[:8]}"
    with Sealmem() as client:  # base_url and api_key from SEALMEM_URL and SEALMEM_API_KEY
        print(f"Sealmem at {client.base_url}; subject {subject!r}")

        # 1. Remember: one memory, then a batch (atomic: all or none).
        dog = client.memories.add(
            "My dog is named Biscuit and I live in Lisbon.", subject=subject, metadata={"topic": "home"}
        )
        print(f"added {dog.id}: {dog.text}")
        batch = client.memories.add_batch(
            [
                {"text": "Prefers window seats on long flights.", "kind": "preference"},
                {"text": "Allergic to peanuts.", "metadata": {"topic": "health"}},
            ],
            subject=subject,
        )
        print(f"added a batch of {len(batch)}")

        # 2. Recall: hybrid (vector + keyword) search, best first.
        for hit in client.memories.search("what is my dog called?", subject=subject, k=2):
            print(f"  search hit {hit.score:.3f} [{hit.kind}] {hit.text}")

        # 3. Change a memory; its history keeps what it was.
        moved = client.memories.update(dog.id, text="My dog is named Biscuit and I live in Porto.")
        print(f"updated: {moved.text}")
        print("history:", [event.action for event in client.memories.history(dog.id).events])

        # 4. List everything (the iterator follows the pages).
        print(f"{subject} holds {sum(1 for _ in client.memories.iter(subject=subject, page_size=2))} memories")

        # 5. A subject token for this user's own app: only this subject, only these scopes.
        token = client.tokens.create(subject, ["read", "write", "chat"], ttl_seconds=600)
        user = client.with_api_key(token.token)  # or Sealmem(api_key=token.token) in the user's app
        print(f"minted a token for {token.subject} with {token.scopes}, expires {token.expires_at:%H:%M:%S} UTC")
        print(f"with the token: {len(user.memories.list().items)} memories, no subject named")
        try:
            user.memories.list(subject="someone-else")
        except NotFound as exc:
            print(f"another subject through the token: {type(exc).__name__} ({exc.code})")

        # 6. Chat with memory, streamed (write_back=False: this demo stores no turns; by default the exchange
        #    is stored and facts are distilled from it).
        try:
            stream = user.chat.stream("Where do I live?", write_back=False)
            print("assistant: ", end="", flush=True)
            for delta in stream:
                print(delta, end="", flush=True)
            response = stream.final_response()
            print(f"\n  ({response.model}, {len(response.memories_used)} memories used, {response.finish_reason})")
        except Unavailable as exc:
            print(f"chat is not available on this server: {exc.message}")

        # Clean up.
        for memory in list(client.memories.iter(subject=subject)):
            client.memories.delete(memory.id)
        print("deleted the quickstart's memories")


if __name__ == "__main__":
    main()
