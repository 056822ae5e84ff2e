"""Child process for the crash test: writes, saves the index, writes more, then dies by SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sys

from memory_store import HashingEmbedder, MasterKey, MemoryStore, NewMemory, StoreSettings
from memory_store.crypto import decode_key


def main() -> None:
    settings = StoreSettings.model_validate_json(sys.argv[1])  # the master key arrives via SEALMEM_MASTER_KEY
    settings = settings.model_copy(update={"master_key": StoreSettings().master_key})
    tenant_id = sys.argv[2]
    assert settings.master_key is not None
    store = MemoryStore.open(
        settings,
        master_key=MasterKey(decode_key(settings.master_key.get_secret_value())),
        embedder=HashingEmbedder(384),
    )
    store.add_batch(
        tenant_id=tenant_id, items=[NewMemory(subject="alice", text=f"before save {i}") for i in range(5)]
    )
    store.persist()
    # Committed to SQL, but the index file is never saved again: the process dies right here.
    late = store.add(
        tenant_id=tenant_id, item=NewMemory(subject="alice", text="committed after the last index save")
    )
    print(json.dumps({"late": late.id}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
