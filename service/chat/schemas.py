"""Request and response models of the chat endpoints (``/v1/chat``, ``/v1/chat/completions``, sessions)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from memory_store import validation
from memory_store.types import MemoryRecord, SearchHit
from service.schemas import Identifier, Utf8Str

InjectionMode = Literal["prompt", "none", "kv"]
Message = Annotated[Utf8Str, StringConstraints(min_length=1, max_length=validation.MAX_TEXT_CHARS)]


class ChatBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # as the service's request models: "5" is not a k, 1 not a boolean
        json_schema_extra={
            "examples": [
                {"subject": "user-42", "session_id": "s-2024-06-01", "message": "What is my dog's name?"},
                {"subject": "user-42", "session_id": "s1", "message": "I moved to Porto.", "stream": True},
            ]
        },
    )

    subject: Identifier | None = Field(
        default=None, description="Required with an API key; a subject token may only name its own subject."
    )
    session_id: Identifier | None = Field(default=None, description="Conversation id; a new one when omitted.")
    message: Message = Field(description="The user's new message.")
    injection: InjectionMode | None = Field(default=None, description="How memories reach the model.")
    k: int | None = Field(default=None, ge=0, le=1000, description="Memories to retrieve (0: none).")
    stream: bool = Field(default=False, description="Server-Sent Events: `delta` events, then `done`.")
    write_back: bool | None = Field(
        default=None, description="Store this exchange and distil facts from it (default from settings)."
    )
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    agent_id: Identifier | None = None


class UsedMemory(BaseModel):
    id: str
    text: str
    score: float
    dense_score: float | None
    lexical_score: float | None
    kind: str
    created_at: datetime
    occurred_at: datetime | None
    relevance: float | None = None

    @classmethod
    def of(cls, hit: SearchHit, text: str | None = None) -> UsedMemory:
        m = hit.memory
        return cls(
            id=m.id,
            text=m.text if text is None else text,
            score=round(hit.score, 6),
            dense_score=hit.dense_score,
            lexical_score=hit.lexical_score,
            kind=m.kind,
            created_at=m.created_at,
            occurred_at=m.occurred_at,
            relevance=None if hit.relevance is None else round(hit.relevance, 6),
        )


class WrittenMemory(BaseModel):
    id: str | None
    kind: str
    role: str | None = None
    status: Literal["written", "queued"]


class WriteBackStatus(BaseModel):
    status: str = Field(description="queued, disabled, turns_only, dropped or failed.")
    job_id: str | None = None
    error: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    reply: str
    session_id: str
    message_id: str
    model: str
    injection: InjectionMode
    finish_reason: str
    memories_used: list[UsedMemory] = Field(description="Retrieved memories that were injected, best first.")
    memories_dropped: list[str] = Field(description="Retrieved memories left out by the context budget.")
    memories_written: list[WrittenMemory] = Field(
        description="Turns stored now, and the distillation queued for the background worker."
    )
    write_back: WriteBackStatus
    usage: Usage
    timings: dict[str, float]
    info: dict[str, Any] = Field(default_factory=dict, description="Injection details (e.g. the KV layout).")


# ---- OpenAI-compatible ----------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Utf8Str | None = None


class CompletionMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Utf8Str | list[ContentPart] | None = None
    name: Utf8Str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class CompletionBody(BaseModel):
    """OpenAI's chat completion request; fields Sealmem does not use are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"model": "sealmem", "user": "user-42", "messages": [{"role": "user", "content": "Hi, I'm Ana."}]}
            ]
        },
    )

    messages: list[CompletionMessage] = Field(min_length=1, max_length=1000)
    model: Utf8Str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    n: int | None = Field(default=None, ge=1, le=1)
    stop: Utf8Str | list[Utf8Str] | None = None
    user: Identifier | None = Field(default=None, description="The subject, when calling with an app key.")
    # Sealmem extensions (the openai client sends them with extra_body=...)
    session_id: Identifier | None = None
    injection: InjectionMode | None = None
    k: int | None = Field(default=None, ge=0, le=1000, strict=True)
    write_back: bool | None = Field(default=None, strict=True)


# ---- sessions -------------------------------------------------------------------------------------------


class SessionOut(BaseModel):
    session_id: str
    subject: str
    turns: int
    created_at: datetime
    last_activity_at: datetime


class SessionList(BaseModel):
    sessions: list[SessionOut]


class TurnOut(BaseModel):
    id: str
    role: str
    text: str
    message_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, record: MemoryRecord) -> TurnOut:
        role = record.metadata.get("role")
        return cls(
            id=record.id,
            role=role if isinstance(role, str) else "user",
            text=record.text,
            message_id=record.source_ref,
            created_at=record.created_at,
        )


class SessionDetail(BaseModel):
    session_id: str
    subject: str
    turns: list[TurnOut]


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "sealmem"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
