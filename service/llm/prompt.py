"""Prompt assembly within the model's context budget, counted in real tokens of the model's tokenizer.

The system message is kept in three separable pieces so attention-level (KV) injection can reuse them:
``prefix`` (instructions and the facts header), one ``MemoryLine`` per retrieved memory, and ``suffix``
(the answer instruction). Then come the working-memory turns and the new user message.

Budget order: the fixed pieces and the new message always fit (or the request is refused); then the most
recent turns up to the working-memory budget; then memories by score, so the lowest-scoring are dropped
first. The rendered prompt is counted once more at the end and trimmed further if the pieces' estimate
was short by a merge token or two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from service.errors import MessageTooLong
from service.llm.backend import ChatMessage, TokenCounter


class PromptTooLongError(MessageTooLong):
    """The new message alone (with the fixed instructions) does not fit the context budget (422)."""


@dataclass(frozen=True)
class MemoryItem:
    """A retrieved memory as the prompt builder sees it."""

    memory_id: str
    text: str
    score: float
    date: datetime | None = None


@dataclass(frozen=True)
class MemoryLine:
    memory_id: str
    text: str
    score: float
    line: str
    tokens: int


@dataclass(frozen=True)
class PromptStyle:
    system_prompt: str = ""
    facts_header: str = "Facts about the user:"
    answer_instruction: str = "Answer in one short sentence."

    def prefix(self, *, extra_system: str = "", with_facts: bool = True) -> str:
        parts = [p.strip() for p in (self.system_prompt, extra_system) if p and p.strip()]
        if with_facts and self.facts_header:
            parts.append(self.facts_header)
        return "".join(p + "\n" for p in parts)

    def suffix(self) -> str:
        return self.answer_instruction

    @staticmethod
    def line(item: MemoryItem) -> str:
        text = " ".join(item.text.split())
        if item.date is not None:
            return f"- {text} ({item.date.date().isoformat()})\n"
        return f"- {text}\n"


@dataclass(frozen=True)
class BuiltPrompt:
    prefix: str
    memory_lines: tuple[MemoryLine, ...]
    suffix: str
    history: tuple[ChatMessage, ...]
    user_message: str
    prompt_tokens: int
    budget_tokens: int
    dropped_memory_ids: tuple[str, ...] = ()
    dropped_turns: int = 0
    plain_prefix: str = ""  # the prefix without the facts header: the system text when no memory is shown
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def system_text(self) -> str:
        return self.prefix + "".join(m.line for m in self.memory_lines) + self.suffix

    def system_without_memories(self) -> str:
        return self.plain_prefix + self.suffix

    def messages(self, *, with_memories: bool = True) -> list[ChatMessage]:
        system = self.system_text if with_memories else self.system_without_memories()
        out = [ChatMessage("system", system)] if system.strip() else []
        out.extend(self.history)
        out.append(ChatMessage("user", self.user_message))
        return out


class PromptBuilder:
    def __init__(self, counter: TokenCounter, style: PromptStyle | None = None) -> None:
        self.counter = counter
        self.style = style or PromptStyle()

    def build(
        self,
        *,
        message: str,
        memories: Sequence[MemoryItem],
        history: Sequence[ChatMessage],
        budget_tokens: int,
        working_memory_tokens: int,
        memory_tokens: int | None = None,
        extra_system: str = "",
    ) -> BuiltPrompt:
        """Fit ``message``, then recent ``history`` (oldest first in, newest kept), then ``memories``."""
        count = self.counter
        ranked = sorted(memories, key=lambda m: -m.score)
        prefix = self.style.prefix(extra_system=extra_system, with_facts=bool(ranked))
        suffix = self.style.suffix()

        def render(lines: Sequence[MemoryLine], turns: Sequence[ChatMessage]) -> list[ChatMessage]:
            system = prefix + "".join(m.line for m in lines) + suffix
            head = [ChatMessage("system", system)] if system.strip() else []
            return [*head, *turns, ChatMessage("user", message)]

        fixed = count.count_messages(render([], []))
        if fixed > budget_tokens:
            raise PromptTooLongError(
                f"the message needs {fixed} tokens with the instructions; the context budget is {budget_tokens}"
            )
        # Per-message template overhead, so turn estimates include their role headers.
        overhead = max(count.count_messages(render([], [ChatMessage("user", "x")])) - fixed - 1, 0)

        turns: list[ChatMessage] = []
        turns_tokens = 0
        wm_budget = min(working_memory_tokens, budget_tokens - fixed)
        for turn in reversed(history):
            cost = count.count_text(turn.content) + overhead
            if turns_tokens + cost > wm_budget:
                break
            turns.insert(0, turn)
            turns_tokens += cost
        dropped_turns = len(history) - len(turns)

        lines: list[MemoryLine] = []
        dropped: list[str] = []
        mem_budget = budget_tokens - fixed - turns_tokens
        if memory_tokens is not None:
            mem_budget = min(mem_budget, memory_tokens)
        used = 0
        for item in ranked:
            text = self.style.line(item)
            cost = count.count_text(text)
            if used + cost > mem_budget:
                dropped.append(item.memory_id)
                continue
            lines.append(MemoryLine(item.memory_id, item.text, item.score, text, cost))
            used += cost

        total = count.count_messages(render(lines, turns))
        while total > budget_tokens and (lines or turns):
            if lines:
                dropped.append(lines.pop().memory_id)  # the lowest-scoring memory goes first
            else:
                turns.pop(0)
                dropped_turns += 1
            total = count.count_messages(render(lines, turns))
        if total > budget_tokens:  # only possible when the header alone tipped it over
            raise PromptTooLongError(f"the prompt needs {total} tokens; the context budget is {budget_tokens}")
        plain = self.style.prefix(extra_system=extra_system, with_facts=False)
        return BuiltPrompt(
            prefix=prefix if lines else plain,
            plain_prefix=plain,
            memory_lines=tuple(lines),
            suffix=suffix,
            history=tuple(turns),
            user_message=message,
            prompt_tokens=total,
            budget_tokens=budget_tokens,
            dropped_memory_ids=tuple(dropped),
            dropped_turns=dropped_turns,
            stats={"memory_tokens": sum(m.tokens for m in lines), "turn_tokens": turns_tokens, "fixed_tokens": fixed},
        )
