"""Detection of structured sensitive data in free text (issue #17).

A :class:`PresidioDetector` runs Microsoft Presidio's *pattern* recognizers
(regex + checksum validation) on a blank spaCy English pipeline -- tokenizer
only, no NER model, fully offline -- plus the custom recognizers of
:mod:`memory_store.sensitive.recognizers` for secrets.

Emitted types (:data:`ENTITY_TYPES`, in resolution priority order)
-----------------------------------------------------------------
secrets: PRIVATE_KEY (PEM/OpenSSH blocks, Bitcoin WIF and ``xprv`` keys by
checksum, 64-hex wallet keys after "private key"/"wallet key"/"seed"...),
JWT, API_KEY (incl. Slack/Discord incoming-webhook URLs, reported whole),
PASSWORD (incl. PINs, door/alarm/garage codes, credential pairs and the
password part of ``scheme://user:password@host``);
PII: EMAIL_ADDRESS, CREDIT_CARD (Luhn; Presidio's brands plus Mastercard
2-series BINs 2221-2720), IBAN_CODE (mod-97), CRYPTO (Bitcoin
base58/bech32 checksums, Ethereum ``0x`` + 40 hex), US_ITIN, US_SSN,
UK_NINO, ES_NIE, ES_NIF (also with separators: "67.554.396-S", "44641489 F",
"Y-7573377-C", "X 7056902 L"), IT_FISCAL_CODE, FI_PERSONAL_IDENTITY_CODE
(check characters), IP_ADDRESS (v4 and v6), PHONE_NUMBER (libphonenumber,
see :class:`~memory_store.sensitive.recognizers.FormatAwarePhoneRecognizer`).

Not sensitive by decision (filtered after recognition, see ``_plausible``):
IPv4 documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24),
well-known public DNS resolvers (8.8.8.8, 1.1.1.1, 9.9.9.9, ...), subnet
masks (255.255.255.0), public addresses with two zero octets ("120.0.0.0",
"2.0.0.1": versions or networks) and dotted numbers after a version word or
product name with up to three filler words ("Chrome is on 122.0.6261.94",
"updated to 2.0.0.1", "at least 120.0.0.0").  Private LAN addresses (10/8,
172.16/12, 192.168/16) stay IP_ADDRESS unless directly after "v"/"version"/
"build"/"release"/"firmware"; the IPv6 documentation prefix 2001:db8::/32 is
still reported.  PHONE_NUMBER excludes dotted dates (03.11.2024, 3.11.24,
2024.03.11), ZIP+4 codes (94103-1234), dotted numbers with a one-digit group
(versions) and lists of small numbers ("4 8 15 16 23 42").  In a URL's
userinfo the e-mail recognizer's "password@host" match is dropped.

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
  are reported as API_KEY only right after a secret keyword ("token: ..."),
  and a 64-hex value as PRIVATE_KEY only after a wallet-key phrase.
* E-mail addresses spelled out with words ("lena dot fischer at gmx dot
  de", "anna [at] example [dot] org"): out of scope, not detected.
* Wallet seed *phrases* (BIP39 mnemonics: 12/24 ordinary English words) and
  lock combinations ("12-34-56"): not detected (no checksum-free way to tell
  them from prose / other numbers); a quoted value after "passphrase" is.

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

_PLACEHOLDER = re.compile(r"<(?:" + "|".join(ENTITY_TYPES) + r")(?:_[1-9][0-9]*)?>")

# Anything a supported value needs at least one of.  Types that can occur
# without a digit: EMAIL (@), PASSWORD and generic API_KEY (keyword), prefixed
# keys (prefix), PRIVATE_KEY (BEGIN), JWT (eyJ), IPv6 (hex groups and ':').
_PREFILTER = re.compile(
    r"[0-9@]|-----BEGIN|eyJ|::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:"
    r"|(?i:pass|pwd|pw\b|pin\b|wi-?fi|key|token|secret|bearer|seed|code\b|cred|log-?in|sign-?in)"
    r"|sk-|sk_|rk_|pk_|gh[pousr]_|github_pat_|glpat-|xox[abposr]-|AKIA|ASIA|AIza"
    r"|hf_|npm_|SG\.|SK[0-9a-fA-F]|[xt]prv|://"
)

_TRIM_LEAD = " \t\r\n\"'`([{<\u201c\u2018"
_TRIM_TRAIL = " \t\r\n.,;:!?\"'`)]}>\u201d\u2019"
_TRIM_TRAIL_PW = " \t\r\n.,;:\"'`)]}>\u201d\u2019"  # keeps a final ! or ?
_PAIRS = {")": "(", "]": "[", "}": "{", ">": "<"}
_DECIMAL = re.compile(r"\d+[.,]\d+")
_IBAN_SHAPE = re.compile(r"\b[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?\b")
_VERSION_BEFORE = re.compile(r"(?i:\b(?:v|version|ver|build|release|firmware)\s*)$")
# A version keyword or product name, then up to three filler words:
# "updated to 2.0.0.1", "Chrome is on 122.0.6261.94", "at least 120.0.0.0".
_VERSION_WORDS = (
    r"v|versions?|ver|builds?|releases?|released|firmware|patch(?:ed)?|tag(?:ged)?|bump(?:ed)?"
    r"|updated?|upgraded?|updating|upgrading|kernel|bios|driver|sdk|chrome|chromium|firefox|edge"
    r"|safari|opera|brave|windows|win|macos|ios|ipados|android|ubuntu|debian|fedora|linux"
    r"|python|node|java|npm|pip|app|client|agent|package|library|lib|image"
)
_VERSION_FILLER = (
    r"to|is|was|now|on|at|least|from|of|the|as|tagged|release|version|v|running|still"
    r"|currently|latest|new|stable|beta|its|it|it's|with|and|or"
)
_VERSION_CONTEXT = re.compile(
    r"(?i:\b(?:" + _VERSION_WORDS + r")\b(?:[\s:=,]+(?:" + _VERSION_FILLER + r")\b){0,3}[\s:=]*v?)$"
)
# Dates written with dots: 03.11.2024, 3.11.24, 2024.03.11.
_DOTTED_DATE = re.compile(
    r"(?:0?[1-9]|[12][0-9]|3[01])\.(?:0?[1-9]|1[0-2])\.(?:[0-9]{2}|[12][0-9]{3})"
    r"|[12][0-9]{3}\.(?:0?[1-9]|1[0-2])\.(?:0?[1-9]|[12][0-9]|3[01])"
)
_ZIP4 = re.compile(r"[0-9]{5}-[0-9]{4}")
_DIGIT_GROUPS = re.compile(r"[0-9]+")
# Not personal data: documentation ranges (RFC 5737) and well-known public
# DNS resolvers.
_PUBLIC_RESOLVERS = frozenset({
    "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112",
    "208.67.222.222", "208.67.220.220", "4.2.2.1", "4.2.2.2", "64.6.64.6",
    "2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111",
    "2606:4700:4700::1001", "2620:fe::fe", "2620:fe::9",
})  # fmt: skip
_DOC_NETS_V4 = ("192.0.2.", "198.51.100.", "203.0.113.")
_NETMASK_OCTETS = frozenset({0, 128, 192, 224, 240, 248, 252, 254, 255})
# user:password@host inside a URL: the e-mail recognizer sees "password@host".
_URL_AUTHORITY_BEFORE = re.compile(r"(?i:[a-z][a-z0-9+.\-]*://[^\s/@]*)$")


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
        if c.isspace() or (c in trail and not (c in _PAIRS and _PAIRS[c] in text[start : end - 1])):
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
    if etype == "IP_ADDRESS":
        return _plausible_ip(text, start, end, value)
    if etype == "PHONE_NUMBER":
        return _plausible_phone(text, start, end, value)
    if etype == "EMAIL_ADDRESS" and "://" in text[max(0, start - 200) : start]:
        # "https://user:pass@host": userinfo, not an address (the password
        # part is reported as PASSWORD).
        return _URL_AUTHORITY_BEFORE.search(text, max(0, start - 200), start) is None
    return True


def _plausible_ip(text: str, start: int, end: int, value: str) -> bool:
    if value.lower() in _PUBLIC_RESOLVERS:
        return False
    if ":" in value or "." not in value:
        return True
    # "v1.2.3.4", "version 10.0.0.1", "1.2.3.4.5", "updated to 2.0.0.1" are versions.
    if _VERSION_BEFORE.search(text, 0, start) is not None:
        return False
    if _VERSION_CONTEXT.search(text, max(0, start - 60), start) is not None:
        return False
    before = text[start - 1] if start > 0 else " "
    after = text[end : end + 2]
    if before in ".-" or (after[:1] == "." and after[1:2].isdigit()):
        return False
    if value.startswith(_DOC_NETS_V4):
        return False
    try:
        octets = [int(o) for o in value.split(".")]
    except ValueError:
        return True
    if len(octets) != 4:
        return True
    if octets[0] == 255 and all(o in _NETMASK_OCTETS for o in octets):
        return False  # subnet mask 255.255.255.0
    private = (
        octets[0] in (10, 127)
        or (octets[0] == 172 and 16 <= octets[1] <= 31)
        or (octets[0] == 192 and octets[1] == 168)
    )
    # public address with two zero octets after the first: "120.0.0.0",
    # "2.0.0.1" -- a version or a network, not a host.
    return private or sum(1 for o in octets[1:] if o == 0) < 2


def _plausible_phone(text: str, start: int, end: int, value: str) -> bool:
    if _DECIMAL.fullmatch(value):
        return False  # "37.3933", a coordinate or measurement
    if _DOTTED_DATE.fullmatch(value) or _ZIP4.fullmatch(value):
        return False  # 03.11.2024, 94103-1234
    groups = _DIGIT_GROUPS.findall(value)
    # dotted numbers are phones only when grouped like one ("415.555.2671",
    # "06.12.34.56.78"), not "122.0.6261.94"
    if "." in value and all(c.isdigit() or c == "." for c in value) and any(len(g) == 1 for g in groups):
        return False
    if value[0] not in "+0(" and len(groups) >= 4 and sum(1 for g in groups if len(g) <= 2) >= 3:
        return False  # a list of small numbers: "4 8 15 16 23 42"
    if _VERSION_CONTEXT.search(text, max(0, start - 60), start) is not None and "." in value:
        return False  # "Chrome is on 122.0.6261.94"
    for m in _IBAN_SHAPE.finditer(text, max(0, start - 40), min(len(text), end + 40)):
        if m.start() <= start and end <= m.end():
            return False  # digits inside an IBAN-shaped string (bad checksum)
    return True


def _build_engine() -> AnalyzerEngine:
    # Heavy imports deferred to first construction (~5 s for Presidio+spaCy).
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, Pattern, RecognizerRegistry
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

    extractor = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)
    recognizers = [
        OfflineEmailRecognizer(extractor),
        FormatAwarePhoneRecognizer(),
        CreditCardRecognizer(
            patterns=[
                *CreditCardRecognizer.PATTERNS,
                # Mastercard 2-series (BIN 2221-2720), missing from Presidio's pattern
                Pattern(
                    "Mastercard 2-series (weak)",
                    r"\b2(?:2(?:2[1-9]|[3-9][0-9])|[3-6][0-9]{2}|7(?:[01][0-9]|20))"
                    r"([- ]?)[0-9]{4}\1[0-9]{4}\1[0-9]{4}\b",
                    0.3,
                ),
            ]
        ),
        IbanRecognizer(),
        IpRecognizer(),
        CryptoRecognizer(),
        EthAddressRecognizer(),
        UsSsnRecognizer(),
        UsItinRecognizer(),
        UkNinoRecognizer(),
        # Spanish ids also written with separators: "67.554.396-S",
        # "44641489 F", "Y-7573377-C", "X 7056902 L" (check letter validated).
        EsNifRecognizer(
            supported_language="en",
            patterns=[
                *EsNifRecognizer.PATTERNS,
                Pattern(
                    "NIF (separated)",
                    r"\b(?:[0-9]{8}|[0-9]{2}\.[0-9]{3}\.[0-9]{3})[- ][A-Z]\b"
                    r"|\b[0-9]{2}\.[0-9]{3}\.[0-9]{3}[A-Z]\b",
                    0.5,
                ),
            ],
            replacement_pairs=[("-", ""), (" ", ""), (".", "")],
        ),
        EsNieRecognizer(
            supported_language="en",
            patterns=[
                *EsNieRecognizer.PATTERNS,
                Pattern("NIE (separated)", r"\b[X-Z][- ][0-9]{7}[- ]?[A-Z]\b|\b[X-Z][0-9]{7}[- ][A-Z]\b", 0.5),
            ],
        ),
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
        context_aware_enhancer=LemmaContextAwareEnhancer(context_matching_mode="whole_word"),
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
