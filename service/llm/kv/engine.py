"""Public entry point of KV injection: memories enter attention as precomputed keys/values.

The chat loop renders its prompt as three text pieces (see ``split_chat_prompt``)::

    prefix   = chat-template text up to where memories go (keep it stable: it is the shared "sink" prefix
               every memory is encoded after, and part of the cache key)
    memories = one text per retrieved memory, best first (e.g. "- I have a dog named Biscuit.\n")
    suffix   = the rest: end of the system message, the working-memory turns, the user message and the
               assistant header

and calls ``KVEngine.generate(request, injection="kv")`` (or ``stream``). Per request the engine looks each
memory up in the per-memory cache (RAM LRU, then the sealed disk tier when a data key is given), encodes the
misses once after the prefix, assembles a fresh cache in the requested layout and prefills only the suffix.
Models the code does not support (RoPE scaling, other architectures) fall back to prompt injection and say so
in ``KVResult.warnings``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import DynamicCache

from service.errors import MessageTooLong
from service.llm.kv.assemble import AssembledCache, BaseLayout, PrefixKV, assemble
from service.llm.kv.memory_cache import EncodedMemory, EncodingContext, MemoryKey, MemoryKVCache
from service.llm.kv.rotary import Rope, unsupported_reason
from service.llm.kv.settings import KVSettings, Layout
from service.llm.loader import LoadedModel

log = logging.getLogger("sealmem.llm.kv")

Injection = Literal["kv", "prompt", "none"]
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class KVContextTooLongError(MessageTooLong):
    """The assembled context plus generation would exceed the model's position budget (422)."""


@dataclass(frozen=True)
class MemoryText:
    """One retrieved memory: its id, the exact text injected, and a version that changes when it changes."""

    id: str
    text: str
    version: str


@dataclass(frozen=True)
class KVRequest:
    tenant_id: str
    subject: str  # the subject's name, as API callers give it: part of every cache key
    prefix: str
    memories: Sequence[MemoryText]
    suffix: str
    data_key: bytes | None = field(default=None, repr=False)  # subject's data key: enables the sealed disk tier


@dataclass
class KVTimings:
    encode_s: float = 0.0  # encoding cache misses (prefix and memories); not part of TTFT
    assemble_s: float = 0.0  # cache assembly from stored keys/values (kv) - 0 for prompt/none
    prefill_s: float = 0.0  # prefill of what is not cached, up to the first token's logits
    decode_s: float = 0.0

    @property
    def ttft_s(self) -> float:
        """Time to first token with every memory already encoded: assembly + prefill."""
        return self.assemble_s + self.prefill_s


@dataclass
class KVResult:
    text: str
    token_ids: list[int]
    injection: Injection  # what actually ran ("prompt" after a fallback)
    layout: Layout | None  # None unless injection == "kv"
    finish_reason: Literal["stop", "length"]
    warnings: list[str]
    timings: KVTimings
    prefill_tokens: int  # tokens run through the model before the first generated token
    cache_tokens: int  # tokens served from precomputed keys/values (prefix + KV memories)
    memory_tokens: int  # tokens of all injected memories (text or KV)
    encoded_memories: int  # cache misses encoded by this request
    first_logits: torch.Tensor | None = None  # float32 logits of the first generated token, when asked


@dataclass(frozen=True)
class _Plan:
    """What a request runs: the injection after any fallback, its layout (KV only) and the memories it injects."""

    injection: Injection
    layout: Layout | None
    memories: list[MemoryText]
    warnings: list[str]


@dataclass(frozen=True)
class _Context:
    """The model state before decoding: a cache, and the token ids still to prefill after it."""

    cache: Any  # transformers DynamicCache (mutated by the forward passes)
    start_pos: int  # RoPE position of feed[0]
    feed: list[int]
    cache_tokens: int  # tokens served from precomputed keys/values
    memory_tokens: int  # tokens of all injected memories (text or KV)
    encoded_memories: int  # cache misses encoded for this context


@dataclass(frozen=True)
class _Decoded:
    token_ids: list[int]
    text: str
    finish_reason: Literal["stop", "length"]
    first_logits: torch.Tensor | None


class KVStream:
    """Iterate for text deltas; ``result`` is set once the iteration is exhausted."""

    def __init__(self, gen: Iterator[str], holder: list[KVResult]) -> None:
        self._gen = gen
        self._holder = holder

    def __iter__(self) -> Iterator[str]:
        return self._gen

    @property
    def result(self) -> KVResult:
        if not self._holder:
            raise RuntimeError("the stream has not finished")
        return self._holder[0]


def split_chat_prompt(
    tokenizer: Any,
    *,
    system_head: str,
    system_tail: str,
    turns: Sequence[dict[str, str]],
    user_message: str,
) -> tuple[str, str]:
    """Render the chat template with the memories' slot between ``system_head`` and ``system_tail``.

    Returns ``(prefix, suffix)``: the template text before and after the slot, so that
    ``prefix + "".join(memory texts) + suffix`` is exactly the prompt the template would render.
    """
    marker = "\u2063SEALMEM-MEMORY-SLOT\u2063"
    messages = [
        {"role": "system", "content": system_head + marker + system_tail},
        *turns,
        {"role": "user", "content": user_message},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str) or text.count(marker) != 1:
        raise ValueError("the chat template did not render the memory slot exactly once")
    prefix, suffix = text.split(marker)
    return prefix, suffix


def model_fingerprint(loaded: LoadedModel) -> str:
    """Identify the model's weights and config cheaply (config, dtype and a sample of two weight tensors)."""
    h = hashlib.sha256()
    h.update(loaded.name.encode())
    h.update(loaded.model.config.to_json_string(use_diff=False).encode())
    h.update(str(loaded.dtype).encode())
    with torch.no_grad():
        for param in (loaded.model.get_input_embeddings().weight, next(iter(loaded.model.parameters()))):
            sample = param.detach().flatten()[:65536].to("cpu", torch.float32)
            h.update(sample.numpy().tobytes())
            h.update(str(float(param.detach().float().sum())).encode())
    return h.hexdigest()[:24]


class KVEngine:
    """KV injection on a loaded local model. Thread-safe for concurrent ``generate`` calls."""

    def __init__(
        self, loaded: LoadedModel, settings: KVSettings | None = None, cache: MemoryKVCache | None = None
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.settings = settings or KVSettings()
        self.config = self.model.config
        self.device = torch.device(loaded.device)
        self.dtype: torch.dtype = loaded.dtype
        self.unsupported_reason = unsupported_reason(self.config)
        self.rope = Rope.from_config(self.config) if self.unsupported_reason is None else None
        self.storage_dtype = (
            self.dtype if self.settings.storage_dtype == "model" else _DTYPES[self.settings.storage_dtype]
        )
        self.fingerprint = model_fingerprint(loaded)
        if cache is None:
            from service.llm.kv.memory_cache import EncryptedKVDisk

            disk = EncryptedKVDisk(self.settings.disk_dir) if self.settings.disk_dir else None
            cache = MemoryKVCache(max_bytes=self.settings.ram_max_bytes, disk=disk)
        cache.set_model(self.fingerprint)
        self.cache = cache
        self._prefixes: OrderedDict[tuple[int, ...], PrefixKV] = OrderedDict()
        self._lock = threading.Lock()
        self._stop_ids = self._collect_stop_ids()

    # ------------------------------------------------------------------ facts
    @property
    def supported(self) -> bool:
        return self.unsupported_reason is None

    @property
    def bytes_per_token(self) -> int:
        """Bytes of stored keys+values per memory token: 2 x layers x kv_heads x head_dim x dtype size."""
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        elem = torch.tensor([], dtype=self.storage_dtype).element_size()
        return int(2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * elem)

    def _collect_stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.config):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, list | tuple):
                ids.update(int(i) for i in eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        for special in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return ids

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    # ------------------------------------------------------- invalidation API
    def invalidate_memory(self, tenant_id: str, subject: str, memory_id: str) -> None:
        """Call on memory update or delete (``subject``: the name used in ``KVRequest.subject``)."""
        self.cache.invalidate(tenant_id, subject, memory_id)

    def forget_subject(self, tenant_id: str, subject: str) -> None:
        """Call when a subject is forgotten (``subject``: the name used in ``KVRequest.subject``)."""
        self.cache.forget_subject(tenant_id, subject)

    # --------------------------------------------------------------- encoding
    def prefix_kv(self, prefix: str) -> PrefixKV:
        """The shared prefix's (and the encoding lead's) keys/values, memoised per distinct prefix."""
        prefix_ids = self.tokenize(prefix)
        if not prefix_ids:
            raise ValueError("the shared prefix must not be empty (it is the attention sink)")
        ids = tuple(prefix_ids + (self.tokenize(self.settings.encode_lead) if self.settings.encode_lead else []))
        with self._lock:
            hit = self._prefixes.get(ids)
            if hit is not None and hit.prefix_tokens == len(prefix_ids):
                self._prefixes.move_to_end(ids)
                return hit
        with torch.inference_mode():
            out = self.model(torch.tensor([ids], device=self.device), use_cache=True)
        layers = out.cache.layers
        keys = torch.stack([layer.keys[0] for layer in layers]).to(self.storage_dtype).contiguous()
        values = torch.stack([layer.values[0] for layer in layers]).to(self.storage_dtype).contiguous()
        fp = hashlib.sha256(repr((len(prefix_ids), ids)).encode()).hexdigest()[:16]
        entry = PrefixKV(keys=keys, values=values, token_ids=ids, prefix_tokens=len(prefix_ids), fingerprint=fp)
        with self._lock:
            self._prefixes[ids] = entry
            while len(self._prefixes) > self.settings.prefix_cache_entries:
                self._prefixes.popitem(last=False)
        return entry

    def context(self, prefix: PrefixKV) -> EncodingContext:
        return EncodingContext(self.fingerprint, prefix.fingerprint, str(self.storage_dtype).removeprefix("torch."))

    def encode_texts(self, prefix: PrefixKV, texts: Sequence[str]) -> list[EncodedMemory]:
        """Encode ``texts`` independently, each after the prefix and encoding lead (batched, right-padded:
        causal attention means a real token never sees the padding after it)."""
        token_lists = [self.tokenize(t) for t in texts]
        if any(not ids for ids in token_lists):
            raise ValueError("a memory text tokenizes to nothing")
        out: list[EncodedMemory | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(token_lists[i]))
        bs = self.settings.encode_batch_size
        p = prefix.memory_start
        pk = prefix.keys.to(self.device, self.dtype)
        pv = prefix.values.to(self.device, self.dtype)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for lo in range(0, len(order), bs):
            idx = order[lo : lo + bs]
            width = max(len(token_lists[i]) for i in idx)
            batch = torch.full((len(idx), width), int(pad), dtype=torch.long)
            for row, i in enumerate(idx):
                batch[row, : len(token_lists[i])] = torch.tensor(token_lists[i])
            cache = DynamicCache(
                ddp_cache_data=[
                    (
                        pk[layer].unsqueeze(0).expand(len(idx), -1, -1, -1),
                        pv[layer].unsqueeze(0).expand(len(idx), -1, -1, -1),
                    )
                    for layer in range(pk.shape[0])
                ],
                config=self.config,
            )
            positions = torch.arange(p, p + width, device=self.device).unsqueeze(0).expand(len(idx), -1)
            with torch.inference_mode():
                result = self.model(batch.to(self.device), cache=cache, position_ids=positions, use_cache=True)
            ks = torch.stack([layer.keys[:, :, p:] for layer in result.cache.layers])  # [L, B, H, T, D]
            vs = torch.stack([layer.values[:, :, p:] for layer in result.cache.layers])
            for row, i in enumerate(idx):
                n = len(token_lists[i])
                out[i] = EncodedMemory(
                    keys=ks[:, row, :, :n].to("cpu", self.storage_dtype).contiguous(),
                    values=vs[:, row, :, :n].to("cpu", self.storage_dtype).contiguous(),
                    token_ids=tuple(token_lists[i]),
                    start=p,
                )
        return [m for m in out if m is not None]

    def encoded_memories(
        self, request: KVRequest, prefix: PrefixKV, memories: Sequence[MemoryText]
    ) -> tuple[list[EncodedMemory], int]:
        """Look ``memories`` up in the cache and encode the misses; returns them in order and the miss count.

        The cache version is the caller's ``version`` plus a hash of the exact text, so a changed text can never
        be served stale keys/values even if the caller forgot to bump the version or to invalidate.
        """
        ctx = self.context(prefix)
        versions = [f"{m.version}/{hashlib.sha256(m.text.encode()).hexdigest()[:16]}" for m in memories]
        keys = [MemoryKey(request.tenant_id, request.subject, m.id) for m in memories]
        found = [self.cache.get(k, v, ctx, request.data_key) for k, v in zip(keys, versions, strict=True)]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            fresh = self.encode_texts(prefix, [memories[i].text for i in missing])
            for i, enc in zip(missing, fresh, strict=True):
                found[i] = enc
                self.cache.put(keys[i], versions[i], ctx, enc, request.data_key)
        return [f for f in found if f is not None], len(missing)

    def warm(self, request: KVRequest) -> tuple[int, float]:
        """Encode every memory of ``request`` not yet cached (e.g. right after a memory is written)."""
        t0 = time.perf_counter()
        prefix = self.prefix_kv(request.prefix)
        _, misses = self.encoded_memories(request, prefix, request.memories)
        return misses, time.perf_counter() - t0

    # ------------------------------------------------------------- generation
    def generate(
        self,
        request: KVRequest,
        *,
        injection: Injection = "kv",
        layout: Layout | None = None,
        max_new_tokens: int = 128,
        should_stop: Callable[[str], bool] | None = None,
        return_first_logits: bool = False,
    ) -> KVResult:
        stream = self.stream(
            request,
            injection=injection,
            layout=layout,
            max_new_tokens=max_new_tokens,
            should_stop=should_stop,
            return_first_logits=return_first_logits,
        )
        for _ in stream:
            pass
        return stream.result

    def stream(
        self,
        request: KVRequest,
        *,
        injection: Injection = "kv",
        layout: Layout | None = None,
        max_new_tokens: int = 128,
        should_stop: Callable[[str], bool] | None = None,
        return_first_logits: bool = False,
    ) -> KVStream:
        """Greedy generation, yielding text deltas. ``injection``: "kv" (memories as keys/values), "prompt"
        (memories as prompt text, same tokenization) or "none" (no memories)."""
        holder: list[KVResult] = []
        gen = self._run(request, injection, layout, max_new_tokens, should_stop, return_first_logits, holder)
        return KVStream(gen, holder)

    def _run(
        self,
        request: KVRequest,
        injection: Injection,
        layout: Layout | None,
        max_new_tokens: int,
        should_stop: Callable[[str], bool] | None,
        return_first_logits: bool,
        holder: list[KVResult],
    ) -> Iterator[str]:
        """Plan, build the model context, decode; yields text deltas and appends the result to ``holder``."""
        plan = self._plan(request, injection, layout)
        timings = KVTimings()
        context = self._build_context(request, plan, timings)
        self._check_budget(context, max_new_tokens)
        decoded = yield from self._decode(context, max_new_tokens, should_stop, return_first_logits, timings)
        holder.append(
            KVResult(
                text=decoded.text,
                token_ids=decoded.token_ids,
                injection=plan.injection,
                layout=plan.layout,
                finish_reason=decoded.finish_reason,
                warnings=plan.warnings,
                timings=timings,
                prefill_tokens=len(context.feed),
                cache_tokens=context.cache_tokens,
                memory_tokens=context.memory_tokens,
                encoded_memories=context.encoded_memories,
                first_logits=decoded.first_logits,
            )
        )

    def _plan(self, request: KVRequest, injection: Injection, layout: Layout | None) -> _Plan:
        """Resolve what runs: KV on an unsupported model falls back to prompt injection (with a warning); the
        layout applies to KV injection only; "none" injects no memories."""
        warnings: list[str] = []
        if injection == "kv" and not self.supported:
            warnings.append(f"KV injection unavailable, used prompt injection: {self.unsupported_reason}")
            log.warning("%s", warnings[-1])
            injection = "prompt"
        return _Plan(
            injection=injection,
            layout=(layout or self.settings.layout) if injection == "kv" else None,
            memories=list(request.memories) if injection != "none" else [],
            warnings=warnings,
        )

    def _build_context(self, request: KVRequest, plan: _Plan, timings: KVTimings) -> _Context:
        """The cache and the token ids to prefill after it, for ``plan``'s injection and layout."""
        if plan.layout is None:
            return self._text_context(request, plan.memories)
        return self._kv_context(request, plan.memories, plan.layout, timings)

    def _text_context(self, request: KVRequest, memories: Sequence[MemoryText]) -> _Context:
        """Prompt injection (or none): an empty cache; prefix, memory texts and suffix are all prefilled."""
        mem_ids = [self.tokenize(m.text) for m in memories]
        feed = self.tokenize(request.prefix) + [t for ids in mem_ids for t in ids] + self.tokenize(request.suffix)
        return _Context(
            cache=DynamicCache(config=self.config),
            start_pos=0,
            feed=feed,
            cache_tokens=0,
            memory_tokens=sum(len(ids) for ids in mem_ids),
            encoded_memories=0,
        )

    def _kv_context(
        self, request: KVRequest, memories: Sequence[MemoryText], layout: Layout, timings: KVTimings
    ) -> _Context:
        """KV injection: the prefix and the memories' stored keys/values assembled into a cache in ``layout``
        (``hybrid``: the top memories stay text, prefilled before the suffix). Sets the encode/assemble timings."""
        t0 = time.perf_counter()
        suffix_ids = self.tokenize(request.suffix)
        prefix = self.prefix_kv(request.prefix)
        if layout == "hybrid":
            n_text = min(self.settings.hybrid_text_memories, len(memories))
            text_mems, kv_mems = memories[:n_text], memories[n_text:]
            base: BaseLayout = self.settings.hybrid_kv_layout
        else:
            text_mems, kv_mems, base = [], memories, layout
        stored, encoded = self.encoded_memories(request, prefix, kv_mems)
        timings.encode_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        built: AssembledCache = assemble(
            prefix,
            stored,
            layout=base,
            rope=self._rope(),
            dtype=self.dtype,
            device=self.device,
            config=self.config,
            temperature=self.settings.shared_temperature if base == "shared" else 1.0,
        )
        timings.assemble_s = time.perf_counter() - t1
        text_ids = [t for m in text_mems for t in self.tokenize(m.text)]
        return _Context(
            cache=built.cache,
            start_pos=built.next_position,
            feed=text_ids + suffix_ids,
            cache_tokens=built.cache_tokens,
            memory_tokens=sum(m.tokens for m in stored) + len(text_ids),
            encoded_memories=encoded,
        )

    def _check_budget(self, context: _Context, max_new_tokens: int) -> None:
        """Raise ``KVContextTooLongError`` when the context plus ``max_new_tokens`` exceeds the model's positions."""
        budget = getattr(self.config, "max_position_embeddings", None)
        end = context.start_pos + len(context.feed)
        if budget is not None and end + max_new_tokens > budget:
            raise KVContextTooLongError(f"{end} positions + {max_new_tokens} new tokens exceed the model's {budget}")

    def _decode(
        self,
        context: _Context,
        max_new_tokens: int,
        should_stop: Callable[[str], bool] | None,
        return_first_logits: bool,
        timings: KVTimings,
    ) -> Generator[str, None, _Decoded]:
        """Greedy decoding: prefill ``context.feed`` after its cache, then one token per step until a stop token,
        ``should_stop(text)`` or ``max_new_tokens``. Yields text deltas (never a partial UTF-8 character); sets
        the prefill/decode timings and returns what was generated."""
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        t_prefill = time.perf_counter()
        t_decode = t_prefill
        generated: list[int] = []
        text = ""
        finish: Literal["stop", "length"] = "length"
        first_logits: torch.Tensor | None = None
        cache = context.cache
        pos = context.start_pos
        step_ids = context.feed
        with torch.inference_mode():
            for step in range(max_new_tokens):
                positions = torch.arange(pos, pos + len(step_ids), device=self.device).unsqueeze(0)
                out = self.model(
                    torch.tensor([step_ids], device=self.device),
                    cache=cache,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,  # only the last position's logits: no vocab projection of the whole prefill
                )
                logits = out.logits[0, -1].float()
                cache = out.cache
                pos += len(step_ids)
                token = int(torch.argmax(logits))
                if step == 0:
                    timings.prefill_s = time.perf_counter() - t_prefill
                    t_decode = time.perf_counter()
                    if return_first_logits:
                        first_logits = logits.detach().to("cpu")
                if token in self._stop_ids:
                    finish = "stop"
                    break
                generated.append(token)
                new_text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if not new_text.endswith("\ufffd") and len(new_text) > len(text):
                    delta, text = new_text[len(text) :], new_text
                    yield delta
                if should_stop is not None and should_stop(text):
                    finish = "stop"
                    break
                step_ids = [token]
        timings.decode_s = time.perf_counter() - t_decode
        final = self.tokenizer.decode(generated, skip_special_tokens=True)
        if len(final) > len(text) and final.startswith(text):
            yield final[len(text) :]
        return _Decoded(token_ids=generated, text=final, finish_reason=finish, first_logits=first_logits)

    def _rope(self) -> Rope:
        if self.rope is None:  # pragma: no cover - guarded by `supported`
            raise RuntimeError(self.unsupported_reason or "unsupported model")
        return self.rope
