"""Write-back quality: scripted conversations through the real ``POST /v1/memories/ingest``, scored on the
memory state each leaves.

Each conversation of ``bench/data/writeback_conversations.json`` names a category, optional ``memories`` added
first through ``POST /v1/memories`` (as an app would: e.g. a compound "My dog is named Biscuit and I live in
Lisbon."), ``turns`` (each turn one ingest call: a string is one user message, a list holds
``{role, content}`` messages, assistant ones included) and ``expect``: the subject's ACTIVE memories afterwards.

Matching rule (tolerant of wording, strict about content):

* each expected memory is a list of key phrases that must all occur in one active memory (case-insensitive,
  on word boundaries, curly apostrophes straightened); a phrase may list alternatives with ``|``
  (``"don't|no longer"``);
* expected and active memories are matched one to one: an active memory left over (a stale value, a
  duplicate, something distilled from chit-chat or an assistant turn) or an expected one unmatched fails;
* no active memory may contain a phrase of the conversation's ``forbid`` list (e.g. ``lisbon`` after a move,
  wherever it hides, compound memories included).

Each conversation gets a subject of its own in one app (real SQLite, FAISS and desensitisation; the embedder is
the deterministic HashingEmbedder unless ``--embedder onnx``, the default all-MiniLM-L6-v2). The rule
distiller is the default; ``--llm-plumbing N`` also runs N conversations with ``LLMDistiller`` on the
``openai`` backend against the scripted OpenAI-compatible server of the tests (``tests/chat/openai_server.py``),
whose answers are what the rules would extract, and reports whether every request carried the JSON schema
(``response_format``) and whether the answers were applied (the states are scored as above).

    python bench/writeback_quality.py [--embedder hashing|onnx] [--llm-plumbing 8] [--only ID,...]
        [--json-out FILE]

Prints ONE JSON object: the share of conversations whose final state is right, shares per category, and the
failing conversations with their expected and actual states.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO / "bench" / "data" / "writeback_conversations.json"
TARGET = 0.90


@dataclass
class Conversation:
    id: str
    category: str
    turns: list[list[dict[str, str]]]
    expect: list[list[str]]
    memories: list[str] = field(default_factory=list)
    forbid: list[str] = field(default_factory=list)
    note: str | None = None


def load(path: Path = DATA) -> list[Conversation]:
    raw = json.loads(path.read_text())
    out: list[Conversation] = []
    for item in raw["conversations"]:
        turns = [
            [{"role": "user", "content": turn}] if isinstance(turn, str) else [dict(m) for m in turn]
            for turn in item["turns"]
        ]
        out.append(
            Conversation(
                id=item["id"],
                category=item["category"],
                turns=turns,
                expect=[list(e) for e in item["expect"]],
                memories=list(item.get("memories", [])),
                forbid=list(item.get("forbid", [])),
                note=item.get("note"),
            )
        )
    ids = [c.id for c in out]
    if len(set(ids)) != len(ids):
        raise ValueError("conversation ids must be unique")
    return out


# ---- matching ----------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return " ".join(text.replace("\u2019", "'").lower().split())


def has_phrase(text: str, phrase: str) -> bool:
    """``phrase`` (alternatives separated by ``|``) occurs in ``text`` on word boundaries."""
    clean = _clean(text)
    return any(
        re.search(r"(?<![\w'])" + re.escape(_clean(alt)) + r"(?![\w'])", clean) for alt in phrase.split("|")
    )


def fits(text: str, expected: Sequence[str]) -> bool:
    return all(has_phrase(text, phrase) for phrase in expected)


def _matching(expected: list[list[str]], actual: list[str]) -> dict[int, int]:
    """A maximum one-to-one matching expected index -> actual index (augmenting paths; the sets are small)."""
    owner: dict[int, int] = {}

    def place(e: int, seen: set[int]) -> bool:
        for a, text in enumerate(actual):
            if a in seen or not fits(text, expected[e]):
                continue
            seen.add(a)
            if a not in owner or place(owner[a], seen):
                owner[a] = e
                return True
        return False

    for e in range(len(expected)):
        place(e, set())
    return {e: a for a, e in owner.items()}


def judge(conversation: Conversation, actual: list[str]) -> dict[str, Any]:
    """Whether ``actual`` (the active memories' texts) is the expected state, and what is wrong if not."""
    matched = _matching(conversation.expect, actual)
    missing = [e for i, e in enumerate(conversation.expect) if i not in matched]
    extra = [t for a, t in enumerate(actual) if a not in set(matched.values())]
    forbidden = sorted({p for p in conversation.forbid for t in actual if has_phrase(t, p)})
    return {"ok": not missing and not extra and not forbidden, "missing": missing, "extra": extra,
            "forbidden": forbidden}


# ---- running -----------------------------------------------------------------------------------------


@dataclass
class Run:
    """An app to run conversations through: ``post``/``get`` are HTTP calls with the admin key."""

    post: Callable[[str, dict[str, Any]], Any]
    get: Callable[[str, dict[str, Any]], Any]


def _check(response: Any, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body


def active_texts(run: Run, subject: str) -> list[str]:
    response = run.get("/v1/memories", {"subject": subject, "limit": 200})
    if response.status_code == 404:  # nothing was ever written for the subject
        return []
    page = _check(response, 200)
    return sorted(m["text"] for m in page["items"] if m.get("status", "active") == "active")


def run_conversation(run: Run, conversation: Conversation, subject: str) -> dict[str, Any]:
    for text in conversation.memories:
        _check(run.post("/v1/memories", {"subject": subject, "text": text}), 201)
    events: list[list[str]] = []
    for turn in conversation.turns:
        out = _check(run.post("/v1/memories/ingest", {"subject": subject, "messages": turn}), 200)
        events.append([f"{e['event']} {e['text']}" for e in out["events"]])
    actual = active_texts(run, subject)
    verdict = judge(conversation, actual)
    return {"id": conversation.id, "category": conversation.category, **verdict, "actual": actual,
            "expect": conversation.expect, "forbid": conversation.forbid, "events": events}


def run_all(run: Run, conversations: Sequence[Conversation], *, prefix: str = "wb") -> list[dict[str, Any]]:
    return [run_conversation(run, c, f"{prefix}-{i}") for i, c in enumerate(conversations)]


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_category: dict[str, list[bool]] = {}
    for r in results:
        by_category.setdefault(r["category"], []).append(bool(r["ok"]))
    right = sum(r["ok"] for r in results)
    return {
        "conversations": len(results),
        "right": right,
        "share_right": round(right / len(results), 3) if results else None,
        "target": TARGET,
        "per_category": {
            k: {"n": len(v), "share_right": round(sum(v) / len(v), 3)} for k, v in sorted(by_category.items())
        },
        "failing": [
            {k: r[k] for k in ("id", "category", "expect", "forbid", "actual", "missing", "extra", "forbidden",
                               "events")}
            for r in results
            if not r["ok"]
        ],
    }


# ---- the app -----------------------------------------------------------------------------------------


def migrated_db(folder: Path) -> Path:
    from memory_store import StoreSettings
    from memory_store.db import make_engine
    from memory_store.migrate import upgrade

    engine = make_engine(StoreSettings(data_dir=folder, database_url=None))
    upgrade(engine)
    engine.dispose()
    return folder / "sealmem.db"


@contextmanager
def started_app(
    folder: Path, *, embedder: str = "hashing", distiller: Any = None, migrated: Path | None = None
) -> Iterator[Run]:
    """The real app in process (``tests.harness.Harness.start``), a tenant and its admin key."""
    from tests.harness import Harness, bearer, fresh_data_dir, make_settings

    migrated = migrated or migrated_db(folder / "migrated")
    data_dir = fresh_data_dir(folder / f"data-{time.monotonic_ns()}", migrated)
    settings = make_settings(data_dir, chat_enabled=False)
    chosen = None
    if embedder == "hashing":
        from memory_store.embedder import HashingEmbedder

        chosen = HashingEmbedder()
    elif embedder == "onnx":
        from service.app import embedder_from_settings

        chosen = embedder_from_settings(settings)
    else:
        raise ValueError(f"unknown embedder {embedder!r}")
    with Harness.start(settings, embedder=chosen, distiller=distiller) as harness:
        tenant = harness.tenant("bench")
        headers = bearer(tenant.admin)
        yield Run(
            post=lambda path, body: harness.client.post(path, json=body, headers=headers),
            get=lambda path, params: harness.client.get(path, params=params, headers=headers),
        )


def run_rules(conversations: Sequence[Conversation], *, embedder: str = "hashing") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sealmem-wbq-") as tmp:
        started = time.perf_counter()
        with started_app(Path(tmp), embedder=embedder) as run:
            results = run_all(run, conversations)
        out = summarise(results)
        out["seconds"] = round(time.perf_counter() - started, 2)
        return out


# ---- the LLM path's plumbing -------------------------------------------------------------------------


def rules_answer(body: dict[str, Any]) -> str:
    """The scripted server's answer to a structured extraction request: what the rules extract, as JSON."""
    from service.chat.distill import RuleDistiller

    message = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    statements = RuleDistiller().distill_sync(message)
    return json.dumps({"statements": [{"text": s.text, "kind": s.kind} for s in statements]})


def run_llm_plumbing(conversations: Sequence[Conversation], *, embedder: str = "hashing") -> dict[str, Any]:
    """``conversations`` with ``LLMDistiller`` on the ``openai`` backend against the scripted server."""
    from service.chat.distill import LLMDistiller
    from service.llm.openai_backend import OpenAIBackend
    from tests.chat.fakes import serve
    from tests.chat.openai_server import Script, fake_openai_app

    script = Script(reply=rules_answer)
    with tempfile.TemporaryDirectory(prefix="sealmem-wbq-llm-") as tmp, ExitStack() as stack:
        url = stack.enter_context(serve(fake_openai_app(script)))
        backend = OpenAIBackend(base_url=url + "/v1", model="tiny-remote", max_retries=0)
        distiller = LLMDistiller(backend)
        run = stack.enter_context(started_app(Path(tmp), embedder=embedder, distiller=distiller))
        results = run_all(run, conversations, prefix="llm")
        requests = list(script.requests)
        used = dict(distiller.stats)
        # an unusable answer (valid JSON, wrong shape): the rules take over, and it is counted
        script.reply = lambda body: '{"statements": "none"}'
        before = distiller.stats["fallbacks"]
        unusable = run_all(run, conversations[:1], prefix="llm-unusable")[0]
        fallback = {"fallbacks_counted": distiller.stats["fallbacks"] - before, "state_right": unusable["ok"]}
    with_schema = [
        r for r in requests
        if (r.get("response_format") or {}).get("type") == "json_schema"
        and isinstance(r["response_format"].get("json_schema", {}).get("schema"), dict)
    ]
    summary = summarise(results)
    return {
        "conversations": len(results),
        "requests": len(requests),
        "requests_with_json_schema": len(with_schema),
        "streamed_requests": sum(bool(r.get("stream")) for r in requests),
        "structured_answers_used": used["structured"],
        "fallbacks_to_rules": used["fallbacks"],
        "share_right": summary["share_right"],
        "failing": [f["id"] for f in summary["failing"]],
        "unusable_answer": fallback,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", choices=["hashing", "onnx"], default="hashing")
    parser.add_argument("--llm-plumbing", type=int, default=8, metavar="N",
                        help="conversations run with the LLM distiller against the scripted server (0: none)")
    parser.add_argument("--only", default="", help="comma-separated conversation ids")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    conversations = load()
    if args.only:
        wanted = set(args.only.split(","))
        conversations = [c for c in conversations if c.id in wanted]
    out: dict[str, Any] = {"distiller": "rules", "embedder": args.embedder, **run_rules(conversations,
                                                                                      embedder=args.embedder)}
    if args.llm_plumbing:
        # every category, in file order: a spread of the conversations
        step = max(1, len(conversations) // args.llm_plumbing)
        picked = conversations[::step][: args.llm_plumbing]
        out["llm_plumbing"] = run_llm_plumbing(picked, embedder=args.embedder)
    text = json.dumps(out, indent=1, ensure_ascii=False)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)
    return 0 if out["share_right"] is not None and out["share_right"] >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
