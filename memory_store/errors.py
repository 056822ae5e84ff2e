"""Exceptions raised by the storage core.

StoreError
 ├── ConfigurationError      settings are unusable (no master key, bad URL, schema not migrated)
 ├── WrongMasterKeyError     the master key does not match the database
 ├── DecryptionError         a ciphertext failed authentication
 ├── NotFoundError           no such tenant / subject / memory (or not visible to the caller)
 ├── ValidationError         bad input to an operation
 └── ConflictError           a uniqueness rule would be broken
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every storage-core error."""

    code = "store_error"


class ConfigurationError(StoreError):
    code = "configuration_error"


class WrongMasterKeyError(ConfigurationError):
    code = "wrong_master_key"


class DecryptionError(StoreError):
    code = "decryption_failed"


class NotFoundError(StoreError):
    code = "not_found"


class ValidationError(StoreError):
    code = "invalid_input"


class ConflictError(StoreError):
    code = "conflict"
