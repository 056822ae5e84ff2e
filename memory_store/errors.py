"""Exceptions raised by the storage core.

StoreError
 ├── ConfigurationError      settings are unusable (no master key, bad URL, schema not migrated)
 │   └── MasterKeyChangedError   the keyring names another master key than this process's (rotated while running)
 ├── WrongMasterKeyError     the master key does not match the database
 ├── CredentialRevokedError  a delayed write's API key was revoked after the request began
 ├── PolicyChangedError      the tenant's desensitisation policy changed while a write was screened (retried)
 ├── WriteRacedError         a row an add read before taking its lock was deleted or created meanwhile (retried)
 ├── DecryptionError         a ciphertext failed authentication
 ├── NotFoundError           no such tenant / subject / memory (or not visible to the caller)
 ├── ValidationError         bad input to an operation
 └── ConflictError           a uniqueness rule would be broken
     └── SubjectForgottenError   the subject was forgotten after the write's request began
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every storage-core error."""

    code = "store_error"


class ConfigurationError(StoreError):
    code = "configuration_error"


class WrongMasterKeyError(ConfigurationError):
    code = "wrong_master_key"


class MasterKeyChangedError(ConfigurationError):
    code = "master_key_changed"


class CredentialRevokedError(StoreError):
    code = "credential_revoked"


class PolicyChangedError(StoreError):
    """Raised inside a write's transaction when the policy its texts were screened under is no longer the
    tenant's; nothing was written and :func:`memory_store.retry.retry_write` runs the write again."""

    code = "policy_changed"


class WriteRacedError(StoreError):
    """Raised inside an add's transaction when a row it had read before taking the tenant's write lock (a
    subject, the tenant's vector key) was deleted or created by another transaction meanwhile; nothing was
    written and :func:`memory_store.retry.retry_write` runs the add again, which reads them anew."""

    code = "write_raced"


class DecryptionError(StoreError):
    code = "decryption_failed"


class NotFoundError(StoreError):
    code = "not_found"


class ValidationError(StoreError):
    code = "invalid_input"


class ConflictError(StoreError):
    code = "conflict"


class SubjectForgottenError(ConflictError):
    code = "subject_forgotten"
