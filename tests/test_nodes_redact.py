"""The `redact` node: typed placeholders, stable numbering, restore, and detection quality
on a generated labelled corpus (recall per kind) and on ordinary number-heavy text (false
positives)."""

from __future__ import annotations

import ipaddress
import random
import string
from collections import Counter
from collections.abc import Callable

import pytest
from _nodes_fakes import FakeRuntime, run_node

from nodes._pii import KINDS, detect
from nodes.redact import PiiVault, RedactNode

pytestmark = pytest.mark.anyio

# ---------------------------------------------------------------- generators of true PII


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body + "0")):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def gen_card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "mc", "mc2", "amex", "discover", "visa13"])
    if kind == "amex":
        n = _luhn_complete(rng.choice(["34", "37"]), 15, rng)
        return rng.choice([n, f"{n[:4]} {n[4:10]} {n[10:]}", f"{n[:4]}-{n[4:10]}-{n[10:]}"])
    prefix = {
        "visa": "4",
        "visa13": "4",
        "mc": str(rng.randint(51, 55)),
        "mc2": str(rng.randint(2221, 2720)),
        "discover": "6011",
    }[kind]
    n = _luhn_complete(prefix, 13 if kind == "visa13" else 16, rng)
    if len(n) == 13:
        return n
    sep = rng.choice(["", " ", "-"])
    return sep.join(n[i : i + 4] for i in range(0, 16, 4))


def _iban(country: str, bban: str) -> str:
    digits = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


def gen_iban(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    u = lambda n: "".join(rng.choice(string.ascii_uppercase) for _ in range(n))  # noqa: E731
    country, bban = rng.choice(
        [
            ("DE", d(18)),
            ("GB", u(4) + d(14)),
            ("NL", u(4) + d(10)),
            ("FR", d(10) + u(1) + d(10) + d(2)),
            ("ES", d(20)),
            ("IT", u(1) + d(10) + d(12)),
            ("BE", d(12)),
            ("CH", d(17)),
        ]
    )
    iban = _iban(country, bban)
    if rng.random() < 0.5:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def gen_email(rng: random.Random) -> str:
    first = rng.choice(["ann", "bob", "chen", "dmitri", "eva", "fatima", "li", "o.brien"])
    last = rng.choice(["smith", "garcia", "kowalski", "nguyen", "müller", "x", "99"])
    last = last.replace("ü", "u")
    local = rng.choice(
        [
            first,
            f"{first}.{last}",
            f"{first}_{last}",
            f"{first}+news",
            f"{first}{rng.randint(1, 999)}",
        ]
    )
    domain = rng.choice(
        ["example.com", "mail.example.org", "corp.co.uk", "uni-bonn.de", "x.io", "startup.ai"]
    )
    email = f"{local}@{domain}"
    return email.upper() if rng.random() < 0.05 else email


def gen_phone(rng: random.Random) -> str:
    area = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
    exch = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
    line = f"{rng.randint(0, 9999):04d}"
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"+1 ({area}) {exch}-{line}",
            f"+1-{area}-{exch}-{line}",
            f"({area}) {exch}-{line}",
            f"{area}-{exch}-{line}",
            f"{area}.{exch}.{line}",
            f"1-{area}-{exch}-{line}",
            f"+44 20 {d(4)} {d(4)}",
            f"+44 7{d(3)} {d(6)}",
            f"020 {d(4)} {d(4)}",
            f"07{d(3)} {d(6)}",
            f"+49 30 {d(8)}",
            f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"+91 9{d(4)} {d(5)}",
            f"+{rng.randint(30, 99)}{d(9)}",
        ]
    )


def gen_ip(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return str(ipaddress.IPv4Address(rng.randint(1 << 24, (223 << 24) - 1)))
    addr = ipaddress.IPv6Address(rng.getrandbits(128) & ~((1 << rng.choice([0, 32, 64])) - 1))
    return addr.compressed if rng.random() < 0.7 else addr.exploded


def gen_ssn(rng: random.Random) -> str:
    area = rng.choice([rng.randint(1, 665), rng.randint(667, 899)])
    n = f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    return n if rng.random() < 0.8 else n.replace("-", " ")


def gen_nino(rng: random.Random) -> str:
    first = rng.choice("ABCEGHJKLMNOPRSTWXYZ")
    second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    if first + second in {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}:
        first, second = "A", "B"
    d = f"{rng.randint(0, 999999):06d}"
    suffix = rng.choice("ABCD")
    if rng.random() < 0.5:
        return f"{first}{second}{d}{suffix}"
    return f"{first}{second} {d[:2]} {d[2:4]} {d[4:]} {suffix}"


def gen_secret(rng: random.Random) -> str:
    an = string.ascii_letters + string.digits
    r = lambda n, chars=an: "".join(rng.choice(chars) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"sk-{r(48)}",
            f"sk-proj-{r(40)}",
            f"AKIA{r(16, string.ascii_uppercase + string.digits)}",
            f"ghp_{r(36)}",
            f"xoxb-{r(12, string.digits)}-{r(24)}",
            f"AIza{r(35)}",
            f"sk_live_{r(24)}",
        ]
    )


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "CARD": gen_card,
    "EMAIL": gen_email,
    "IBAN": gen_iban,
    "IP": gen_ip,
    "NINO": gen_nino,
    "PHONE": gen_phone,
    "SECRET": gen_secret,
    "SSN": gen_ssn,
}

CONTEXTS = {
    "CARD": [
        "card {}",
        "my Visa is {}",
        "charge {} please",
        "CC: {}",
        "paid with {} on 2024-05-01",
    ],
    "EMAIL": ["write to {}", "email: <{}>", "cc {} and me", "from: {}", "contact ({})"],
    "IBAN": ["IBAN {}", "transfer to {}", "account: {}", "wire €1,200.00 to {}"],
    "IP": ["server {}", "ssh into {} now", "blocked ip={}", "from [{}]", "host {} at 10:30"],
    "NINO": ["NI number {}", "my national insurance no is {}", "NINO: {}", "ref {}"],
    "PHONE": [
        "call {}",
        "phone: {}",
        "ring me on {}",
        "mobile {} after 6pm",
        "tel. {}",
        "my number is {}",
        "{} (office)",
    ],
    "SECRET": ["key {}", "OPENAI_API_KEY={}", "token: {}", "use {} for auth", "export KEY='{}'"],
    "SSN": ["SSN {}", "social security number {}", "ssn: {}", "my SSN is {}"],
}
PREFIXES = [
    "",
    "Hi team, ",
    "Re: order #4471-22 — ",
    "On 2024-05-01 at 10:30, ",
    "Note (v2.3.1): ",
    "Total $1,299.00; ",
]
SUFFIXES = [
    "",
    ".",
    ", thanks!",
    " — see ticket JIRA-1234.",
    "; ISBN 978-3-16-148410-0 attached.",
    "\n",
    "?",
    ")",
]


def labelled_corpus(n_per_kind: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """(text, kind, value) triples: one true value of `kind` inside varied ordinary text."""
    rng = random.Random(seed)
    out = []
    for kind, gen in GENERATORS.items():
        for _ in range(n_per_kind):
            value = gen(rng)
            text = (
                rng.choice(PREFIXES)
                + rng.choice(CONTEXTS[kind]).format(value)
                + rng.choice(SUFFIXES)
            )
            out.append((text, kind, value))
    return out


# ------------------------------------------------------------ ordinary number-heavy text


def ordinary_corpus(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    r = rng.randint
    makers: list[Callable[[], str]] = [
        lambda: (
            f"Released v{r(0, 9)}.{r(0, 30)}.{r(0, 99)} on "
            f"{r(2015, 2025)}-{r(1, 12):02d}-{r(1, 28):02d}."
        ),
        lambda: (
            f"It costs ${r(1, 9)},{r(100, 999)}.{r(0, 99):02d} incl. VAT "
            f"(was €{r(10, 999)},{r(0, 99):02d})."
        ),
        lambda: (
            f"Your order #{r(1000, 9999)}-{r(10, 99)} ships {r(1, 28)}/{r(1, 12)}/{r(2020, 2026)}."
        ),
        lambda: f"Meeting at {r(0, 23)}:{r(0, 59):02d} in room {r(100, 999)}.",
        lambda: f"ISBN 978-{r(0, 9)}-{r(10, 99)}-{r(100000, 999999)}-{r(0, 9)} is out of print.",
        lambda: f"ISBN {r(978, 979)}{r(1000000000, 9999999999)}",
        lambda: f"Invoice INV-{r(2019, 2025)}-{r(0, 99999):05d} is due in {r(7, 90)} days.",
        lambda: (
            f"Population grew to {r(1, 999)},{r(0, 999):03d},{r(0, 999):03d} by {r(1900, 2024)}."
        ),
        lambda: f"See section {r(1, 9)}.{r(1, 9)}.{r(1, 9)}.{r(1, 9)} of RFC {r(1000, 9999)}.",
        lambda: f"Upgrade to version {r(1, 20)}.{r(0, 9)}.{r(0, 99)}.{r(0, 99)} before Friday.",
        lambda: (
            f"Temperature {r(-30, 45)}.{r(0, 9)}°C, humidity {r(0, 100)}%, wind {r(0, 99)} km/h."
        ),
        lambda: f"Coordinates {r(-89, 89)}.{r(0, 9999):04d}, {r(-179, 179)}.{r(0, 9999):04d}.",
        lambda: f"Tracking number 1Z{r(100, 999)}AA{r(10000000, 99999999)}{r(0, 9)}.",
        lambda: (
            f"Build {r(1000, 99999)} passed {r(0, 5000)} of {r(5000, 9000)} tests "
            f"in {r(1, 59)}m{r(0, 59)}s."
        ),
        lambda: f"Scored {r(0, 100)}/{r(100, 100)} on {r(1, 31)}.{r(1, 12)}.{r(2000, 2024)}.",
        lambda: f"SKU AB-{r(10000, 99999)}, qty {r(1, 500)}, batch {r(100000, 999999)}.",
        lambda: (
            f"Between {r(1900, 1999)}-{r(2000, 2024)} the ratio was {r(1, 9)}:{r(1, 9)}:{r(1, 9)}."
        ),
        lambda: (
            f"Timestamp {r(2000, 2030)}-{r(1, 12):02d}-{r(1, 28):02d}"
            f"T{r(0, 23):02d}:{r(0, 59):02d}:{r(0, 59):02d}Z logged."
        ),
        lambda: (
            f"UUID {rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-"
            f"{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}-{rng.getrandbits(48):012x}."
        ),
        lambda: f"sha256 {rng.getrandbits(256):064x}",
        lambda: (
            f"Chapter {r(1, 30)}, pages {r(1, 400)}-{r(400, 900)}; {r(1, 12)} x {r(1, 12)} = grid."
        ),
        lambda: f"Zip {r(10000, 99999)}, PO Box {r(100, 9999)}, {r(1, 999)} Main St.",
        lambda: f"Order {r(100, 999)}-{r(1000000, 9999999)}-{r(1000000, 9999999)} was refunded.",
        lambda: (
            f"The {r(1, 9)}.{r(0, 9)}.{r(0, 9)}.{r(0, 9)} dotted version of the OID tree is odd."
        ),
        lambda: f"Account balance {r(1, 99)} {r(100, 999)} {r(100, 999)},{r(0, 99):02d} kr.",
        lambda: f"Flight LH{r(100, 9999)} departs {r(0, 23):02d}:{r(0, 59):02d} gate B{r(1, 60)}.",
    ]
    return [rng.choice(makers)() for _ in range(n)]


# -------------------------------------------------------------------------- the tests


def test_detection_recall_per_kind_on_generated_corpus() -> None:
    corpus = labelled_corpus(300)
    assert len(corpus) >= 2000
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    misses: dict[str, list[str]] = {}
    for text, kind, value in corpus:
        totals[kind] += 1
        start = text.index(value)
        spans = detect(text)
        if any(s.kind == kind and s.start == start and s.end == start + len(value) for s in spans):
            hits[kind] += 1
        else:
            misses.setdefault(kind, []).append(text)
    for kind in totals:
        recall = hits[kind] / totals[kind]
        assert recall >= 0.98, (kind, recall, misses.get(kind, [])[:5])


def test_false_positives_on_number_heavy_text_are_under_one_percent() -> None:
    corpus = ordinary_corpus(3000)
    flagged = [(t, detect(t)) for t in corpus if detect(t)]
    assert len(flagged) / len(corpus) < 0.01, flagged[:10]


def test_validators_reject_lookalikes() -> None:
    assert detect("card 4111 1111 1111 1112") == []  # Luhn fails
    assert detect("IBAN GB82 WEST 1234 5698 7654 33") == []  # mod-97 fails
    assert detect("ip 256.1.1.1 and 10:30:45") == []
    assert detect("ssn 666-12-3456 or 900-12-3456 or 123-00-4567") == []
    assert detect("NI GB123456A") == []  # GB is not an allowed prefix
    assert [s.kind for s in detect("IBAN GB82 WEST 1234 5698 7654 32")] == ["IBAN"]
    assert [s.kind for s in detect("password=hunter22 ok")] == ["SECRET"]


async def test_redact_numbers_placeholders_per_kind_and_reuses_them() -> None:
    rt = FakeRuntime()
    text = (
        "Mail ann@example.com or bob@example.org; ann@example.com again. "
        "Call (415) 555-0132 or 415.555.0132. Card 4111 1111 1111 1111."
    )
    out = await run_node(RedactNode(), {"text": text}, rt)
    assert out.text == (
        "Mail [EMAIL_1] or [EMAIL_2]; [EMAIL_1] again. Call [PHONE_1] or [PHONE_1]. Card [CARD_1]."
    )
    assert out.found == {"CARD": 1, "EMAIL": 3, "PHONE": 2}
    assert out.count == 6
    ev = rt.last("PII_REDACTED")
    assert ev.decision == "redacted"
    assert ev.reason_codes == ["PII_CARD", "PII_EMAIL", "PII_PHONE"]
    assert "ann@example.com" not in repr(ev.payload)


async def test_restore_puts_originals_back_within_the_request_only() -> None:
    rt = FakeRuntime()
    node = RedactNode()
    red = await run_node(node, {"text": "I am ann@example.com, SSN 123-45-6789"}, rt)
    answer = f"Dear {red.text.split()[2].rstrip(',')}, we got [SSN_1] and [EMAIL_9]."
    back = await run_node(RedactNode(), {"mode": "restore", "text": answer}, rt)
    assert back.text == "Dear ann@example.com, we got 123-45-6789 and [EMAIL_9]."
    assert back.found == {"EMAIL": 1, "SSN": 1}
    other = await run_node(RedactNode(), {"mode": "restore", "text": answer}, FakeRuntime())
    assert other.text == answer  # another request has no mapping


async def test_clean_text_emits_clean_decision_and_kinds_filter() -> None:
    rt = FakeRuntime()
    out = await run_node(RedactNode(), {"text": "v2.3.1 shipped 2024-05-01 for $1,299.00"}, rt)
    assert out.text == "v2.3.1 shipped 2024-05-01 for $1,299.00"
    assert rt.last("PII_REDACTED").decision == "clean"
    only = await run_node(
        RedactNode(), {"text": "a@b.io from 10.0.0.1", "kinds": ["IP"]}, FakeRuntime()
    )
    assert only.text == "a@b.io from [IP_1]"


def test_vault_repr_hides_values() -> None:
    vault = PiiVault()
    vault.redact("x@y.com", frozenset(KINDS))
    assert "x@y.com" not in repr(vault)
