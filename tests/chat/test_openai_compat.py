"""/v1/chat/completions and /v1/models driven by the official ``openai`` package over real HTTP."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

from service.llm.backend import LLMUnavailableError  # noqa: E402
from tests.chat.conftest import Server  # noqa: E402


def test_non_streaming_completion_with_memory(server: Server) -> None:
    memory_id = server.add("ana", "My dog is named Biscuit.")
    client = server.client()
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is my dog's name?"},
        ],
        user="ana",
        max_tokens=64,
        temperature=0,
    )
    assert completion.object == "chat.completion" and completion.model == "fake-llm"
    assert completion.choices[0].message.content.startswith("You told me: My dog is named Biscuit.")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    sealmem = completion.model_extra["sealmem"]
    assert sealmem["memories_used"][0]["id"] == memory_id and sealmem["session_id"].startswith("conv_")
    system = server.fake.calls[-1][0].content
    assert system.startswith("You are terse.\nFacts about the user:\n- My dog is named Biscuit.")


def test_streaming_completion_in_openai_chunks(server: Server) -> None:
    server.add("ana", "My dog is named Biscuit.")
    client = server.client()
    stream = client.chat.completions.create(
        model="sealmem", messages=[{"role": "user", "content": "What is my dog's name?"}], user="ana",
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("You told me: My dog is named Biscuit.")
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_the_conversation_is_the_working_memory_and_names_the_session(server: Server) -> None:
    client = server.client()
    history = [{"role": "user", "content": "Hi, I am planning a trip."}]
    first = client.chat.completions.create(model="m", messages=history, user="ana")
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "It is to Japan."}]
    second = client.chat.completions.create(model="m", messages=history, user="ana")
    assert first.model_extra["sealmem"]["session_id"] == second.model_extra["sealmem"]["session_id"]
    prompt = server.fake.calls[-1]
    assert [(m.role, m.content) for m in prompt if m.role != "system"] == [
        ("user", "Hi, I am planning a trip."), ("assistant", "I don't know."), ("user", "It is to Japan."),
    ]
    pinned = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "And then Korea."}], user="ana",
        extra_headers={"X-Session-ID": "trip"},
    )
    assert pinned.model_extra["sealmem"]["session_id"] == "trip"
    again = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "How long?"}], user="ana",
        extra_headers={"X-Session-ID": "trip"},
    )
    assert again.model_extra["sealmem"]["session_id"] == "trip"
    prompt = server.fake.calls[-1]  # no history sent: the session's stored turns are the working memory
    assert [m.content for m in prompt if m.role == "user"] == ["And then Korea.", "How long?"]


def test_subject_comes_from_the_token_or_the_user_field(server: Server) -> None:
    server.add("ana", "My dog is named Biscuit.")
    token = server.token("ana", ["chat"])
    as_ana = server.client(token)
    out = as_ana.chat.completions.create(model="m", messages=[{"role": "user", "content": "What is my dog's name?"}])
    assert "Biscuit" in out.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        as_ana.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], user="bob")
    with pytest.raises(openai.UnprocessableEntityError):
        server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError):
        server.client(server.reader_key).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], user="ana"
        )
    with pytest.raises(openai.AuthenticationError):
        server.client("smk_wrong").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], user="ana"
        )


def test_models_and_llm_errors(server: Server) -> None:
    client = server.client()
    assert [m.id for m in client.models.list()] == ["fake-llm"]
    assert client.models.retrieve("fake-llm").id == "fake-llm"
    server.fake.fail = LLMUnavailableError("the LLM server cannot be reached")
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], user="ana", stream=stream
            )
        assert caught.value.status_code == 502
        assert caught.value.body["code"] == "llm_unavailable"
    server.fake.fail = None
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="m", messages=[{"role": "assistant", "content": "hi"}], user="ana")


def test_the_conversation_id_cannot_be_confirmed_from_a_guess_of_the_first_message(server: Server) -> None:
    """The id is stored in plaintext (memories' session_id, audit details that outlive a forget): it must be
    keyed by the master key, not a bare hash of subject and first message (issue #11 item 3)."""
    import hashlib

    first = "My secret is that I am moving to Porto."
    completion = server.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": first}], user="ana"
    )
    session_id = completion.model_extra["sealmem"]["session_id"]
    unkeyed = "conv_" + hashlib.sha256(f"ana\x00{first}".encode()).hexdigest()[:32]
    assert session_id.startswith("conv_") and len(session_id) == 37 and session_id != unkeyed
    store = server.harness.store
    assert session_id == "conv_" + store.pseudonym("conversation", server.tenant_id, "ana", first)[:32]
    assert store.pseudonym("conversation", server.tenant_id, "bob", first) != store.pseudonym(
        "conversation", server.tenant_id, "ana", first
    )
    # Another master key gives another id: holding the database alone is not enough to test a guess.
    from memory_store import MasterKey, generate_key

    other = MasterKey(generate_key()).pseudonym("conversation", server.tenant_id, "ana", first)
    assert session_id[5:] != other[:32]
