"""A LangChain retrieval chain over a user's Sealmem memories, and a chat history kept in Sealmem.

    pip install "./clients/python[langchain]"   # sealmem-client with langchain-core
    export SEALMEM_URL=http://localhost:8080
    export SEALMEM_API_KEY=smk_...              # an app (or admin) key
    python examples/langchain_retrieval.py

The chain is retriever -> prompt -> chat model -> text. The chat model here is the LLM the Sealmem server is
configured with, through its OpenAI-compatible endpoint (with ``k: 0`` and ``write_back: false``: a plain LLM
call, the memories come from the retriever); any LangChain chat model fits in its place, e.g. langchain-openai's
``ChatOpenAI``. Optional: SEALMEM_SUBJECT. The memories it adds are deleted at the end.
"""


from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from sealmem_client import Sealmem, SealmemError
from sealmem_client.langchain import SealmemChatMessageHistory, SealmemRetriever

ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def format_docs(docs: Sequence[Document]) -> str:
    return "\n".join(f"- {doc.page_content}" for doc in docs)


def main() -> None:
    subject = os.environ.get("SEALMEM_SUBJECT") or f"langchain-{uuid.uuid4().hex[:8]}"
    with Sealmem() as client:
        print(f"Sealmem at {client.base_url}; subject {subject!r}")
        client.memories.add_batch(
            [
                {"text": "Plays the cello in a community orchestra."},
                {"text": "Works night shifts as a nurse in Porto."},
                {"text": "Prefers tea over coffee.", "kind": "preference"},
            ],
            subject=subject,
        )

        retriever = SealmemRetriever(client=client, subject=subject, k=2)
        question = "Which instrument does the user play?"
        for doc in retriever.invoke(question):
            print(f"  retrieved {doc.metadata['score']:.3f} [{doc.metadata['kind']}] {doc.page_content}")

        def sealmem_llm(prompt: PromptValue) -> str:
            messages = [{"role": ROLES.get(m.type, "user"), "content": str(m.content)} for m in prompt.to_messages()]
            answer = client.request(
                "POST",
                "/v1/chat/completions",
                json={"messages": messages, "user": subject, "k": 0, "write_back": False},
            )
            return str(answer["choices"][0]["message"]["content"])

        prompt = ChatPromptTemplate.from_messages(
            [("system", "Answer from these facts about the user:\n{context}"), ("human", "{question}")]
        )
        chain = (
            {"context": retriever | format_docs, "question": RunnablePassthrough()}
            | prompt
            | RunnableLambda(sealmem_llm)
            | StrOutputParser()
        )
        try:
            answer = chain.invoke(question)
            print(f"chain answer: {answer}")
        except SealmemError as exc:  # e.g. chat disabled on the server (503 unavailable)
            answer = ""
            print(f"no LLM answer ({exc.code}): {exc.message}")

        # The conversation itself, kept in Sealmem as the session's turns.
        history = SealmemChatMessageHistory(f"lc-{uuid.uuid4().hex[:6]}", client=client, subject=subject)
        history.add_messages([HumanMessage(question), AIMessage(answer or "(no answer)")])
        print(f"history of {history.session_id}: {[f'{m.type}: {m.content}' for m in history.messages]}")
        history.clear()

        for memory in list(client.memories.iter(subject=subject)):
            client.memories.delete(memory.id)
        print("deleted the example's memories")


if __name__ == "__main__":
    main()
