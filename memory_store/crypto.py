"""Envelope encryption: a master key (KEK) wraps per-subject and per-tenant data keys (DEKs).

All ciphertexts are AES-256-GCM ``nonce(12) || ciphertext+tag``. The associated data binds every ciphertext
to its purpose and owner, so a blob copied into another row, field or tenant fails authentication.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from memory_store.errors import ConfigurationError, DecryptionError

KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_CHECK_PLAINTEXT = b"sealmem-master-key-check-v1"
_KEY_CHECK_AD = b"sealmem/v1/key-check"


def generate_key() -> bytes:
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError("master key is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise ConfigurationError(f"master key must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def load_key_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise ConfigurationError(f"master key file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"master key file {path} is unreadable") from exc
    return decode_key(text)


def write_secret_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 holding ``text``; never overwrites an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def associated_data(purpose: str, *parts: object) -> bytes:
    """Length-prefixed, unambiguous associated data for ``purpose`` and its owner ids."""
    out = bytearray(b"sealmem/v1/" + purpose.encode())
    for part in parts:
        raw = str(part).encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    nonce, ciphertext = seal_parts(key, plaintext, ad)
    return nonce + ciphertext


def seal_parts(key: bytes, plaintext: bytes | memoryview, ad: bytes) -> tuple[bytes, bytes]:
    """:func:`seal`'s blob as its two parts (nonce, ciphertext with tag), for writing a large one without joining
    them into a copy first (an index file of 100k vectors is 154 MB; each copy holds the GIL for about 40 ms)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, blob: bytes | memoryview, ad: bytes) -> bytes:
    """``blob`` may be a view (into a file's bytes, say): its ciphertext is then read without a copy."""
    if len(blob) < NONCE_BYTES + 16:
        raise DecryptionError("ciphertext is truncated")
    try:
        return AESGCM(key).decrypt(bytes(blob[:NONCE_BYTES]), blob[NONCE_BYTES:], ad)
    except InvalidTag as exc:
        raise DecryptionError("ciphertext failed authentication") from exc


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The key-encryption key. ``repr`` never shows the key bytes."""

    material: bytes

    def __post_init__(self) -> None:
        if len(self.material) != KEY_BYTES:
            raise ConfigurationError("master key must be 32 bytes")

    def __repr__(self) -> str:
        return f"MasterKey(fingerprint={self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible identifier to tell keys apart in logs."""
        return hashlib.sha256(b"sealmem-fp" + self.material).hexdigest()[:12]

    def key_check(self) -> bytes:
        return seal(self.material, _KEY_CHECK_PLAINTEXT, _KEY_CHECK_AD)

    def verify(self, key_check: bytes) -> bool:
        try:
            return open_sealed(self.material, key_check, _KEY_CHECK_AD) == _KEY_CHECK_PLAINTEXT
        except DecryptionError:
            return False

    def wrap(self, data_key: bytes, ad: bytes) -> bytes:
        return seal(self.material, data_key, ad)

    def unwrap(self, wrapped: bytes, ad: bytes) -> bytes:
        return open_sealed(self.material, wrapped, ad)

    def pseudonym(self, purpose: str, *parts: object) -> str:
        """A keyed digest (HMAC-SHA256 under a key derived from this master key) of ``purpose`` and ``parts``:
        stable while the master key is, and no one without the key can confirm a guess of ``parts``."""
        derived = hmac.new(self.material, b"sealmem/v1/pseudonym-key", hashlib.sha256).digest()
        return hmac.new(derived, associated_data(purpose, *parts), hashlib.sha256).hexdigest()


def subject_key_ad(tenant_id: str, subject_id: str) -> bytes:
    return associated_data("subject-key", tenant_id, subject_id)


def tenant_index_key_ad(tenant_id: str, version: int) -> bytes:
    return associated_data("index-key", tenant_id, version)


def memory_field_ad(field: str, tenant_id: str, subject_id: str, memory_uid: str) -> bytes:
    return associated_data(f"memory/{field}", tenant_id, subject_id, memory_uid)
