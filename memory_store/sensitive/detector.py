"""Detection of structured sensitive data in free text (issue #17).

A :class:`PresidioDetector` runs Microsoft Presidio's *pattern* recognizers
(regex + checksum validation) on a blank spaCy English pipeline -- tokenizer
only, no NER model, fully offline -- plus the custom recognizers of
:mod:`memory_store.sensitive.recognizers` for secrets.

Emitted types (:data:`ENTITY_TYPES`, in resolution priority order)
-----------------------------------------------------------------
secrets: PRIVATE_KEY, JWT, API_KEY, PASSWORD;
PII: EMAIL_ADDRESS, CREDIT_CARD (Luhn), IBAN_CODE (mod-97), CRYPTO (Bitcoin
base58/bech32 checksums, Ethereum ``0x`` + 40 hex), US_ITIN, US_SSN,
UK_NINO, ES_NIE, ES_NIF, IT_FISCAL_CODE, FI_PERSONAL_IDENTITY_CODE (check
characters), IP_ADDRESS (v4 and v6), PHONE_NUMBER (libphonenumber, see
:class:`~memory_store.sensitive.recognizers.FormatAwarePhoneRecognizer`).

Left out on purpose
-------------------
* Names, places, organisations (NER): no NER model is shipped; the spaCy
  pipeline is ``spacy.blank("en")``.
* ``DATE_TIME``, ``URL``, ``UUID``, ``MAC_ADDRESS``, ``NRP``: not sensitive on
  their own in chat memories, or far too many false positives (every date).
* ``US_BANK_NUMBER``, ``US_DRIVER_LICENSE``, ``US_PASSPORT``,
  ``MEDICAL_LICENSE``, ``ABA_ROUTING_NUMBER``, UK/IT/ES passports and driving
  licences, vehicle plates, postcodes: bare digit/letter runs without a
  checksum, indistinguishable from order, invoice and tracking numbers.
* ``UK_NHS``, ``IN_AADHAAR``, ``CA_SIN``, ``AU_TFN``, ``SE_PERSONNUMMER``,
  ``PL_PESEL``, ``TR_NATIONAL_ID`` and similar: their checksums accept ~1 in
  10 random numbers of the right length, so 10-12 digit order numbers and
  (worse) phone numbers would be reported with score 1.0; they cannot meet
  the 0.95 precision target without requiring a context word every time.
* Git commit hashes, sha256 digests, UUIDs: not secrets by themselves; they
  are reported as API_KEY only right after a secret keyword ("token: ...").

Behaviour
---------
``detect`` returns findings sorted by start, non-overlapping (overlaps are
resolved by higher score, then longer span, then :data:`ENTITY_TYPES` order),
with spans trimmed of surrounding whitespace and punctuation that is not part
of the value.  Placeholders ``<TYPE>`` / ``<TYPE_N>`` for TYPE in
:data:`ENTITY_TYPES` are never reported, so detection on masked text is a
no-op.  Text that cannot contain any supported value (no digit, no ``@``, no
secret keyword or key prefix, no PEM header, no IPv6-like group) skips
Presidio entirely.

Offline: Presidio's e-mail validation uses ``tldextract``; the detector gives
its e-mail recognizer a private ``TLDExtract(suffix_list_urls=(),
cache_dir=None)`` (bundled public-suffix snapshot, no HTTP, no cache files).
No global is patched.

Cost: importing Presidio + spaCy takes ~5 s and is deferred to the first
construction (``import memory_store.sensitive.detector`` is cheap);
constructing a detector takes well under a second after that.  ``detect`` is
thread-safe: the analyzer, registry, recognizers and spaCy tokenizer are
read-only after construction (regexes are compiled by a warm-up call in
``__init__``), and each call works on its own objects.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "ENTITY_TYPES",
    "Category",
    "Detector",
    "Finding",
    "PresidioDetector",
    "default_detector",
]

Category = Literal["pii", "secret"]

ENTITY_TYPES: dict[str, Category] = {
    "PRIVATE_KEY": "secret",
    "JWT": "secret",
    "API_KEY": "secret",
    "PASSWORD": "secret",
    "EMAIL_ADDRESS": "pii",
    "CREDIT_CARD": "pii",
    "IBAN_CODE": "pii",
    "CRYPTO": "pii",
    "US_ITIN": "pii",
    "US_SSN": "pii",
    "UK_NINO": "pii",
    "ES_NIE": "pii",
    "ES_NIF": "pii",
    "IT_FISCAL_CODE": "pii",
    "FI_PERSONAL_IDENTITY_CODE": "pii",
    "IP_ADDRESS": "pii",
    "PHONE_NUMBER": "pii",
}

#: Scores are Presidio's: checksum-validated values score 1.0, pattern-only
#: values 0.5-0.95, a nearby context word adds 0.35.  0.4 keeps everything
#: with a distinctive format and drops bare digit runs (phone-like 0.3, weak
#: SSN 0.05) unless a context word is near.
DEFAULT_SCORE_THRESHOLD = 0.4

_PRIORITY = {name: i for i, name in enumerate(ENTITY_TYPES)}

_PLACEHOLDER = re.compile(
    r"<(?:" + "|".join(ENTITY_TYPES) + r")(?:_[1-9][0-9]*)?>"
)

# Anything a supported value needs at least one of.  Types that can occur
# without a digit: EMAIL (@), PASSWORD and generic API_KEY (keyword), prefixed
# keys (prefix), PRIVATE_KEY (BEGIN), JWT (eyJ), IPv6 (hex groups and ':').
_PREFILTER = re.compile(
    r"[0-9@]|-----BEGIN|eyJ|::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:"
    r"|(?i:pass|pwd|pw\b|pin\b|wi-?fi|key|token|secret|bearer)"
    r"|sk-|sk_|rk_|pk_|gh[pousr]_|github_pat_|glpat-|xox[abposr]-|AKIA|ASIA|AIza"
    r"|hf_|npm_|SG\.|SK[0-9a-fA-F]"
)

_TRIM_LEAD = " \t\r\n\"'`([{<\u201c\u2018"
_TRIM_TRAIL = " \t\r\n.,;:!?\"'`)]}>\u201d\u2019"
_TRIM_TRAIL_PW = " \t\r\n.,;:\"'`)]}>\u201d\u2019"  # keeps a final ! or ?
_PAIRS = {")": "(", "]": "[", "}": "{", ">": "<"}
_DECIMAL = re.compile(r"\d+[.,]\d+")
_IBAN_SHAPE = re.compile(r"\b[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?\b")
_VERSION_BEFORE = re.compile(r"(?i:\b(?:v|version|ver|build|release|firmware)\s*)$")


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected value: ``text[start:end]`` is the value."""

    entity_type: str
    start: int
    end: int
    score: float


class Detector(Protocol):
    """Anything that finds sensitive values in text."""

    def detect(self, text: str) -> list[Finding]: ...


def _trim(text: str, start: int, end: int, entity_type: str) -> tuple[int, int]:
    if entity_type == "PRIVATE_KEY":
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        return start, end
    trail = _TRIM_TRAIL if entity_type != "PASSWORD" else _TRIM_TRAIL_PW
    while start < end:
        c = text[start]
        if c.isspace() or (c in _TRIM_LEAD and not _closes(text[start + 1 : end], c)):
            start += 1
        else:
            break
    while end > start:
        c = text[end - 1]
        if c.isspace() or (
            c in trail and not (c in _PAIRS and _PAIRS[c] in text[start : end - 1])
        ):
            end -= 1
        else:
            break
    return start, end


def _closes(rest: str, opener: str) -> bool:
    closer = {"(": ")", "[": "]", "{": "}", "<": ">"}.get(opener)
    return closer is not None and closer in rest


class PresidioDetector:
    """Presidio pattern recognizers on a blank spaCy pipeline; see module doc."""

    def __init__(self, *, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> None:
        self._threshold = score_threshold
        self._entities = list(ENTITY_TYPES)
        self._engine: AnalyzerEngine = _build_engine()
        # Warm-up: compiles every pattern's regex and loads the TLD snapshot
        # now, so concurrent first calls do not race on lazy initialisation.
        self._engine.analyze(
            text=(
                "warm-up: +44 20 7946 0958, mail a.b@example.co.uk, card "
                "4111 1111 1111 1111, password: x9, token abc, 10.0.0.1 ::1"
            ),
            language="en",
            entities=self._entities,
        )

    @property
    def score_threshold(self) -> float:
        return self._threshold

    def detect(self, text: str) -> list[Finding]:
        if not text or _PREFILTER.search(text) is None:
            return []
        results = self._engine.analyze(
            text=text,
            language="en",
            entities=self._entities,
            score_threshold=self._threshold,
        )
        masked = [m.span() for m in _PLACEHOLDER.finditer(text)] if "<" in text else []
        candidates: list[Finding] = []
        for r in results:
            etype = r.entity_type
            if etype not in ENTITY_TYPES or r.score < self._threshold:
                continue
            start, end = _trim(text, r.start, r.end, etype)
            if start >= end:
                continue
            if any(s < end and start < e for s, e in masked):
                continue
            if not _plausible(text, start, end, etype):
                continue
            candidates.append(Finding(etype, start, end, round(float(r.score), 4)))
        candidates.sort(key=lambda f: (-f.score, -(f.end - f.start), _PRIORITY[f.entity_type], f.start))
        chosen: list[Finding] = []
        for f in candidates:
            if all(f.end <= c.start or c.end <= f.start for c in chosen):
                chosen.append(f)
        chosen.sort(key=lambda f: f.start)
        return chosen


def _plausible(text: str, start: int, end: int, etype: str) -> bool:
    value = text[start:end]
    if etype == "US_SSN":
        # 9xx area numbers are never issued as SSNs (they are ITINs or invalid).
        digits = [c for c in value if c.isdigit()]
        return bool(digits) and digits[0] != "9"
    if etype == "IP_ADDRESS" and "." in value and ":" not in value:
        # "v1.2.3.4", "version 10.0.0.1", "1.2.3.4.5" are versions, not hosts.
        if _VERSION_BEFORE.search(text, 0, start) is not None:
            return False
        before = text[start - 1] if start > 0 else " "
        after = text[end : end + 2]
        if before in ".-" or (after[:1] == "." and after[1:2].isdigit()):
            return False
    if etype == "PHONE_NUMBER":
        if _DECIMAL.fullmatch(value):
            return False  # "37.3933", a coordinate or measurement
        for m in _IBAN_SHAPE.finditer(text, max(0, start - 40), min(len(text), end + 40)):
            if m.start() <= start and end <= m.end():
                return False  # digits inside an IBAN-shaped string (bad checksum)
    return True


def _build_engine() -> AnalyzerEngine:
    # Heavy imports deferred to first construction (~5 s for Presidio+spaCy).
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
    from presidio_analyzer.nlp_engine import NlpArtifacts, SlimSpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EsNieRecognizer,
        EsNifRecognizer,
        FiPersonalIdentityCodeRecognizer,
        IbanRecognizer,
        IpRecognizer,
        ItFiscalCodeRecognizer,
        UkNinoRecognizer,
        UsItinRecognizer,
        UsSsnRecognizer,
    )

    from memory_store.sensitive.recognizers import (
        ApiKeyRecognizer,
        EthAddressRecognizer,
        FormatAwarePhoneRecognizer,
        JwtRecognizer,
        OfflineEmailRecognizer,
        PasswordRecognizer,
        PrivateKeyRecognizer,
    )

    class BlankEnglishNlpEngine(SlimSpacyNlpEngine):
        """Presidio's slim (no-NER) engine on ``spacy.blank("en")``.

        Nothing is downloaded or loaded from disk.  A blank pipeline has no
        lemmatizer, so the lower-cased token text stands in for the lemma
        (Presidio's context enhancer compares lemmas with context words).
        """

        def __init__(self) -> None:
            super().__init__(
                models=[{"lang_code": "en", "model_name": "blank:en"}],
                auto_download=False,
            )

        def load(self) -> None:
            # Presidio declares ``self.nlp = None`` in __init__, hence the ignore.
            self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]

        def is_stopword(self, word: str, language: str) -> bool:
            # spaCy's stop list contains "call", "me", "my"...: context words
            # are chosen deliberately, so nothing is filtered out.
            return False

        def _doc_to_nlp_artifact(self, doc: Any, language: str) -> NlpArtifacts:
            return NlpArtifacts(
                entities=[],
                tokens=doc,
                tokens_indices=[t.idx for t in doc],
                lemmas=[t.lower_ for t in doc],
                nlp_engine=self,
                language=language,
                scores=[],
            )

    extractor = tldextract.TLDExtract(
        cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True
    )
    recognizers = [
        OfflineEmailRecognizer(extractor),
        FormatAwarePhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        CryptoRecognizer(),
        EthAddressRecognizer(),
        UsSsnRecognizer(),
        UsItinRecognizer(),
        UkNinoRecognizer(),
        EsNifRecognizer(supported_language="en"),
        EsNieRecognizer(supported_language="en"),
        ItFiscalCodeRecognizer(supported_language="en"),
        FiPersonalIdentityCodeRecognizer(supported_language="en"),
        ApiKeyRecognizer(),
        PrivateKeyRecognizer(),
        PasswordRecognizer(),
        JwtRecognizer(),
    ]
    # Case-sensitive matching (Presidio's default adds IGNORECASE, which lets
    # IBAN/NIF/NIE patterns match ordinary lower-case words); patterns that
    # need case-insensitivity carry an inline (?i).
    registry = RecognizerRegistry(
        recognizers=recognizers,
        supported_languages=["en"],
        global_regex_flags=re.DOTALL | re.MULTILINE,
    )
    nlp_engine = BlankEnglishNlpEngine()
    nlp_engine.load()
    # whole-word context matching: the default substring mode lets "tel"
    # match "hotel" and "cc" match "accept".
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=["en"],
        context_aware_enhancer=LemmaContextAwareEnhancer(
            context_matching_mode="whole_word"
        ),
    )


_default: PresidioDetector | None = None
_default_lock = threading.Lock()


def default_detector() -> PresidioDetector:
    """The process-wide detector, built on first use (thread-safe), then reused."""
    global _default
    detector = _default
    if detector is None:
        with _default_lock:
            detector = _default
            if detector is None:
                detector = _default = PresidioDetector()
    return detector
