"""One chat turn's desensitisation: what the LLM may see, and the reply restored for the caller.

Memories and stored turns already carry placeholders (``<EMAIL_ADDRESS_1>``; see
:mod:`memory_store.sensitive.vault`). For a backend whose prompts leave the process (an OpenAI-compatible
server, often a third party), the caller's message, the client-sent history and system text are screened too:
every value the tenant's policy does not ``keep`` becomes a numbered placeholder, the same one the subject's
vault gives it when it holds the value. The reply, whatever the backend, is restored before it reaches the
caller: values the caller sent in this request, and vault originals when the policy shows them to the caller's
role. A placeholder split across streamed chunks is held back until it is complete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from memory_store import MemoryStore
from memory_store.sensitive.vault import SensitiveDataRejected, placeholders_in, restore
from service.llm.backend import ChatMessage

_LONGEST = 48  # characters a placeholder can span ("<" + type + "_" + ordinal + ">")
_PLACEHOLDER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789")


@dataclass
class Shield:
    originals: dict[tuple[str, int], str] = field(default_factory=dict)
    masked: int = 0  # values replaced in text sent to the LLM

    def restore(self, text: str) -> str:
        return restore(text, self.originals) if self.originals else text

    async def restore_stream(self, deltas: AsyncIterator[str]) -> AsyncIterator[str]:
        """``deltas`` with placeholders restored, holding back a trailing ``<...`` that may be one in parts."""
        held = ""
        async for delta in deltas:
            held += delta
            cut = _safe_end(held)
            if cut:
                yield self.restore(held[:cut])
                held = held[cut:]
        if held:
            yield self.restore(held)


def _safe_end(text: str) -> int:
    """How much of ``text`` can be sent: all of it, unless it ends in what may be the start of a placeholder."""
    start = text.rfind("<")
    if start < 0 or ">" in text[start:] or len(text) - start > _LONGEST:
        return len(text)
    if all(ch in _PLACEHOLDER_CHARS for ch in text[start + 1 :]):
        return start
    return len(text)


@dataclass(frozen=True)
class Shielded:
    shield: Shield
    message: str
    history: list[ChatMessage]
    extra_system: str
    memory_texts: list[str]


def shield_turn(
    store: MemoryStore,
    *,
    tenant_id: str,
    subject: str,
    role: str,
    external: bool,
    message: str,
    history: Sequence[ChatMessage],
    extra_system: str,
    memory_texts: Sequence[str],
) -> Shielded:
    """Screen one chat turn (raises :class:`SensitiveDataRejected` when the message holds a rejected type, before
    anything is generated or stored) and build the shield that restores its reply.

    For an ``external`` backend every text of the prompt is screened, memories included (one stored before its
    type was screened, or while it was kept, may hold a value). A value the subject's vault holds gets the
    vault's placeholder when ``role`` may see originals; otherwise, and for new values, the next free ordinal
    of its type, so the reply can be restored without confirming anything to a caller who may not see it."""
    policy = store.sensitive_policy(tenant_id)
    shield = Shield()
    texts = [message, extra_system, *(m.content for m in history), *memory_texts]
    masked = list(texts)
    revealing = policy.reveals_to(role)
    if policy.screens:
        detect = store.screener.detect
        found = [detect(text) if (i == 0 or external) and text else [] for i, text in enumerate(texts)]
        rejected = [f.entity_type for f in found[0] if policy.action(f.entity_type) == "reject"]
        if rejected:
            raise SensitiveDataRejected(rejected)
        if external:
            store.screener.count(Counter(f.entity_type for items in found for f in items))
            values = [
                (f.entity_type, text[f.start : f.end])
                for text, items in zip(texts, found, strict=True)
                for f in items
                if policy.action(f.entity_type) != "keep"
            ]
            if values:
                known, top = store.pseudonyms(tenant_id=tenant_id, subject=subject, values=values)
                numbered = dict(known) if revealing else {}
                for pair in values:
                    if pair not in numbered:
                        top[pair[0]] = top.get(pair[0], 0) + 1
                        numbered[pair] = top[pair[0]]
                for (entity_type, original), ordinal in numbered.items():
                    shield.originals[(entity_type, ordinal)] = original
                for i, (text, items) in enumerate(zip(texts, found, strict=True)):
                    out, at = [], 0
                    for f in items:
                        if policy.action(f.entity_type) == "keep":
                            continue
                        ordinal = numbered[(f.entity_type, text[f.start : f.end])]
                        out += [text[at : f.start], f"<{f.entity_type}_{ordinal}>"]
                        at = f.end
                        shield.masked += 1
                    masked[i] = "".join(out) + text[at:]
    if revealing:
        stored = set().union(*(placeholders_in(t) for t in texts[2:]))
        missing = stored - set(shield.originals)
        if missing:
            shield.originals.update(store.originals(tenant_id=tenant_id, subject=subject, placeholders=missing))
    cut = 2 + len(history)
    return Shielded(
        shield=shield,
        message=masked[0],
        history=[replace(m, content=c) for m, c in zip(history, masked[2:cut], strict=True)],
        extra_system=masked[1],
        memory_texts=masked[cut:],
    )
