"""The OpenAPI ``operationId`` of every route: the names generated clients (``clients/``) call, so they are a
contract. A route missing here fails at app start, not with a generated name a client would then depend on."""

from __future__ import annotations

from fastapi.routing import APIRoute

# route function name -> operationId ("<tag>_<action>")
OPERATION_IDS: dict[str, str] = {
    "add_memories": "memories_add",
    "add_memory_batch": "memories_add_batch",
    "list_memories": "memories_list",
    "search_memories": "memories_search",
    "get_memory": "memories_get",
    "update_memory": "memories_update",
    "delete_memory": "memories_delete",
    "memory_history": "memories_history",
    "ingest": "memories_ingest",
    "ingest_status": "memories_ingest_status",
    "mint_token": "tokens_create",
    "inspect_memories": "admin_memories_list",
    "list_subjects": "admin_subjects_list",
    "stats": "admin_stats",
    "export_subject": "admin_subjects_export",
    "forget_subject": "admin_subjects_forget",
    "reindex": "admin_reindex",
    "list_keys": "admin_keys_list",
    "create_key": "admin_keys_create",
    "revoke_key": "admin_keys_revoke",
    "audit_records": "admin_audit_list",
    "verify_audit": "admin_audit_verify",
    "get_desensitisation": "admin_desensitisation_get",
    "set_desensitisation": "admin_desensitisation_update",
    "healthz": "health_live",
    "readyz": "health_ready",
    "metrics": "health_metrics",
    "chat_endpoint": "chat",
    "chat_completions": "chat_completions",
    "list_models": "models_list",
    "get_model": "models_get",
    "list_sessions": "sessions_list",
    "get_session": "sessions_get",
    "delete_session": "sessions_delete",
}


def operation_id(route: APIRoute) -> str:
    try:
        return OPERATION_IDS[route.name]
    except KeyError:
        raise RuntimeError(f"route {route.name} has no operationId in service/routes/operations.py") from None
