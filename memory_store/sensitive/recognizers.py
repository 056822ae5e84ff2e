"""Custom Presidio recognizers for what Presidio's predefined set lacks.

Everything here is pure regex + arithmetic, offline and stateless after
construction (the compiled patterns are module constants), so ``analyze`` is
safe to call from many threads at once.

Recognizers:

* :class:`ApiKeyRecognizer` -> ``API_KEY``: tokens with a known vendor prefix
  (OpenAI ``sk-``/``sk-proj-``, Anthropic ``sk-ant-``, GitHub
  ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``/``github_pat_``, GitLab ``glpat-``,
  Slack ``xox[abposr]-``, Stripe ``sk_``/``rk_``/``pk_`` + ``live_``/``test_``,
  AWS ``AKIA``/``ASIA`` access key ids, Google ``AIza``, HuggingFace ``hf_``,
  npm ``npm_``, SendGrid ``SG.x.y``, Twilio ``SK`` + 32 hex, Slack / Discord
  incoming-webhook URLs, reported as one API_KEY span), plus *generic*
  tokens that follow a secret keyword ("token", "api key", "secret",
  "bearer", "access key", ...).  A generic token must be >= 16 characters of
  ``[A-Za-z0-9_\\-./+=~]``, contain a letter and a digit, and have a Shannon
  entropy of at least ``GENERIC_MIN_ENTROPY`` = 2.5 bits per character
  (random base62 of length 16 scores ~3.7, hex of length 32 ~3.8; English
  words or ``my-session-cookie`` style identifiers score below 2.5 or have no
  digit).  Bare hex hashes (git commits, sha256 digests) are *not* keys unless
  a secret keyword precedes them.
* :class:`PrivateKeyRecognizer` -> ``PRIVATE_KEY``: PEM / OpenSSH
  ``-----BEGIN ... PRIVATE KEY-----`` blocks through the matching END line
  (a block without an END line -- truncated paste -- is taken up to the end
  of its base64 body); Bitcoin WIF and BIP32 ``xprv`` keys (base58check and
  version verified); 64 hex digits (``0x`` optional) after "private key",
  "wallet key", "seed", "privkey", ...
* :class:`PasswordRecognizer` -> ``PASSWORD``: the *value* after a password
  keyword ("password: hunter2", "my password is X", "pwd=X", "passcode X",
  "the wifi password for the cabin is X", "PIN is 4821", "door code is
  7391", "credentials admin / X", "pass: X", "... I changed it to X",
  ``https://user:X@host``).  See the class docstring for the acceptance
  rules.
* :class:`JwtRecognizer` -> ``JWT``: three base64url parts whose header
  decodes to a JSON object (starts ``eyJ``).
* :class:`EthAddressRecognizer` -> ``CRYPTO``: ``0x`` + 40 hex digits
  (Presidio's CRYPTO recognizer only covers Bitcoin).
* :class:`FormatAwarePhoneRecognizer` -> ``PHONE_NUMBER``: Presidio's
  phonenumbers-based recognizer with a wider region list and a score that
  depends on how the number is written (see class docstring).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections import Counter
from typing import Any

import phonenumbers
from presidio_analyzer import (
    AnalysisExplanation,
    EntityRecognizer,
    LocalRecognizer,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers.generic.email_recognizer import (
    EmailRecognizer,
)
from presidio_analyzer.predefined_recognizers.generic.phone_recognizer import (
    PhoneRecognizer,
)

from memory_store.errors import ConfigurationError

__all__ = [
    "GENERIC_MIN_ENTROPY",
    "ApiKeyRecognizer",
    "EthAddressRecognizer",
    "FormatAwarePhoneRecognizer",
    "JwtRecognizer",
    "OfflineEmailRecognizer",
    "PasswordRecognizer",
    "PrivateKeyRecognizer",
    "shannon_entropy",
]

GENERIC_MIN_ENTROPY = 2.5
GENERIC_MIN_LENGTH = 16


def shannon_entropy(value: str) -> float:
    """Shannon entropy of ``value`` in bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _result(
    recognizer: EntityRecognizer, entity_type: str, start: int, end: int, score: float, explanation: str
) -> RecognizerResult:
    """A finding of ``recognizer``, explained and named the way Presidio's own recognizers do."""
    name = type(recognizer).__name__
    return RecognizerResult(
        entity_type=entity_type,
        start=start,
        end=end,
        score=score,
        analysis_explanation=AnalysisExplanation(
            recognizer=name, original_score=score, textual_explanation=explanation
        ),
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
        },
    )


class _RegexRecognizer(LocalRecognizer):
    """A LocalRecognizer that emits one entity type from ``_spans``."""

    ENTITY = ""
    CONTEXT: list[str] = []

    def __init__(self) -> None:
        super().__init__(
            supported_entities=[self.ENTITY],
            supported_language="en",
            context=list(self.CONTEXT),
            name=type(self).__name__,
        )

    def load(self) -> None:
        return None

    def _spans(self, text: str) -> list[tuple[int, int, float]]:
        raise NotImplementedError

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
    ) -> list[RecognizerResult]:
        if self.ENTITY not in entities:
            return []
        name = type(self).__name__
        return [
            _result(self, self.ENTITY, start, end, score, f"{name} match") for start, end, score in self._spans(text)
        ]


# --------------------------------------------------------------------------- keys

_B = r"(?<![A-Za-z0-9_\-])"  # left boundary for token-like values
_E = r"(?![A-Za-z0-9_\-])"  # right boundary

_PREFIXED_KEY = re.compile(
    _B
    + r"(?:"
    + r"sk-ant-[A-Za-z0-9_\-]{20,}"
    + r"|sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"
    + r"|gh[pousr]_[A-Za-z0-9]{30,}"
    + r"|github_pat_[A-Za-z0-9_]{22,}"
    + r"|glpat-[A-Za-z0-9_\-]{20,}"
    + r"|xox[abposr]-[A-Za-z0-9\-]{10,}"
    + r"|[srp]k_(?:live|test)_[A-Za-z0-9]{16,}"
    + r"|(?:AKIA|ASIA)[A-Z0-9]{16}"
    + r"|AIza[A-Za-z0-9_\-]{35}"
    + r"|hf_[A-Za-z0-9]{30,}"
    + r"|npm_[A-Za-z0-9]{36}"
    + r"|SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"
    + r"|SK[0-9a-fA-F]{32}"
    # incoming-webhook URLs carry their secret in the path: the whole URL is the key
    + r"|https?://hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Z0-9]{6,}/[A-Z0-9]{6,}/[A-Za-z0-9]{16,}"
    + r"|https?://(?:canary\.|ptb\.)?discord(?:app)?\.com/api/webhooks/[0-9]{15,22}/[A-Za-z0-9_\-]{40,}"
    + r")"
    + _E
)

_KEY_WORDS_RE = (  # keyword regex, not a secret
    r"(?:api[\s_\-]?key|api[\s_\-]?token|apikey|access[\s_\-]?key(?:[\s_\-]?id)?"
    r"|secret[\s_\-]?access[\s_\-]?key|access[\s_\-]?token|auth[\s_\-]?token"
    r"|refresh[\s_\-]?token|bearer(?:[\s_\-]?token)?|client[\s_\-]?secret"
    r"|secret(?:[\s_\-]?key)?|token|signing[\s_\-]?key|webhook[\s_\-]?secret"
    r"|private[\s_\-]?token|deploy[\s_\-]?key|license[\s_\-]?key)"
)

_GENERIC_KEY = re.compile(
    r"(?i:\b" + _KEY_WORDS_RE + r"s?\b)"
    # optional qualifier: "token for the staging cluster", "key of my bot"
    r"(?:\s+(?:for|of|on|to)\s+(?:(?:my|the|our|your|a)\s+)?[\w.@'\-]+(?:\s+[\w.\-]+)?)?"
    r"(?:\s*[:=]\s*|\s+(?i:is|was|=)\s+(?:(?i:now|still)\s+)?|\s+)"
    r"[\"'`]?(?P<value>[A-Za-z0-9_\-./+=~]{" + str(GENERIC_MIN_LENGTH) + r",512})"
)


def _generic_secret_ok(value: str) -> bool:
    value = value.rstrip(".")
    if len(value) < GENERIC_MIN_LENGTH:
        return False
    if not any(c.isdigit() for c in value) or not any(c.isalpha() for c in value):
        return False
    if value.startswith(("http", "www.")) or "://" in value:
        return False
    return shannon_entropy(value) >= GENERIC_MIN_ENTROPY


class ApiKeyRecognizer(_RegexRecognizer):
    """API keys / tokens: known vendor prefixes and keyword-anchored generic tokens."""

    ENTITY = "API_KEY"

    def _spans(self, text: str) -> list[tuple[int, int, float]]:
        spans = [(m.start(), m.end(), 0.95) for m in _PREFIXED_KEY.finditer(text)]
        for m in _GENERIC_KEY.finditer(text):
            value = m.group("value")
            if not _generic_secret_ok(value):
                continue
            start = m.start("value")
            end = start + len(value.rstrip("."))
            spans.append((start, end, 0.8))
        return spans


# --------------------------------------------------------------------- private keys

_PEM = re.compile(
    r"-----BEGIN (?P<label>(?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:.*?-----END (?P=label)-----|[\sA-Za-z0-9+/=:,\-]*[A-Za-z0-9+/=])",
    re.DOTALL,
)


_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
_B58 = "[1-9A-HJ-NP-Za-km-z]"

# Bitcoin WIF private keys (version 0x80): uncompressed "5H/5J/5K" + 49 chars,
# compressed "K"/"L" + 51 chars; BIP32 extended private keys xprv/tprv.
_WIF = re.compile(
    r"(?<![A-Za-z0-9])(?:5[HJK]" + _B58 + r"{49}|[KL]" + _B58 + r"{51}"
    r"|[xt]prv" + _B58 + r"{107,108})(?![A-Za-z0-9])"
)
# A raw 256-bit key in hex is indistinguishable from a sha256 digest, so it
# is only a key right after a wallet-key phrase ("private key", "wallet key",
# "seed", "privkey", ...), possibly with a few words in between
# ("private key for my MetaMask wallet is 0x...").
_HEX_KEY = re.compile(
    r"(?i:\b(?:(?:wallet|eth(?:ereum)?|bitcoin|btc|crypto|metamask|account|hex)[\s_\-]+)?"
    r"(?:private[\s_\-]?key|priv[\s_\-]?key|privkey|wallet[\s_\-]?key|seed(?:[\s_\-]?hex)?|secret[\s_\-]?exponent)s?\b)"
    r"(?:[^\n.!?]|\.(?!\s)){0,48}?"
    r"(?<![0-9A-Za-z])(?P<value>(?:0x)?[0-9a-fA-F]{64})(?![0-9A-Za-z])"
)
_HEX_KEY_HINT = re.compile(r"(?i:key|seed|secret)")


def _base58check_payload(value: str) -> bytes | None:
    n = 0
    for c in value:
        n = n * 58 + _B58_INDEX[c]
    pad = len(value) - len(value.lstrip("1"))
    raw = b"\0" * pad + n.to_bytes((n.bit_length() + 7) // 8, "big")
    payload, check = raw[:-4], raw[-4:]
    if len(raw) < 5 or hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != check:
        return None
    return payload


def _is_private_key_b58(value: str) -> bool:
    payload = _base58check_payload(value)
    if payload is None:
        return False
    if value[1:4] == "prv":
        return len(payload) == 78
    return payload[0] == 0x80 and (len(payload) == 33 or (len(payload) == 34 and payload[-1] == 0x01))


class PrivateKeyRecognizer(_RegexRecognizer):
    """Private keys: PEM / OpenSSH blocks and cryptocurrency wallet keys.

    * ``-----BEGIN ... PRIVATE KEY-----`` blocks, BEGIN line through END line
      (score 1.0);
    * Bitcoin WIF keys (``5...``, 51 chars; ``K...``/``L...``, 52 chars) and
      BIP32 ``xprv``/``tprv`` extended keys whose base58check checksum and
      version byte verify (score 1.0, no context needed);
    * 64 hex digits (optionally ``0x``-prefixed) within a few words after
      "private key", "privkey", "wallet key", "seed", ... (score 0.95).  A
      bare 64-hex value is a sha256 digest, not a key.
    """

    ENTITY = "PRIVATE_KEY"

    def _spans(self, text: str) -> list[tuple[int, int, float]]:
        spans: list[tuple[int, int, float]] = []
        if "-----BEGIN" in text:
            spans.extend((m.start(), m.end(), 1.0) for m in _PEM.finditer(text))
        if len(text) >= 51:
            spans.extend((m.start(), m.end(), 1.0) for m in _WIF.finditer(text) if _is_private_key_b58(m.group(0)))
        if len(text) >= 64 and _HEX_KEY_HINT.search(text):
            spans.extend((*m.span("value"), 0.95) for m in _HEX_KEY.finditer(text))
        return spans


# ------------------------------------------------------------------------ passwords

# Short keywords ("pw", "pwd", "pass") only count with a ":" or "=" right
# after them, so "PW 38 85 35 D" (a NINO) or "run pwd" are not passwords.
_PW_SHORT = frozenset({"pw", "pwd", "pass"})
_PW_KEYWORD = (
    r"(?:pass(?:word|wd|code|phrase)s?|pass\s+phrase|pwd|pw|pass|wi-?fi\s+key"
    r"|pin(?:\s+(?:code|number))?"
    r"|(?:door|alarm|garage|gate|safe|lock|locker|keypad|entry|entrance|access|security"
    r"|lockbox|key\s?box|key\s?safe|padlock|intercom|buzzer|unlock)\s+code)"
)
_PW_KEYWORD_RE = re.compile(r"(?i:\b" + _PW_KEYWORD + r"\b)")
# "password for my gmail account", "passcode of the safe", "wifi password at
# home", "passphrase for the backup drive": up to three words.
_PW_QUALIFIER = (
    r"(?:\s+(?i:for|of|on|at|to|in)\s+"
    r"(?:(?i:my|the|our|your|his|her|their|a|this|that)\s+)?"
    r"[\w.@'\-]+(?:\s+[\w.@'\-]+){0,2}?)?"
)
_PW_SEP = (
    r"\s*[:=]\s*"
    r"|\s+(?i:is|was|are|=)\s*:?\s+"
    r"(?:(?i:now|still|actually|just|literally|simply|currently|basically|always|set\s+to"
    r"|changed\s+to)\s+){0,2}"
    r"|\s+(?i:(?:changed|set|updated|reset)\s+)?(?i:to)\s+"
)
_PW_VALUE = r"(?P<value>[^\s\"'`<>]{1,128})"
# Quoted value: the closing quote is the first matching one not followed by a
# letter, so "it's" inside double quotes does not end the value.
_PW_QUOTED = "(?P<q>[\"'`\u201c\u2018])(?P<qvalue>[^\\n]{1,128}?)(?P<qend>[\"'`\u201d\u2019])(?!\\w)"
_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019"}
_PASSWORD = re.compile(
    r"(?P<kw>(?i:\b" + _PW_KEYWORD + r"\b))"
    # a separator word / ":" (after an optional qualifier), or bare
    # whitespace when the value has a digit or symbol ("passcode 4821")
    r"(?:" + _PW_QUALIFIER + r"(?P<sep>" + _PW_SEP + r")|(?P<bare>\s+)(?=\S*[^\sA-Za-z]))"
    r"(?:" + _PW_QUOTED + r"|" + _PW_VALUE + r")"
)
# "credentials admin / Winter#2023", "login: bob/Tr0ub4dor", "username and
# password: admin:hunter2!": the value after the "/" (or ":") of a pair.
_CRED_PAIR = re.compile(
    r"(?i:\b(?:credentials?|creds|log-?ins?|sign-?in|user(?:name)?\s*(?:/|and|&)\s*pass(?:word)?)\b)"
    + _PW_QUALIFIER
    + r"(?:\s*[:=]\s*|\s+(?i:is|are|was|were)\s*:?\s+|\s+)"
    r"(?P<user>[^\s/:,;\"'`<>()]{2,64})(?:\s*/\s*|:)(?P<value>[^\s\"'`<>]{1,128})"
)
_CRED_NOT_VALUE = re.compile(r"(?i:^(?:pass(?:word|wd)?|pwd|pw)\b|^[/\\]|^https?\b)")
# A second value for a password already mentioned: "my password was X but I
# changed it to Y", "... the new one is Y", "... it's now Y".
_PW_FOLLOWUP = re.compile(
    r"(?i:\b(?:(?P<to>(?:changed|set|updated|reset|switched|rotated)\s+(?:it|that|this|them|mine)"
    r"\s+(?:again\s+|back\s+)?to)|new\s+one\s+(?:is|was)|it(?:'s|\s+is)\s+now|now\s+it(?:'s|\s+is))\b)"
    r"\s*:?\s+(?:" + _PW_QUOTED + r"|" + _PW_VALUE + r")"
)
_PW_FOLLOWUP_WINDOW = 160
# "boarding pass: 12345" is a ticket, not a password.
_NOT_A_PASS = re.compile(
    r"(?i:\b(?:boarding|bus|season|day|ski|hall|backstage|press|train|rail|gym|museum"
    r"|annual|weekly|monthly|guest|visitor|vip|park|parking|festival|event|travel|transit"
    r"|metro|ferry|tram|subway|stadium|hiking|mountain|first|second|third|final|each|one"
    r"|test|tests|exam|quiz|unit|build|ci)"
    r"[\s\-]+)$"
)
# Placeholder-like values in URLs and configs: "${DB_PASS}", "****", "pass".
_PW_DUMMY = re.compile(r"(?i:^(?:[*x.]+|pass(?:word|wd)?|pwd|secret|redacted|hidden|[$%{<].*)$)")
# "https://user:pass@host": the password part of a URL's userinfo.
_URL_USERINFO = re.compile(
    r"(?i:\b[a-z][a-z0-9+.\-]{1,15}://)[^\s:/@]{1,64}:(?P<value>[^\s/]{1,128})@(?=[A-Za-z0-9\[])"
)

# Words that follow "password is ..." / "password ..." in ordinary prose.
_PW_STOPWORDS = frozenset(
    """
    a an the this that these those it its my your his her our their me you him us them
    i we he she they is are was were be been being am do does did not no never none nil
    null n/a na unknown same different new old also still now just really very too so
    and or but if then than as of for on in at to from by with about again again.
    wrong incorrect correct right invalid valid expired expiring required optional
    weak strong secure insecure safe unsafe long short simple complex complicated easy
    hard difficult good bad fine ok okay saved stored written hidden encrypted hashed
    reset changed updated set locked forgotten lost compromised leaked stolen shared
    manager managers protected case-sensitive sensitive change changes reset. field
    prompt box policy policies rules rule requirements length hint hints reminder
    recovery link email emails page screen dialog please here there somewhere something
    anything everything nothing which what who where when why how will would should
    could can cannot can't won't isn't wasn't doesn't didn't don't must might may
    literally actually default temporary generated random attached below above
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def _looks_like_prose(value: str, sep: str) -> bool:
    if sep in ("", "to") and value.isalpha():
        return True  # "password reset", "password again", "changed to something"
    return sep not in (":", "=") and value.isalpha() and value.islower() and value.endswith(("ed", "ing", "ly"))


def _sep_kind(sep: str) -> str:
    sep = sep.strip().lower()
    if not sep:
        return ""
    if sep[0] in ":=":
        return sep[0]
    return "to" if sep.endswith("to") else "is"


def _quoted(m: re.Match[str]) -> tuple[int, int] | None:
    """The span inside matching quotes, or None when they do not pair up."""
    value = m.group("qvalue")
    if _QUOTE_PAIRS[m.group("q")] != m.group("qend") or value.strip() != value:
        return None
    return m.span("qvalue")


def _plain_value(m: re.Match[str], sep: str, digits_only: tuple[int, int] | None) -> tuple[int, int] | None:
    """The span of an unquoted value after the acceptance rules, or None."""
    start = m.start("value")
    value = m.group("value").rstrip(".,;:)]}")
    if not value:
        return None
    if digits_only is not None:
        lo, hi = digits_only
        value = value.rstrip("#*")  # keypad entry: "7391#"
        return (start, start + len(value)) if value.isdigit() and lo <= len(value) <= hi else None
    low = value.lower().rstrip("!?")
    if low in _PW_STOPWORDS or _looks_like_prose(value, sep):
        return None
    return start, start + len(value)


class PasswordRecognizer(_RegexRecognizer):
    """The value of a password / passcode / PIN / door code, never the keyword.

    Keywords: password, passwd, passcode, passphrase, wifi key, PIN (code),
    "door/alarm/garage/gate/safe/lock/locker/keypad/access/security/...
    code", and the short forms pwd, pw, pass -- these three only with a
    ``:`` or ``=`` right after them ("pw: x", "pass=x"; never "PW 38 85 35 D"
    or "boarding pass: 1234").  Acceptance rules:

    * quoted value after a separator (``password is "correct horse"``):
      always, the span is the inside of the quotes (which must pair up; an
      apostrophe followed by a letter, as in "don't", does not close);
    * ``password: X`` / ``pwd=X``: X unless it is a stop-word ("none", "n/a");
    * ``password is X`` / ``password is literally X`` / ``password changed to
      X``: X unless it is a stop-word or an all-lowercase word ending in
      -ed/-ing/-ly ("my password is expired", "is changing", "is really
      long"); after "to" X must contain a non-letter;
    * ``password X`` (no separator word): only when X contains a digit or a
      symbol ("passcode 4821", "password hunter2!"), so "password reset link"
      or "I forgot my password again" are not passwords;
    * PIN: the value must be 4-8 digits; door/alarm/... codes 3-8 digits;
    * credential pairs after "credentials", "creds", "login", "username and
      password": ``admin / Winter#2023`` or ``admin:Winter#2023`` -> the part
      after the separator (after "login"/"sign-in" not when it is all
      lowercase letters: "login page/form");
    * a follow-up within the next 160 characters of a password keyword:
      "... I changed it to Y", "the new one is Y", "it's now Y";
    * the password of a URL's userinfo (``https://user:S3cret@host``): the
      password part only (the user name and host stay readable), unless it
      is a placeholder (``${PASS}``, ``****``, "password").

    Trailing sentence punctuation (``.,;:``) and closing brackets are trimmed
    from unquoted values.  Placeholders (``<PASSWORD_1>``) are never values.
    """

    ENTITY = "PASSWORD"

    def _spans(self, text: str) -> list[tuple[int, int, float]]:
        spans: list[tuple[int, int, float]] = []
        last_keyword = -1  # end of the last keyword seen, for follow-ups
        for m in _PASSWORD.finditer(text):
            keyword = m.group("kw").lower()
            last_keyword = max(last_keyword, m.end("kw"))
            sep = _sep_kind(m.group("sep") or "")
            if keyword in _PW_SHORT:
                if sep not in (":", "="):
                    continue
                if keyword == "pass" and _NOT_A_PASS.search(text, 0, m.start()):
                    continue
            digits_only = None
            if keyword.startswith("pin"):
                digits_only = (4, 8)
            elif keyword.endswith("code") and not keyword.startswith("pass"):
                digits_only = (3, 8)
            if m.group("qvalue") is not None:
                span = _quoted(m)
                if span is None or (digits_only and not m.group("qvalue").isdigit()):
                    continue
                spans.append((*span, 0.9))
                continue
            span = _plain_value(m, sep, digits_only)
            if span is not None:
                spans.append((*span, 0.85))
        for m in _CRED_PAIR.finditer(text):
            value = m.group("value").rstrip(".,;:)]}")
            user = m.group("user")
            if (
                len(value) < 3
                or not any(c.isalpha() for c in user)
                or user.lower() in _PW_STOPWORDS
                or _CRED_NOT_VALUE.search(value)
                # after "login" an all-lowercase word is prose ("login page/form")
                or (value.isalpha() and value.islower() and m.group(0)[:1].lower() in "ls")
                or value.lower().rstrip("!?") in _PW_STOPWORDS
            ):
                continue
            spans.append((m.start("value"), m.start("value") + len(value), 0.85))
        if last_keyword >= 0 or _PW_KEYWORD_RE.search(text):
            for m in _PW_FOLLOWUP.finditer(text):
                kw = _PW_KEYWORD_RE.search(text, max(0, m.start() - _PW_FOLLOWUP_WINDOW), m.start())
                if kw is None:
                    continue
                if m.group("qvalue") is not None:
                    span = _quoted(m)
                else:
                    span = _plain_value(m, "to" if m.group("to") else "is", None)
                if span is not None:
                    spans.append((*span, 0.85))
        if "://" in text:
            for m in _URL_USERINFO.finditer(text):
                if not _PW_DUMMY.match(m.group("value")):
                    spans.append((*m.span("value"), 0.95))
        return spans


# ------------------------------------------------------------------------------ JWT

_JWT = re.compile(_B + r"(?P<h>eyJ[A-Za-z0-9_\-]{8,})\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}" + _E)


def _b64url_json(part: str) -> bool:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        obj: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict)


class JwtRecognizer(_RegexRecognizer):
    """JSON Web Tokens: header.payload.signature, header decodes to a JSON object."""

    ENTITY = "JWT"

    def _spans(self, text: str) -> list[tuple[int, int, float]]:
        if "eyJ" not in text:
            return []
        return [(m.start(), m.end(), 1.0) for m in _JWT.finditer(text) if _b64url_json(m.group("h"))]


# ---------------------------------------------------------------------------- crypto

_ETH = re.compile(r"(?<![0-9A-Za-z])0x[0-9a-fA-F]{40}(?![0-9A-Za-z])")


class EthAddressRecognizer(_RegexRecognizer):
    """Ethereum addresses (0x + 40 hex); reported as CRYPTO."""

    ENTITY = "CRYPTO"
    CONTEXT = ["wallet", "eth", "ethereum", "crypto", "address"]

    def _spans(self, text: str) -> list[tuple[int, int, float]]:
        return [(m.start(), m.end(), 0.85) for m in _ETH.finditer(text)]


# ----------------------------------------------------------------------------- email


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer validated with an injected, offline TLD extractor.

    Presidio's ``EmailRecognizer.validate_result`` calls the module-level
    ``tldextract.extract``, whose global extractor may download the public
    suffix list and write a cache under ``~/.cache``.  This subclass uses the
    extractor it is given instead (built with ``suffix_list_urls=()`` and
    ``cache_dir=None``: bundled snapshot only, no network, no disk writes).
    """

    def __init__(self, extractor: Any) -> None:
        self._extractor = extractor
        super().__init__()

    def validate_result(self, pattern_text: str) -> bool:
        return bool(self._extractor(pattern_text).fqdn != "")


# ----------------------------------------------------------------------------- phone

PHONE_REGIONS = (
    "US", "GB", "DE", "FR", "ES", "IT", "PT", "IN", "BR", "NL", "IE", "CA", "AU",
)  # fmt: skip

_PHONE_SEPARATORS = frozenset(" -.()/\u00a0")


# The fewest digits a valid number of any of those regions has (the shortest possible national number): the
# matcher only finds runs of digits, so a text with fewer digits than this holds no phone number, and the
# matcher's passes (about 1 ms a text for the regions above) are skipped.
def _shortest_number(region: str) -> int:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    lengths = metadata.general_desc.possible_length if metadata and metadata.general_desc else None
    if not lengths:
        raise ConfigurationError(f"no phone number metadata for region {region}")
    return min(lengths)


PHONE_MIN_DIGITS = min(_shortest_number(region) for region in PHONE_REGIONS)


class FormatAwarePhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer, scored by how the number is written.

    * international (``+CC ...`` or ``00CC ...``): 0.7;
    * national with separators (``(415) 555-2671``, ``0612 345 678``): 0.5;
    * a bare run of digits (``4155552671``): 0.3, i.e. below the default
      threshold unless a context word ("phone", "mobile", "call", "text",
      "whatsapp", ...) is near -- bare digit runs are mostly order and
      tracking numbers.  "number" is deliberately *not* a context word
      ("order number 5138691673").
    * a match glued to a larger token (``SN-2498-3085-23``, ``51.77.248.156``,
      ``37.3933``) is dropped.

    Matches are found with ``phonenumbers.PhoneNumberMatcher`` at leniency
    VALID for each region in ``PHONE_REGIONS`` and de-duplicated by span.
    """

    CONTEXT = [
        "phone", "telephone", "tel", "cell", "cellphone", "mobile",
        "call", "text", "whatsapp", "signal", "reach", "landline", "fax", "dial",
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__(
            context=list(self.CONTEXT),
            supported_regions=PHONE_REGIONS,
            leniency=1,
        )

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
    ) -> list[RecognizerResult]:
        if sum(c.isdigit() for c in text) < PHONE_MIN_DIGITS:
            return []
        seen: dict[tuple[int, int], str] = {}
        for region in self.supported_regions:
            for match in phonenumbers.PhoneNumberMatcher(
                text, region, leniency=1 if self.leniency is None else self.leniency
            ):
                seen.setdefault((match.start, match.end), region)
        out: list[RecognizerResult] = []
        for (start, end), region in seen.items():
            raw = text[start:end]
            before = text[start - 1] if start > 0 else " "
            after = text[end : end + 2]
            if (
                before.isalnum()
                or before in "-./_"
                or (after[:1] in "-./_" and after[1:2].isalnum())
                or after[:1].isalnum()
            ):
                continue
            if raw.startswith(("+", "00")):
                score = 0.7
            elif any(c in _PHONE_SEPARATORS for c in raw):
                score = 0.5
            else:
                score = 0.3
            out.append(_result(self, "PHONE_NUMBER", start, end, score, f"phone number ({region} matcher)"))
        return out
