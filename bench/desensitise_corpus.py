"""Generate the labelled corpus for the desensitisation benchmark (issue #17).

Deterministic (seeded ``random``), no external data: every value is synthesised
here with the right checksum (Luhn, mod-97, base58check, bech32, NIF/NIE
letters, codice fiscale and Finnish check characters) and planted into
chat-memory style templates, with and without context words.  Clean
sentences are full of lookalikes (order/invoice/tracking numbers, dates,
times, prices, versions, Luhn-invalid 16-digit numbers, IBANs with bad check
digits, hashes, UUIDs, URLs, "password" without a value, ...).

A second block (``planted_v2`` / ``clean_v2``, own seeded stream) covers the
error classes found by a held-out evaluation: Mastercard 2-series cards,
wallet private keys (hex after a key phrase, WIF, xprv), password phrasings
(credential pairs, "pass:"/"pw:", quoted passphrases, PINs and door codes,
"changed it to X", URL userinfo), separated Spanish NIF/NIE, Slack/Discord
webhook URLs; and clean lookalikes (dotted dates, versions after a keyword,
subnet masks, ZIP+4, number lists, documentation IPs, public DNS resolvers,
digests without key context, bad-checksum WIF, "boarding pass: ...").

Each output line: ``{"text": ..., "spans": [{"type", "start", "end"}],
"kind": "planted"|"clean"}``.

Usage: ``python bench/desensitise_corpus.py [--out PATH] [--seed N]``
(default ``bench/data/desensitise_corpus.jsonl``, seed 17).
"""

# ruff: noqa: E501  (template and value tables read best one per line)
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import re
import string
import sys
from collections.abc import Callable
from pathlib import Path

import phonenumbers

DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "desensitise_corpus.jsonl"
DEFAULT_SEED = 17
PER_TYPE = 24  # single-value planted sentences per type

FIRST = ["anna", "joao", "maria", "li", "priya", "tom", "sofia", "lukas", "emma", "omar",
         "chloe", "diego", "hana", "ivan", "noor", "sam", "lea", "marco", "ines", "ravi"]  # fmt: skip
LAST = ["silva", "smith", "chen", "patel", "muller", "rossi", "garcia", "kowalski",
        "nguyen", "dubois", "costa", "okafor", "berg", "tanaka", "haddad"]  # fmt: skip
DOMAINS = ["gmail.com", "outlook.com", "proton.me", "example.org", "mail.example.co.uk",
           "uni-porto.pt", "acme-corp.io", "staff.hospital.nhs.uk", "yahoo.fr", "web.de"]  # fmt: skip
CITIES = ["Porto", "Lisbon", "Berlin", "Madrid", "Milan", "Lyon", "Leeds", "Austin",
          "Pune", "Recife", "Utrecht", "Cork", "Helsinki", "Seville"]  # fmt: skip
SERVICES = ["gmail", "netflix", "the bank app", "my laptop", "the router", "the NAS",
            "Spotify", "the school portal", "the gym app", "GitHub"]  # fmt: skip


# ------------------------------------------------------------------ value makers


def luhn_digit(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def make_card(rng: random.Random) -> str:
    brand = rng.choice(["visa", "mc", "amex", "discover"])
    if brand == "visa":
        body = "4" + digits(rng, 14)
    elif brand == "mc":
        body = "5" + str(rng.randint(1, 5)) + digits(rng, 13)
    elif brand == "discover":
        body = "6011" + digits(rng, 11)
    else:
        body = rng.choice(["34", "37"]) + digits(rng, 12)
    num = body + luhn_digit(body)
    sep = rng.choice(["", " ", "-"])
    if len(num) == 15:
        return num if not sep else sep.join([num[:4], num[4:10], num[10:]])
    return sep.join(num[i : i + 4] for i in range(0, 16, 4))


def make_bad_card(rng: random.Random) -> str:
    body = rng.choice(["4", "5", "6"]) + digits(rng, 14)
    good = luhn_digit(body)
    bad = str((int(good) + rng.randint(1, 9)) % 10)
    num = body + bad
    sep = rng.choice(["", " ", "-"])
    return sep.join(num[i : i + 4] for i in range(0, 16, 4))


IBAN_BBAN: dict[str, Callable[[random.Random], str]] = {
    "DE": lambda r: digits(r, 18),
    "GB": lambda r: "".join(r.choice("ABCDEFGHJKLMNPRSTWXY") for _ in range(4)) + digits(r, 14),
    "FR": lambda r: digits(r, 23),
    "ES": lambda r: digits(r, 20),
    "NL": lambda r: "".join(r.choice("ABCDEFGHJKLMNPRSTWXY") for _ in range(4)) + digits(r, 10),
    "PT": lambda r: digits(r, 21),
    "IT": lambda r: r.choice(string.ascii_uppercase) + digits(r, 22),
}  # fmt: skip


def iban_check(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    numeric = "".join(str(int(c, 36)) for c in rearranged)
    return f"{98 - int(numeric) % 97:02d}"


def group4(s: str) -> str:
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def make_iban(rng: random.Random, valid: bool = True) -> str:
    country = rng.choice(sorted(IBAN_BBAN))
    bban = IBAN_BBAN[country](rng)
    check = iban_check(country, bban)
    if not valid:
        check = f"{(int(check) + rng.randint(1, 90)) % 97 + 2:02d}"[:2]
        if check == iban_check(country, bban):
            check = f"{(int(check) + 1) % 100:02d}"
    iban = country + check + bban
    return group4(iban) if rng.random() < 0.6 else iban


def make_ipv4(rng: random.Random) -> str:
    first = rng.choice([10, 172, 192, 81, 89, 145, 203, 51, 34])
    return ".".join([str(first)] + [str(rng.randint(0, 254)) for _ in range(3)])


def make_ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    style = rng.random()
    if style < 0.4:
        return ":".join(groups)
    if style < 0.8:
        return f"2001:db8:{groups[2]}:{groups[3]}::{groups[7]}"
    return f"fe80::{groups[4]}:{groups[5]}:{groups[6]}:{groups[7]}"


def make_email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first}_{last}",
                        f"{first}.{last}+{rng.choice(['news', 'shop', 'bills', 'work'])}", f"{first[0]}{last}"])  # fmt: skip
    return f"{local}@{rng.choice(DOMAINS)}"


PHONE_PLANS = [
    ("US", "+1", "{a} {b} {c}", lambda r: (r.choice(["415", "212", "617", "312", "206", "512"]), str(r.randint(201, 989)), digits(r, 4))),
    ("US", "", "({a}) {b}-{c}", lambda r: (r.choice(["415", "212", "617", "312", "206", "512"]), str(r.randint(201, 989)), digits(r, 4))),
    ("US", "", "{a}-{b}-{c}", lambda r: (r.choice(["415", "212", "617", "312", "206", "512"]), str(r.randint(201, 989)), digits(r, 4))),
    ("GB", "+44", "7{a} {b}", lambda r: (str(r.randint(400, 999)), digits(r, 6), "")),
    ("GB", "", "07{a} {b}", lambda r: (str(r.randint(400, 999)), digits(r, 6), "")),
    ("GB", "+44", "20 {a} {b}", lambda r: (str(r.randint(7000, 8999)), digits(r, 4), "")),
    ("DE", "+49", "30 {a}", lambda r: (digits(r, 8), "", "")),
    ("DE", "", "0151 {a}", lambda r: (digits(r, 8), "", "")),
    ("FR", "+33", "6 {a} {b} {c} {d}", lambda r: (digits(r, 2), digits(r, 2), digits(r, 2), digits(r, 2))),
    ("FR", "", "06 {a} {b} {c} {d}", lambda r: (digits(r, 2), digits(r, 2), digits(r, 2), digits(r, 2))),
    ("ES", "+34", "6{a} {b} {c}", lambda r: (digits(r, 2), digits(r, 3), digits(r, 3))),
    ("IT", "+39", "3{a} {b} {c}", lambda r: (str(r.randint(20, 49)), digits(r, 3), digits(r, 4))),
    ("PT", "+351", "9{a} {b} {c}", lambda r: (r.choice(["1", "2", "3", "6"]) + digits(r, 1), digits(r, 3), digits(r, 3))),
    ("IN", "+91", "9{a} {b}", lambda r: (digits(r, 4), digits(r, 5), "")),
    ("BR", "+55", "11 9{a}-{b}", lambda r: (str(r.randint(6000, 9999)), digits(r, 4), "")),
    ("NL", "+31", "6 {a} {b}", lambda r: (digits(r, 4), digits(r, 4), "")),
]  # fmt: skip


def make_phone(rng: random.Random, bare: bool = False) -> str:
    while True:
        region, cc, fmt, parts = rng.choice(PHONE_PLANS)
        if bare and cc:
            continue
        p = parts(rng)
        body = fmt.format(**dict(zip("abcd", p, strict=False)))
        number = f"{cc} {body}" if cc else body
        if bare:
            number = re.sub(r"\D", "", number)
        parsed = phonenumbers.parse(number, region)
        if phonenumbers.is_valid_number(parsed):
            return number


B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58check(payload: bytes) -> str:
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, rem = divmod(n, 58)
        out = B58[rem] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def bech32_polymod(values: list[int]) -> int:
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in values:
        b = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if ((b >> i) & 1) else 0
    return chk


def bech32_address(program: bytes) -> str:
    hrp = "bc"
    acc, bits, data = 0, 0, [0]
    for byte in program:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            data.append((acc >> bits) & 31)
    if bits:
        data.append((acc << (5 - bits)) & 31)
    hrp_exp = [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]
    polymod = bech32_polymod(hrp_exp + data + [0] * 6) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32[d] for d in data + checksum)


def make_crypto(rng: random.Random) -> str:
    kind = rng.random()
    body = bytes(rng.randrange(256) for _ in range(20))
    if kind < 0.35:
        return base58check(b"\x00" + body)
    if kind < 0.55:
        return base58check(b"\x05" + body)
    if kind < 0.75:
        return bech32_address(body)
    return "0x" + body.hex()


def make_ssn(rng: random.Random) -> str:
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    num = f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
    sep = rng.choice(["-", "-", " "])
    return f"{num[:3]}{sep}{num[3:5]}{sep}{num[5:]}"


def make_itin(rng: random.Random) -> str:
    mid = rng.choice([*range(70, 89), 90, 91, 92, *range(94, 100)])
    return f"9{digits(rng, 2)}-{mid}-{digits(rng, 4)}"


NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"


def make_nino(rng: random.Random) -> str:
    while True:
        pre = rng.choice(NINO_FIRST) + rng.choice(NINO_SECOND)
        if pre not in {"BG", "GB", "NK", "KN", "NT", "TN", "ZZ"}:
            break
    d = digits(rng, 6)
    suf = rng.choice("ABCD")
    if rng.random() < 0.5:
        return f"{pre} {d[:2]} {d[2:4]} {d[4:]} {suf}"
    return f"{pre}{d}{suf}"


NIF_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def make_nif(rng: random.Random) -> str:
    n = digits(rng, 8)
    return n + NIF_LETTERS[int(n) % 23]


def make_nie(rng: random.Random) -> str:
    p = rng.choice("XYZ")
    n = digits(rng, 7)
    return p + n + NIF_LETTERS[int(str("XYZ".index(p)) + n) % 23]


CF_ODD = dict(zip("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                  [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 1, 0, 5, 7, 9, 13, 15, 17, 19, 21,
                   2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23], strict=True))  # fmt: skip


def make_fiscal_code(rng: random.Random) -> str:
    cons = "BCDFGHLMNPRSTVZ"
    s = "".join(rng.choice(cons) for _ in range(3)) + "".join(rng.choice(cons) for _ in range(3))
    s += f"{rng.randint(40, 99):02d}" + rng.choice("ABCDEHLMPRST")
    s += f"{rng.randint(1, 28) + rng.choice([0, 40]):02d}"
    s += rng.choice("ABCDEFGHLM") + f"{rng.randint(1, 999):03d}"
    total = 0
    for i, ch in enumerate(s):
        total += CF_ODD[ch] if i % 2 == 0 else (int(ch) if ch.isdigit() else ord(ch) - 65)
    return s + chr(65 + total % 26)


FI_CHECK = "0123456789ABCDEFHJKLMNPRSTUVWXY"


def make_fi_code(rng: random.Random) -> str:
    dd, mm = rng.randint(1, 28), rng.randint(1, 12)
    century = rng.choice(["-", "A"])
    yy = rng.randint(40, 99) if century == "-" else rng.randint(0, 20)
    nnn = rng.randint(2, 899)
    base = f"{dd:02d}{mm:02d}{yy:02d}"
    return f"{base}{century}{nnn:03d}{FI_CHECK[int(base + f'{nnn:03d}') % 31]}"


ALNUM = string.ascii_letters + string.digits


def rand(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


KEY_MAKERS: list[Callable[[random.Random], str]] = [
    lambda r: "sk-" + rand(r, 48),
    lambda r: "sk-proj-" + rand(r, 40, ALNUM + "_-"),
    lambda r: "sk-ant-api03-" + rand(r, 60, ALNUM + "_-"),
    lambda r: r.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + rand(r, 36),
    lambda r: "github_pat_" + rand(r, 22) + "_" + rand(r, 59),
    lambda r: "glpat-" + rand(r, 20, ALNUM + "_-"),
    lambda r: "xox" + r.choice("abposr") + "-" + digits(r, 11) + "-" + digits(r, 12) + "-" + rand(r, 24),
    lambda r: r.choice(["sk", "rk", "pk"]) + "_" + r.choice(["live", "test"]) + "_" + rand(r, 24),
    lambda r: r.choice(["AKIA", "ASIA"]) + rand(r, 16, string.ascii_uppercase + string.digits),
    lambda r: "AIza" + rand(r, 35, ALNUM + "_-"),
    lambda r: "hf_" + rand(r, 34),
    lambda r: "npm_" + rand(r, 36),
    lambda r: "SG." + rand(r, 22, ALNUM + "_-") + "." + rand(r, 43, ALNUM + "_-"),
    lambda r: "SK" + rand(r, 32, "0123456789abcdef"),
]


def make_generic_secret(rng: random.Random) -> str:
    while True:
        v = rand(rng, rng.choice([20, 24, 32, 40]), rng.choice([ALNUM, "0123456789abcdef", ALNUM + "_-"]))
        if any(c.isdigit() for c in v) and any(c.isalpha() for c in v):
            return v


def make_pem(rng: random.Random) -> str:
    label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY",
                        "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])  # fmt: skip
    lines = [rand(rng, 64, ALNUM + "+/") for _ in range(rng.randint(2, 5))]
    lines.append(rand(rng, rng.randint(8, 40), ALNUM + "+/") + "==")
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(rng: random.Random) -> str:
    header = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    payload = {"sub": str(rng.randint(1000, 99999)), "name": rng.choice(FIRST),
               "iat": 1700000000 + rng.randint(0, 9999999)}  # fmt: skip
    sig = bytes(rng.randrange(256) for _ in range(32))
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(sig)])


PASSWORD_WORDS = ["hunter", "sunflower", "porto", "bluebird", "marmalade", "trombone", "kitten", "galaxy"]


def make_password(rng: random.Random) -> str:
    w = rng.choice(PASSWORD_WORDS)
    style = rng.random()
    if style < 0.25:
        return w
    if style < 0.5:
        return w + str(rng.randint(1, 9999))
    if style < 0.75:
        return w.capitalize() + rng.choice("!#$%&*") + str(rng.randint(10, 99))
    return rand(rng, rng.randint(10, 16), ALNUM + "!#$%&*@")


# -------------------------------------------------------------------- templates

TEMPLATES: dict[str, list[str]] = {
    "EMAIL_ADDRESS": [
        "My work email is {v}.", "Remember that {v} is my personal address.",
        "Send the invoices to {v} from now on", "{v} is the one I use for newsletters",
        "I changed my login to {v} last week.", "You can reach my sister at {v}",
        "The landlord wrote from {v}, reply there", "please cc {v} on anything about the trip",
    ],
    "PHONE_NUMBER": [
        "I moved to {c} and my new number is {v}.", "Call me on {v} after 6pm",
        "My dentist is on {v}", "Save {v} as Mum's mobile", "The plumber's phone: {v}",
        "{v} is my WhatsApp", "My office line is {v}, ext. 12", "Text {v} when you land in {c}.",
    ],
    "CREDIT_CARD": [
        "My Visa is {v}, expires 09/27.", "I paid with {v} yesterday", "Use card {v} for groceries",
        "{v} is the company card", "the card ending in that number, full one {v}",
        "Billing: {v} (the blue one)", "Remember my card number {v}", "Charge {v} for the hotel in {c}",
    ],
    "IBAN_CODE": [
        "My IBAN is {v}.", "Rent goes to {v} every month", "Transfer the deposit to {v}",
        "{v} is my savings account", "Salary lands in {v}", "Landlord's account: {v}",
        "Please wire it to {v} before Friday", "Old bank account {v} in {c}, closed soon",
    ],
    "IP_ADDRESS": [
        "My home server is at {v}.", "The printer got {v} from DHCP", "ssh into {v} for the backups",
        "{v} is the VPN endpoint", "My static IP is {v}", "Block {v} on the firewall",
        "The NAS answers on {v} now", "Game server address {v}, port 25565",
    ],
    "CRYPTO": [
        "My bitcoin wallet is {v}.", "Send the payout to {v}", "{v} is my cold storage address",
        "Donations go to {v}", "My ETH address: {v}", "Use {v} for the refund",
        "Old wallet {v}, don't use it", "The exchange deposit address is {v}",
    ],
    "US_SSN": [
        "My SSN is {v}.", "Social security number {v}", "{v} is my social security number",
        "For the tax form use {v}", "My son's SSN: {v}", "The W-2 lists {v}",
        "Put {v} in the benefits form", "HR has {v} on file for me",
    ],
    "US_ITIN": [
        "My ITIN is {v}.", "Taxpayer id {v}", "{v} is the ITIN the IRS gave me",
        "Use {v} on the 1040", "My wife's ITIN: {v}", "I file with {v}",
        "The accountant needs {v} again", "{v} goes on the W-7 renewal",
    ],
    "UK_NINO": [
        "My national insurance number is {v}.", "NI number {v}", "{v} is my NINO",
        "Payroll has {v} for me", "Put {v} on the HMRC form", "My NI: {v}",
        "The DWP letter quotes {v}", "Use {v} for the pension transfer",
    ],
    "ES_NIF": [
        "Mi DNI es {v}.", "My Spanish DNI is {v}", "NIF {v} for the invoice",
        "{v} is my DNI number", "The gestor needs {v}", "Use {v} on the padron form",
        "My NIF: {v}", "Factura a nombre de Ana, {v}",
    ],
    "ES_NIE": [
        "My NIE is {v}.", "NIE {v} for the rental contract", "{v} is my foreigner id in Spain",
        "The notary asked for {v}", "Use {v} for the bank in {c}", "My NIE: {v}",
        "Residency card number {v}", "My husband's NIE is {v}",
    ],
    "IT_FISCAL_CODE": [
        "Il mio codice fiscale è {v}.", "My codice fiscale is {v}", "CF {v} for the doctor",
        "{v} is my tax code in Italy", "Use {v} for the tessera sanitaria", "My fiscal code: {v}",
        "The commercialista needs {v}", "Put {v} on the rental contract in {c}",
    ],
    "FI_PERSONAL_IDENTITY_CODE": [
        "My henkilötunnus is {v}.", "Finnish personal identity code {v}", "{v} is my hetu",
        "Kela has {v} on file", "Use {v} for the clinic in {c}", "My hetu: {v}",
        "The bank in Helsinki asked for {v}", "My daughter's id code is {v}",
    ],
    "API_KEY": [
        "My OpenAI key is {v}.", "Use {v} for the bot", "{v} is the token for the CI",
        "Staging credentials: {v}", "I rotated the key, new one is {v}", "export the key {v} before running",
        "Deploy with {v}", "The old key {v} was revoked, I think",
    ],
    "API_KEY_GENERIC": [
        "My API key is {v}.", "token: {v}", "The webhook secret is {v}",
        "api_key={v}", "Access token for the dashboard: {v}", "client secret {v}",
        "the bearer token is {v}, keep it", "Home Assistant long-lived token {v}",
    ],
    "PRIVATE_KEY": [
        "Here is my deploy key:\n{v}\nkeep it safe.", "{v}", "server key below\n{v}",
        "my ssh key is {v} please store it", "Backup of the old TLS key: {v}",
        "I pasted the key here:\n\n{v}\n", "cert key for the NAS {v}", "Remember this key:\n{v}",
    ],
    "PASSWORD": [
        "My password is {v}.", "password: {v}", "The wifi password at home is {v}",
        "pwd={v}", "my gmail password is {v}", "passcode {v} for the alarm",
        "I changed the password to {v} yesterday", "the password for {s} is {v}",
        "Password is '{v}' for the router", "login: ana, password: {v}",
    ],
    "JWT": [
        "My session token is {v}.", "Authorization: Bearer {v}", "{v} is the JWT from the login call",
        "Paste {v} into the debugger", "the cookie had {v} in it", "jwt={v}",
        "Here is the id token {v}", "I got {v} back from the auth server",
    ],
}  # fmt: skip

# values that are only planted next to a context word (documented in the bench):
BARE_PHONE_TEMPLATES = ["Call me on {v}", "my mobile is {v}", "text me at {v}", "Phone {v} if the bell doesn't work"]

MULTI_TEMPLATES = [
    ("I moved to {c}; new phone {PHONE_NUMBER}, email {EMAIL_ADDRESS}.", ["PHONE_NUMBER", "EMAIL_ADDRESS"]),
    ("Card {CREDIT_CARD} and IBAN {IBAN_CODE} are both mine", ["CREDIT_CARD", "IBAN_CODE"]),
    ("login {EMAIL_ADDRESS} password: {PASSWORD}", ["EMAIL_ADDRESS", "PASSWORD"]),
    ("server {IP_ADDRESS}, deploy token {API_KEY}", ["IP_ADDRESS", "API_KEY"]),
    ("SSN {US_SSN}; call {PHONE_NUMBER} if there's a problem", ["US_SSN", "PHONE_NUMBER"]),
    ("My NIE is {ES_NIE} and my wife's DNI is {ES_NIF}.", ["ES_NIE", "ES_NIF"]),
    ("wallet {CRYPTO}, backup email {EMAIL_ADDRESS}", ["CRYPTO", "EMAIL_ADDRESS"]),
    ("{JWT} came from {IP_ADDRESS}", ["JWT", "IP_ADDRESS"]),
    ("NI {UK_NINO}, codice fiscale {IT_FISCAL_CODE}", ["UK_NINO", "IT_FISCAL_CODE"]),
    ("ITIN {US_ITIN}, hetu {FI_PERSONAL_IDENTITY_CODE}", ["US_ITIN", "FI_PERSONAL_IDENTITY_CODE"]),
    ("the key:\n{PRIVATE_KEY}\nand the passphrase is {PASSWORD}", ["PRIVATE_KEY", "PASSWORD"]),
]  # fmt: skip

MAKERS: dict[str, Callable[[random.Random], str]] = {
    "EMAIL_ADDRESS": make_email,
    "PHONE_NUMBER": make_phone,
    "CREDIT_CARD": make_card,
    "IBAN_CODE": make_iban,
    "IP_ADDRESS": lambda r: make_ipv4(r) if r.random() < 0.6 else make_ipv6(r),
    "CRYPTO": make_crypto,
    "US_SSN": make_ssn,
    "US_ITIN": make_itin,
    "UK_NINO": make_nino,
    "ES_NIF": make_nif,
    "ES_NIE": make_nie,
    "IT_FISCAL_CODE": make_fiscal_code,
    "FI_PERSONAL_IDENTITY_CODE": make_fi_code,
    "API_KEY": lambda r: r.choice(KEY_MAKERS)(r),
    "PRIVATE_KEY": make_pem,
    "PASSWORD": make_password,
    "JWT": make_jwt,
}


def render(template: str, values: dict[str, tuple[str, str]], rng: random.Random) -> dict[str, object]:
    """Fill ``{slot}`` markers; ``values`` maps slot -> (type, text)."""
    text, spans, pos = "", [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        text += template[pos : m.start()]
        slot = m.group(1)
        if slot == "c":
            text += rng.choice(CITIES)
        elif slot == "s":
            text += rng.choice(SERVICES)
        else:
            etype, value = values[slot]
            spans.append({"type": etype, "start": len(text), "end": len(text) + len(value)})
            text += value
        pos = m.end()
    text += template[pos:]
    return {"text": text, "spans": spans, "kind": "planted"}


def planted(rng: random.Random) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for etype, maker in MAKERS.items():
        templates = TEMPLATES[etype]
        for i in range(PER_TYPE):
            template = templates[i % len(templates)]
            if etype == "API_KEY" and i % 3 == 2:
                template = TEMPLATES["API_KEY_GENERIC"][(i // 3) % len(TEMPLATES["API_KEY_GENERIC"])]
                value = make_generic_secret(rng)
            elif etype == "API_KEY":
                value = KEY_MAKERS[i % len(KEY_MAKERS)](rng)
            else:
                value = maker(rng)
            out.append(render(template, {"v": (etype, value)}, rng))
    for i in range(8):
        value = make_phone(rng, bare=True)
        out.append(render(BARE_PHONE_TEMPLATES[i % 4], {"v": ("PHONE_NUMBER", value)}, rng))
    for i in range(33):
        template, types = MULTI_TEMPLATES[i % len(MULTI_TEMPLATES)]
        out.append(render(template, {t: (t, MAKERS[t](rng)) for t in types}, rng))
    return out


# ------------------------------------------------------------------------ clean

CLEAN_TEMPLATES: list[Callable[[random.Random], str]] = [
    lambda r: f"My order #{r.randint(10000, 999999)} should arrive on {r.randint(1, 28)}/{r.randint(1, 12)}/2024.",
    lambda r: f"Order number {r.randint(2000000000, 9999999999)} shipped today",
    lambda r: f"Invoice INV-{r.randint(2019, 2025)}-{r.randint(1, 99999):05d} is still unpaid",
    lambda r: f"The tracking number is 1Z{rand(r, 6, string.ascii_uppercase + string.digits)}{digits(r, 10)}",
    lambda r: f"We met on {r.randint(2015, 2024)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} in {r.choice(CITIES)}.",
    lambda r: f"Dinner is at {r.randint(6, 9)}:{r.choice(['00', '15', '30', '45'])}pm on Friday",
    lambda r: f"The meeting moved to {r.randint(8, 17):02d}:{r.choice(['00', '30'])} tomorrow",
    lambda r: f"The flat costs €{r.randint(600, 2400)} a month plus ${r.randint(10, 99)}.{r.randint(10, 99)} for internet",
    lambda r: f"I paid ${r.randint(1, 9)},{r.randint(100, 999)}.{r.randint(10, 99)} for the laptop",
    lambda r: f"We upgraded to Python 3.{r.randint(8, 13)}.{r.randint(0, 9)} and Django {r.randint(3, 5)}.{r.randint(0, 2)}",
    lambda r: f"The app is on version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 30)}.{r.randint(0, 999)}",
    lambda r: f"Firmware v{r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)} fixed the wifi bug",
    lambda r: f"I lived there between {r.randint(1990, 2010)} and {r.randint(2011, 2024)}",
    lambda r: f"My room is {r.randint(100, 1999)} on the {r.randint(2, 14)}th floor",
    lambda r: f"I run {r.randint(5, 42)} km a week, about {r.randint(10, 20)}-{r.randint(21, 30)} per month",
    lambda r: f"The zip code there is {r.randint(10000, 99999)}",
    lambda r: f"The ISBN of the book is 978-{r.randint(0, 1)}-{r.randint(100, 999)}-{r.randint(10000, 99999)}-{r.randint(0, 9)}",
    lambda r: f"The log starts at {r.randint(2020, 2024)}-0{r.randint(1, 9)}-1{r.randint(0, 9)}T{r.randint(10, 23)}:{r.randint(10, 59)}:00Z",
    lambda r: f"The unix timestamp was {r.randint(1500000000, 1799999999)}",
    lambda r: f"My gym card number is {make_bad_card(r)}, it's not a bank card",
    lambda r: f"The reference {make_bad_card(r)} is printed on the voucher",
    lambda r: f"That IBAN {make_iban(r, valid=False)} bounced, the check digits are wrong",
    lambda r: "I forgot my password again",
    lambda r: f"The password reset link for {r.choice(SERVICES)} expired",
    lambda r: "My password is too short according to the bank",
    lambda r: "I need a password manager, mine are all over the place",
    lambda r: f"Remind me to change the password on {r.choice(SERVICES)} next week",
    lambda r: "the wifi password is on the fridge",
    lambda r: f"Commit {rand(r, 40, '0123456789abcdef')} fixed the login bug",
    lambda r: f"The sha256 of the file is {rand(r, 64, '0123456789abcdef')}",
    lambda r: f"The request id was {rand(r, 8, '0123456789abcdef')}-{rand(r, 4, '0123456789abcdef')}-4{rand(r, 3, '0123456789abcdef')}-a{rand(r, 3, '0123456789abcdef')}-{rand(r, 12, '0123456789abcdef')}",
    lambda r: f"Read https://www.{r.choice(['bbc.co.uk', 'example.com', 'python.org'])}/news/{r.randint(1000, 99999)} later",
    lambda r: f"The docs are at https://docs.example.com/v{r.randint(1, 4)}/api?page={r.randint(1, 30)}",
    lambda r: f"I need to rotate my API key for {r.choice(SERVICES)} tomorrow",
    lambda r: "The token expired again, I had to log in twice",
    lambda r: "The key to the shed is under the blue pot",
    lambda r: "Keep the secret santa budget under 30 euros",
    lambda r: f"Flight TP{r.randint(100, 1999)} leaves from gate {r.randint(1, 60)} at {r.randint(10, 23)}:{r.randint(10, 59)}",
    lambda r: f"Our team won {r.randint(0, 5)}-{r.randint(0, 5)} last night",
    lambda r: f"The coordinates are {r.randint(30, 55)}.{digits(r, 4)}, -{r.randint(1, 9)}.{digits(r, 4)}",
    lambda r: f"Interest went up to {r.randint(1, 9)}.{r.randint(0, 99)}% this year",
    lambda r: f"My employee id is E{r.randint(10000, 99999)} and my desk is B-{r.randint(10, 99)}",
    lambda r: f"The package weighs {r.randint(1, 30)}.{r.randint(1, 9)} kg and measures {r.randint(10, 90)}x{r.randint(10, 90)} cm",
    lambda r: f"Booking reference {rand(r, 6, string.ascii_uppercase)} for the hotel in {r.choice(CITIES)}",
    lambda r: f"My kid was born in {r.randint(2005, 2022)} and started school in {r.randint(2010, 2024)}",
    lambda r: f"Court case {r.randint(2015, 2024)}/{r.randint(100, 9999)} was closed",
    lambda r: f"The serial number on the fridge is SN-{digits(r, 4)}-{digits(r, 4)}-{digits(r, 2)}",
    lambda r: f"Blood pressure was {r.randint(100, 140)}/{r.randint(60, 95)} at the check-up",
    lambda r: f"I bought {r.randint(2, 12)} tickets, seats {r.randint(1, 30)} to {r.randint(31, 60)}",
    lambda r: f"Ticket #{r.randint(100000, 9999999)} with support is still open",
    lambda r: f"I prefer tea to coffee and I'm allergic to peanuts since {r.randint(1995, 2015)}",
    lambda r: f"My parents live in {r.choice(CITIES)} and visit every {r.choice(['summer', 'Christmas', 'Easter'])}",
    lambda r: f"The Wi-Fi network is called Casa{r.randint(10, 99)} now",
    lambda r: f"Parcel locker code pickup on {r.randint(1, 28)}.{r.randint(1, 12)}.{r.randint(2023, 2025)}",
    lambda r: f"my laptop has {r.choice([8, 16, 32, 64])} GB of RAM and a {r.choice([256, 512, 1024])} GB SSD",
    lambda r: f"Order {r.randint(100, 999)}-{r.randint(1000000, 9999999)}-{r.randint(1000000, 9999999)} from Amazon arrived broken",
]  # fmt: skip

CLEAN_COUNT = 360


def clean(rng: random.Random) -> list[dict[str, object]]:
    return [
        {"text": CLEAN_TEMPLATES[i % len(CLEAN_TEMPLATES)](rng), "spans": [], "kind": "clean"}
        for i in range(CLEAN_COUNT)
    ]


# ------------------------------------------------- held-out error classes (v2)
# Added after an independent held-out evaluation; generated from their own
# seeded stream (seed + 2), so the rows above are unchanged.


def make_card_2series(rng: random.Random) -> str:
    body = str(rng.randint(2221, 2720)) + digits(rng, 11)
    num = body + luhn_digit(body)
    sep = rng.choice(["-", " ", "", "-"])
    return sep.join(num[i : i + 4] for i in range(0, 16, 4))


def make_bad_card_2series(rng: random.Random) -> str:
    body = str(rng.randint(2221, 2720)) + digits(rng, 11)
    bad = str((int(luhn_digit(body)) + rng.randint(1, 9)) % 10)
    num = body + bad
    return rng.choice(["-", " "]).join(num[i : i + 4] for i in range(0, 16, 4))


def make_hex_key(rng: random.Random) -> str:
    return rng.choice(["", "0x"]) + rand(rng, 64, "0123456789abcdef" if rng.random() < 0.8 else "0123456789ABCDEF")


def make_wif(rng: random.Random) -> str:
    secret = bytes(rng.randrange(256) for _ in range(32))
    if rng.random() < 0.4:
        return base58check(b"\x80" + secret)  # uncompressed: 5H/5J/5K, 51 chars
    return base58check(b"\x80" + secret + b"\x01")  # compressed: K/L, 52 chars


def make_xprv(rng: random.Random) -> str:
    payload = bytes.fromhex("0488ade4") + bytes(rng.randrange(256) for _ in range(41)) + b"\x00"
    return base58check(payload + bytes(rng.randrange(256) for _ in range(32)))


def make_bad_wif(rng: random.Random) -> str:
    wif = make_wif(rng)
    i = rng.randrange(5, len(wif) - 1)
    return wif[:i] + rng.choice([c for c in B58 if c != wif[i]]) + wif[i + 1 :]


def make_nif_sep(rng: random.Random) -> str:
    n = make_nif(rng)
    style = rng.random()
    if style < 0.4:
        return f"{n[:2]}.{n[2:5]}.{n[5:8]}-{n[8]}"
    if style < 0.7:
        return f"{n[:8]} {n[8]}"
    return f"{n[:8]}-{n[8]}"


def make_nie_sep(rng: random.Random) -> str:
    n = make_nie(rng)
    sep = rng.choice(["-", " "])
    return f"{n[0]}{sep}{n[1:8]}{sep}{n[8]}"


def make_strong_password(rng: random.Random) -> str:
    w = rng.choice([*PASSWORD_WORDS, "winter", "summer", "autumn", "dragon", "monkey"])
    return rng.choice([
        f"{w.capitalize()}#{rng.randint(2015, 2026)}",
        f"{w}{rng.randint(10, 999)}!",
        rand(rng, rng.randint(8, 14), ALNUM + "!#$%&*@"),
        f"{w.capitalize()}{rng.randint(1, 99)}",
    ])  # fmt: skip


def make_passphrase(rng: random.Random) -> str:
    words = ["purple", "monkey", "dishwasher", "correct", "horse", "battery", "staple", "blue", "river", "lantern", "tiger", "cactus"]
    return " ".join(rng.sample(words, rng.randint(3, 5)))


def make_code(rng: random.Random) -> str:
    return digits(rng, rng.choice([4, 4, 4, 5, 6]))


def make_slack_webhook(rng: random.Random) -> str:
    up = string.ascii_uppercase + string.digits
    return f"https://hooks.slack.com/services/T{rand(rng, 8, up)}/B{rand(rng, 10, up)}/{rand(rng, 24)}"


def make_discord_webhook(rng: random.Random) -> str:
    return f"https://discord.com/api/webhooks/{digits(rng, 18)}/{rand(rng, 68, ALNUM + '_-')}"


def make_lan_ip(rng: random.Random) -> str:
    return rng.choice([f"192.168.{rng.randint(0, 5)}.{rng.randint(2, 254)}", f"10.0.{rng.randint(0, 20)}.{rng.randint(2, 254)}"])


V2_PLANTED: list[tuple[str, dict[str, tuple[str, Callable[[random.Random], str]]]]] = [
    # 1. Mastercard 2-series
    *[(t, {"v": ("CREDIT_CARD", make_card_2series)}) for t in [
        "My new Mastercard is {v}, expires 11/28.", "paid the deposit with {v}", "card number: {v}",
        "{v} is the replacement card the bank sent", "Use the debit card {v} for online orders",
        "the Mastercard ending 4 digits, full number {v}",
    ]],
    # 2. crypto wallet private keys
    *[(t, {"v": ("PRIVATE_KEY", make_hex_key)}) for t in [
        "My wallet private key is {v}, never share it", "private key: {v}", "MetaMask private key {v}",
        "wallet key = {v}", "the seed for the old wallet is {v}", "ETH private key for the hot wallet: {v}",
        "privkey {v} (testnet only)", "Backup of my wallet key: {v}",
    ]],
    *[(t, {"v": ("PRIVATE_KEY", make_wif)}) for t in [
        "Bitcoin private key (WIF): {v}", "import {v} into Electrum", "{v} is the paper wallet key",
        "the WIF for the cold wallet is {v}", "sweep {v} before the fork",
    ]],
    *[(t, {"v": ("PRIVATE_KEY", make_xprv)}) for t in [
        "xprv for the multisig: {v}", "master extended key {v}",
    ]],
    # 3. passwords
    *[(t, {"v": ("PASSWORD", make_strong_password)}) for t in [
        "credentials admin / {v}", "Router credentials: admin/{v}", "creds for the staging db are root / {v}",
        "login: {u} / pass: {v}", "user {u} pass: {v}", "pass: {v}", "pw: {v}", "PW={v}",
        "My password is literally {v}", "the password is actually {v} now",
        "username and password: {u}:{v}", "Login for the NAS: {u} / {v}",
    ]],
    *[(t, {"v": ("PASSWORD", make_password)}) for t in [
        "pass: {v}", "pw: {v} (don't tell anyone)", "my password is literally {v}",
        "credentials are {u} / {v}", "creds: {u} / {v}",
    ]],
    *[(t, {"v": ("PASSWORD", make_passphrase)}) for t in [
        "The passphrase is '{v}'", "my wallet passphrase is \"{v}\"", "passphrase for the backup drive: '{v}'",
        "GPG passphrase \u201c{v}\u201d", "pass phrase is '{v}'",
    ]],
    *[(t, {"v": ("PASSWORD", make_code)}) for t in [
        "My PIN is {v}", "PIN: {v}", "bank card PIN {v}", "the SIM PIN code is {v}",
        "the door code is {v}", "Alarm code: {v}", "garage code is {v}, the gate code is the same",
        "front door code {v}", "the keypad code for the building is {v}", "the lockbox code at the cabin is {v}",
    ]],
    ("my password was {w} but I changed it to {v}", {"w": ("PASSWORD", make_strong_password), "v": ("PASSWORD", make_strong_password)}),
    ("The wifi password is {w}; I changed it to {v} after the party", {"w": ("PASSWORD", make_password), "v": ("PASSWORD", make_strong_password)}),
    ("I forgot my email password so I reset it to {v}", {"v": ("PASSWORD", make_strong_password)}),
    ("old password {w}, the new one is {v}", {"w": ("PASSWORD", make_strong_password), "v": ("PASSWORD", make_password)}),
    # 5. Spanish ids with separators
    *[(t, {"v": ("ES_NIF", make_nif_sep)}) for t in [
        "Mi DNI es {v}.", "NIF {v} for the invoice", "My DNI: {v}", "{v} is my Spanish tax id",
    ]],
    *[(t, {"v": ("ES_NIE", make_nie_sep)}) for t in [
        "My NIE is {v}.", "NIE {v} for the rental", "{v} is on my residency card", "The notary wrote {v}",
    ]],
    # 6. secrets in URLs
    *[(t, {"v": ("API_KEY", make_slack_webhook)}) for t in [
        "Slack webhook: {v}", "post alerts to {v}", "the incoming webhook is {v} for #ops",
    ]],
    ("Discord webhook {v}", {"v": ("API_KEY", make_discord_webhook)}),
    *[(t, {"v": ("PASSWORD", make_strong_password)}) for t in [
        "clone https://{u}:{v}@git.example.com/team/repo.git", "DATABASE_URL=postgres://{u}:{v}@db.internal:5432/app",
        "the feed is at https://{u}:{v}@feeds.example.org/rss", "ftp://{u}:{v}@files.example.net/backups",
    ]],
    # lookalikes next to real values
    ("The router at {v} runs firmware 2.0.0.1 now", {"v": ("IP_ADDRESS", make_lan_ip)}),
    ("ssh {v}; the mask is 255.255.255.0 and DNS is 8.8.8.8", {"v": ("IP_ADDRESS", make_lan_ip)}),
    # a NINO starting "PW" is not a password keyword
    ("my NI number is {v}", {"v": ("UK_NINO", lambda r: "PW " + " ".join(digits(r, 2) for _ in range(3)) + " " + r.choice("ABCD"))}),
    ("{v} is my national insurance number", {"v": ("UK_NINO", lambda r: "PW" + digits(r, 6) + r.choice("ABCD"))}),
]  # fmt: skip

USERS = ["admin", "root", "ana", "bob", "pi", "ubnt", "deploy", "maria.s"]

V2_CLEAN: list[Callable[[random.Random], str]] = [
    lambda r: f"We met on {r.randint(1, 28):02d}.{r.randint(1, 12):02d}.{r.randint(2019, 2025)} in {r.choice(CITIES)}",
    lambda r: f"The party is on {r.randint(1, 28)}.{r.randint(1, 12)}.{r.randint(23, 26)}, bring snacks",
    lambda r: f"Chrome is on {r.randint(110, 130)}.0.{r.randint(5000, 6999)}.{r.randint(10, 199)} after the update",
    lambda r: f"Windows {r.choice(['10', '11'])}.0.{r.randint(19041, 22631)}.{r.randint(1000, 4000)} broke the printer driver",
    lambda r: f"We updated to {r.randint(1, 4)}.0.0.{r.randint(1, 9)} last night",
    lambda r: f"The minimum is at least {r.randint(100, 130)}.0.0.0",
    lambda r: f"release {r.randint(1, 12)}.{r.randint(0, 9)}.{r.randint(0, 99)}.{r.randint(0, 999)} is tagged",
    lambda r: f"the build was tagged {r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 99)} yesterday",
    lambda r: f"The subnet mask is 255.255.{r.choice(['255.0', '0.0', '255.128', '255.252'])}",
    lambda r: f"Ship it to the office, ZIP {r.randint(10000, 99999)}-{r.randint(1000, 9999)}",
    lambda r: f"My lottery numbers are {' '.join(str(n) for n in sorted(r.sample(range(1, 50), 6)))}",
    lambda r: f"The docs use {r.choice(['192.0.2', '198.51.100', '203.0.113'])}.{r.randint(1, 254)} as the example host",
    lambda r: f"Set the DNS to {r.choice(['8.8.8.8', '1.1.1.1', '9.9.9.9', '8.8.4.4', '1.0.0.1'])} if pages don't load",
    lambda r: f"My card starts with {r.randint(2221, 2720)} but the voucher {make_bad_card_2series(r)} is not a card",
    lambda r: f"The sha256 of the wallet backup is {rand(r, 64, '0123456789abcdef')}",
    lambda r: f"Random seed {r.randint(1, 99999)} gave the best run",
    lambda r: f"The checksum {rand(r, 64, '0123456789abcdef')} matches the release",
    lambda r: f"The string {make_bad_wif(r)} failed to import, typo somewhere",
    lambda r: f"My boarding pass: {rand(r, 6, string.ascii_uppercase + string.digits)} for the {r.randint(6, 22)}:{r.choice(['05', '40'])} flight",
    lambda r: f"I got {r.randint(3, 9)} login attempts out of {r.randint(10, 12)} before the lockout",
    lambda r: "The credentials are in the vault, ask Maria",
    lambda r: "the door code changed again, ask the landlord",
    lambda r: f"The area code for {r.choice(CITIES)} is {r.randint(200, 999)}",
    lambda r: f"Pass the salt please, and {r.randint(2, 5)} eggs",
    lambda r: "I forgot my password so I reset it to the default",
    lambda r: f"The repo is at https://git.example.com/team/repo{r.randint(1, 99)}.git",
    lambda r: f"The hook URL is https://hooks.example.com/services/build/{r.randint(100, 999)}",
    lambda r: f"My PIN is {r.choice(['the usual one', 'on the card letter', 'four digits'])}",
]  # fmt: skip

V2_CLEAN_COUNT = 84


def planted_v2(rng: random.Random) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for template, slots in V2_PLANTED:
        values = {slot: (etype, maker(rng)) for slot, (etype, maker) in slots.items()}
        filled = re.sub(r"\{u\}", lambda _m: rng.choice(USERS), template)
        out.append(render(filled, values, rng))
    return out


def clean_v2(rng: random.Random) -> list[dict[str, object]]:
    return [{"text": V2_CLEAN[i % len(V2_CLEAN)](rng), "spans": [], "kind": "clean"} for i in range(V2_CLEAN_COUNT)]


def generate(seed: int = DEFAULT_SEED) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = planted(rng) + clean(rng)
    rng2 = random.Random(seed + 2)
    rows += planted_v2(rng2) + clean_v2(rng2)
    random.Random(seed + 1).shuffle(rows)
    return rows


def dumps(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    rows = generate(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(rows), encoding="utf-8")
    n_planted = sum(1 for r in rows if r["kind"] == "planted")
    print(f"wrote {len(rows)} rows ({n_planted} planted, {len(rows) - n_planted} clean) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
