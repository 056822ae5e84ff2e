"""Every table of the schema, registered on one metadata (Alembic and the schema test use this)."""

from __future__ import annotations

import memory_store.access
import memory_store.console_sessions
import memory_store.vector_models
from memory_store.models import Base

metadata = Base.metadata
TABLE_MODULES = (memory_store.access, memory_store.vector_models, memory_store.console_sessions)
