"""One FAISS index per tenant: exact inner product by default, IVF above a size threshold.

The index is a derived cache of the SQL embeddings. It persists as one AES-GCM encrypted file (temp file,
fsync, atomic rename); a file that is missing, tampered with or encrypted under a destroyed key fails to load
and the caller rebuilds it from SQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from memory_store.crypto import associated_data, open_sealed, seal_parts
from memory_store.errors import DecryptionError

_MAGIC = b"SMIX\x01"
IdArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class IndexHeader:
    tenant_id: str
    key_version: int
    synced_seq: int
    ntotal: int
    dim: int
    kind: str


class _AppliedThreads(threading.local):
    count = 0


_faiss_threads = 1
_applied = _AppliedThreads()


def set_faiss_threads(count: int) -> None:
    """FAISS's OpenMP threads in every thread of this process from now on.

    OpenMP keeps the count per thread: ``faiss.omp_set_num_threads`` in one thread leaves every other thread at
    OpenMP's default of one per core. Once the store set it in the thread that opened it, each request thread's
    single-query searches ran in teams of two spinning OpenMP threads on the 2-vCPU VM: 3-4 ms more server CPU
    per request of the wrk mix (``bench/load.py``, ``OMP_NUM_THREADS=1`` as the control). So every index
    operation applies the count to its own thread first (:func:`_use_faiss_threads`).
    """
    global _faiss_threads
    if count < 1:
        raise ValueError("count must be at least 1")
    _faiss_threads = count
    _use_faiss_threads()


def _use_faiss_threads() -> None:
    if _applied.count != _faiss_threads:
        faiss.omp_set_num_threads(_faiss_threads)
        _applied.count = _faiss_threads


_GATHER_MAX = 8192  # candidates scored by gathering their vectors from a flat index (at most 12 MB of them)


class IndexFileError(Exception):
    """The index file is missing, corrupt, or not readable with the current key."""


class TenantIndex:
    """FAISS vectors of one tenant. Ids are SQL ``memories.id`` values. Thread-safe."""

    def __init__(self, dim: int, *, exact_max: int, nprobe: int) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self.nprobe = nprobe
        self.synced_seq = 0
        # The tenant's index key version as of synced_seq: a forget bumps it in the transaction that removes the
        # subject's vectors, so contents that may still hold them never carry a newer version (see save).
        self.key_version = 0
        self.changes_since_save = 0
        self.lock = threading.RLock()
        self._max_id = -1
        self._index: Any = self._flat()  # faiss's SWIG classes are only partly typed

    def _flat(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def size_bytes(self) -> int:
        return self.ntotal * self.dim * 4

    def upsert(self, ids: IdArray, vectors: npt.NDArray[np.float32]) -> None:
        if len(ids) == 0:
            return
        _use_faiss_threads()
        with self.lock:
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            # Row ids only grow: ids above every id seen are new and need no removal (a full scan).
            existing = ids[ids <= self._max_id]
            if len(existing):
                self._remove(existing)
            self._max_id = max(self._max_id, int(ids.max()))
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            self.changes_since_save += len(ids)
            if self.kind == "flat" and self.ntotal > self.exact_max:
                self._convert_to_ivf()

    def remove(self, ids: IdArray) -> None:
        if len(ids) == 0:
            return
        _use_faiss_threads()
        with self.lock:
            self._remove(np.ascontiguousarray(ids, dtype=np.int64))
            self.changes_since_save += len(ids)

    def _remove(self, ids: IdArray) -> None:
        # IVF's hashtable direct map only accepts an array selector; the flat IDMap prefers a hashed batch.
        selector = faiss.IDSelectorArray(ids) if self.kind == "ivf" else faiss.IDSelectorBatch(ids)
        self._index.remove_ids(selector)

    def all_ids(self) -> IdArray:
        with self.lock:
            if self.kind == "flat":
                return faiss.vector_to_array(self._index.id_map).astype(np.int64)
            invlists = self._index.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                for i in range(self._index.nlist)
                if invlists.list_size(i)
            ]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def _vectors_for(self, ids: IdArray) -> npt.NDArray[np.float32]:
        return np.vstack([self._index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def _convert_to_ivf(self) -> None:
        ids = self.all_ids()
        vectors = self._vectors_for(ids)
        nlist = max(16, int(4 * np.sqrt(len(ids))))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        ivf.add_with_ids(vectors, ids)
        self._index = ivf

    def search(
        self, query: npt.NDArray[np.float32], k: int, candidates: IdArray | None
    ) -> tuple[IdArray, npt.NDArray[np.float32]]:
        """Top-``k`` (ids, inner products) restricted to ``candidates`` inside the search."""
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        _use_faiss_threads()
        with self.lock:
            if self.ntotal == 0 or k <= 0 or (candidates is not None and len(candidates) == 0):
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            if candidates is None:
                params: Any = faiss.SearchParametersIVF(nprobe=self.nprobe) if self.kind == "ivf" else None  # type: ignore[call-arg]
                scores, ids = self._index.search(q, k, params=params)
            elif self.kind == "flat" and len(candidates) <= _GATHER_MAX:
                # Gathering the candidates' vectors costs per candidate; a search with an id selector tests
                # every stored id (1.35 ms at 100k vectors for one subject's 1,000, against 0.3 ms gathered).
                found = self._gathered(q[0], k, np.ascontiguousarray(candidates, dtype=np.int64))
                if found is not None:
                    return found
                scores, ids = self._selected(q, k, candidates)
            elif self.kind == "ivf" and len(candidates) <= 4 * self.nprobe * 64:
                # Small candidate sets are scored exactly: IVF probing could miss them.
                present = candidates[np.isin(candidates, self.all_ids())]
                if len(present) == 0:
                    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
                sims = self._vectors_for(present) @ q[0]
                order = np.argsort(-sims)[:k]
                return present[order], sims[order].astype(np.float32)
            else:
                scores, ids = self._selected(q, k, candidates)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def _selected(self, q: npt.NDArray[np.float32], k: int, candidates: IdArray) -> tuple[Any, Any]:
        """FAISS's own search (scores, ids), restricted to ``candidates`` by an id selector (ids it does not hold
        are skipped)."""
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(candidates, dtype=np.int64))
        params = (
            faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)  # type: ignore[call-arg]
            if self.kind == "ivf"
            else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        )
        found: tuple[Any, Any] = self._index.search(q, k, params=params)
        return found

    def _gathered(
        self, query: npt.NDArray[np.float32], k: int, candidates: IdArray
    ) -> tuple[IdArray, npt.NDArray[np.float32]] | None:
        """Top-``k`` of ``candidates`` scored from their vectors, gathered by id from the flat index (best first,
        ties by id); None when the index lacks one of them (the selector search then skips it)."""
        try:
            vectors = self._index.reconstruct_batch(candidates)
        except RuntimeError:  # an id the index does not hold
            return None
        sims = (vectors @ query).astype(np.float32)
        order = np.lexsort((candidates, -sims))[:k]
        return candidates[order], sims[order]

    # ---- persistence -------------------------------------------------------------------------------

    def save(self, path: Path, *, tenant_id: str, key: bytes, key_version: int, seq: int) -> bool:
        """Seal a snapshot of the index under ``key`` (version ``key_version``, read with the tenant's change
        ``seq`` from one row) into ``path``. False, writing nothing, when the snapshot may predate that version:
        an index that has not yet applied a forget (which bumped the version) must never be sealed under the new
        key, or the forgotten subject's vectors would outlive the destroyed one.

        An index labelled with an older version but standing at ``seq`` or beyond has applied every change up
        to it, the forget of that version included (its deletions carry seqs up to the one it set): it takes
        the version. That happens when a catch-up read the tenant row before a forget committed and the change
        log after it; without the relabel such an index would refuse every save until the next forget."""
        with self.lock:
            if self.key_version != key_version:
                if self.key_version > key_version or self.synced_seq < seq:
                    return False
                self.key_version = key_version
            header = IndexHeader(tenant_id, key_version, self.synced_seq, self.ntotal, self.dim, self.kind)
            # A uint8 array, sealed as it is: bytes() of it would be one more copy under the GIL.
            payload = faiss.serialize_index(self._index).data
            snapshot_changes, self.changes_since_save = self.changes_since_save, 0
        try:
            self._write(path, tenant_id, key, key_version, header, payload)
        except BaseException:
            with self.lock:
                self.changes_since_save += snapshot_changes  # still unsaved
            raise
        return True

    @staticmethod
    def _write(
        path: Path, tenant_id: str, key: bytes, key_version: int, header: IndexHeader, payload: memoryview
    ) -> None:
        header_bytes = json.dumps(header.__dict__, sort_keys=True).encode()
        nonce, ciphertext = seal_parts(key, payload, _file_ad(tenant_id, key_version, header_bytes))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex}")  # unique even across containers (all PID 1)
        with open(tmp, "wb") as handle:
            handle.write(_MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes + nonce)
            handle.write(ciphertext)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def read_header(path: Path) -> tuple[IndexHeader, bytes, memoryview]:
        """The file's header, its bytes, and the sealed index as a view into the file's bytes (not a copy: at
        100k vectors the blob is 154 MB)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise IndexFileError("index file is missing") from exc
        if not raw.startswith(_MAGIC) or len(raw) < len(_MAGIC) + 4:
            raise IndexFileError("index file has no valid header")
        (hlen,) = struct.unpack(">I", raw[len(_MAGIC) : len(_MAGIC) + 4])
        start = len(_MAGIC) + 4
        header_bytes = raw[start : start + hlen]
        try:
            header = IndexHeader(**json.loads(header_bytes))
        except (ValueError, TypeError) as exc:
            raise IndexFileError("index file header is corrupt") from exc
        return header, header_bytes, memoryview(raw)[start + hlen :]

    @classmethod
    def load(
        cls, path: Path, *, tenant_id: str, key: bytes, key_version: int, exact_max: int, nprobe: int
    ) -> TenantIndex:
        header, header_bytes, blob = cls.read_header(path)
        if header.tenant_id != tenant_id or header.key_version != key_version:
            raise IndexFileError("index file belongs to another tenant or key version")
        try:
            payload = open_sealed(key, blob, _file_ad(tenant_id, key_version, header_bytes))
        except DecryptionError as exc:
            raise IndexFileError("index file failed authentication") from exc
        finally:
            blob.release()  # the file's bytes go before faiss copies the plaintext into an index
        index = _read_index(payload)
        del payload
        if index.ntotal != header.ntotal or index.d != header.dim:
            raise IndexFileError("index file contents disagree with its header")
        out = cls(header.dim, exact_max=exact_max, nprobe=nprobe)
        out._index = index
        out.synced_seq = header.synced_seq
        out.key_version = header.key_version
        ids = out.all_ids()
        out._max_id = int(ids.max()) if len(ids) else -1
        return out


def _read_index(payload: bytes) -> Any:
    """The index serialised in ``payload``, read in chunks: ``faiss.deserialize_index`` first copies all of it into
    a vector of its own (154 MB more at the peak of a 100k-vector load)."""
    view = memoryview(payload)
    offset = 0

    def read(size: int) -> bytes:
        nonlocal offset
        chunk = bytes(view[offset : offset + size])
        offset += len(chunk)
        return chunk

    return faiss.read_index(faiss.PyCallbackIOReader(read))  # type: ignore[attr-defined]


def _file_ad(tenant_id: str, key_version: int, header_bytes: bytes) -> bytes:
    return associated_data("index-file", tenant_id, key_version, hashlib.sha256(header_bytes).hexdigest())
