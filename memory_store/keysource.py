"""Where the master key comes from: settings (env var or file), never a default."""

from __future__ import annotations

from memory_store.crypto import MasterKey, decode_key, load_key_file
from memory_store.errors import ConfigurationError
from memory_store.settings import StoreSettings


def master_key_from_settings(settings: StoreSettings) -> MasterKey:
    if settings.master_key is not None:
        return MasterKey(decode_key(settings.master_key.get_secret_value()))
    if settings.master_key_file is not None:
        return MasterKey(load_key_file(settings.master_key_file))
    raise ConfigurationError(
        "no master key: set SEALMEM_MASTER_KEY or SEALMEM_MASTER_KEY_FILE (generate one with `sealmem keygen`)"
    )
