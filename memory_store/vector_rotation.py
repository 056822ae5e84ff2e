"""Secret, distance-preserving rotation of embeddings for vector stores that cannot hold ciphertext.

pgvector must see real vectors to index them. Each tenant has its own random vector key; from it we derive an
orthogonal matrix Q (AES-CTR keystream -> Gaussian matrix -> QR). Stored vectors are ``Q @ v`` and queries are
rotated the same way: inner products and L2 distances are unchanged, so search works, but a stolen table holds
no vector in the model's own coordinate system. This stops off-the-shelf embedding inversion and cross-tenant
comparison; it is NOT semantic security (an attacker who knows some plaintext/vector pairs for a tenant can
solve for Q). See SECURITY notes in docs/deploy.md.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _keystream(key: bytes, nbytes: int) -> bytes:
    stream_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"sealmem/v1/vector-rotation").derive(key)
    encryptor = Cipher(algorithms.AES(stream_key), modes.CTR(b"\x00" * 16)).encryptor()
    return encryptor.update(b"\x00" * nbytes) + encryptor.finalize()


def orthogonal_matrix(key: bytes, dim: int) -> npt.NDArray[np.float32]:
    """A uniformly random orthogonal ``dim x dim`` matrix determined by ``key`` (stable across numpy versions)."""
    count = dim * dim
    raw = np.frombuffer(_keystream(key, 8 * (count + count % 2)), dtype="<u8")
    uniform = (raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)  # 53-bit floats in [0, 1)
    u1, u2 = 1.0 - uniform[0::2], uniform[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    gaussian = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:count]
    q, r = np.linalg.qr(gaussian.reshape(dim, dim))
    q *= np.sign(np.diag(r))  # Haar-uniform and unique
    return q.astype(np.float32)


def rotate(matrix: npt.NDArray[np.float32], vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rotate row vectors: ``v -> Q v`` for each row."""
    return np.ascontiguousarray(vectors @ matrix.T, dtype=np.float32)
