"""Seeded generators of labelled PII in multi-locale sentences, and of number-heavy prose.

`labelled_corpus` puts one true value of a kind into an ordinary sentence: phones in E.164
and the national formats of twelve countries, IPv4 and IPv6 in every notation, IBANs of ten
countries with valid check digits, Luhn-valid cards, emails with plus tags and subdomains,
US SSNs, UK National Insurance numbers and secrets. `ordinary_corpus` writes sentences full
of numbers that are not personal data (dates, times, prices, versions, order numbers,
measurements, page references, years, percentages, coordinates, ISBNs...).
"""

from __future__ import annotations

import ipaddress
import random
import string
from collections.abc import Callable

Gen = Callable[[random.Random], str]


def _digits(rng: random.Random, n: int, first: str = string.digits) -> str:
    return rng.choice(first) + "".join(rng.choice(string.digits) for _ in range(n - 1))


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
            ("AT", d(16)),
            ("PL", d(24)),
            ("SE", d(20)),
            ("IE", u(4) + d(14)),
        ]
    )
    iban = _iban(country, bban)
    if rng.random() < 0.5:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def gen_email(rng: random.Random) -> str:
    first = rng.choice(["ann", "bob", "chen", "dmitri", "eva", "fatima", "li", "o.brien"])
    last = rng.choice(["smith", "garcia", "kowalski", "nguyen", "muller", "x", "99"])
    local = rng.choice(
        [
            first,
            f"{first}.{last}",
            f"{first}_{last}",
            f"{first}+news",
            f"{first}.{last}+{rng.choice(['billing', 'a1', 'x-y'])}",
            f"{first}{rng.randint(1, 999)}",
        ]
    )
    domain = rng.choice(
        [
            "example.com",
            "mail.example.org",
            "corp.co.uk",
            "uni-bonn.de",
            "x.io",
            "startup.ai",
            "eu.mail.big-corp.com",
            "dept.cs.uni.edu",
        ]
    )
    email = f"{local}@{domain}"
    return email.upper() if rng.random() < 0.05 else email


def _nanp(rng: random.Random) -> tuple[str, str, str]:
    return _digits(rng, 3, "23456789"), _digits(rng, 3, "23456789"), _digits(rng, 4)


PHONE_FORMATS: dict[str, list[Callable[[random.Random], str]]] = {
    "US": [
        lambda r: "({}) {}-{}".format(*_nanp(r)),
        lambda r: "{}-{}-{}".format(*_nanp(r)),
        lambda r: "{}.{}.{}".format(*_nanp(r)),
        lambda r: "{} {} {}".format(*_nanp(r)),
        lambda r: "1-{}-{}-{}".format(*_nanp(r)),
        lambda r: "+1 ({}) {}-{}".format(*_nanp(r)),
        lambda r: "+1 {} {} {}".format(*_nanp(r)),
        lambda r: "+1{}{}{}".format(*_nanp(r)),
    ],
    "UK": [
        lambda r: f"020 {_digits(r, 4, '378')} {_digits(r, 4)}",
        lambda r: f"(020) {_digits(r, 4, '378')} {_digits(r, 4)}",
        lambda r: f"07{_digits(r, 3)} {_digits(r, 6)}",
        lambda r: f"0161 {_digits(r, 3)} {_digits(r, 4)}",
        lambda r: f"+44 20 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"+44 (0)20 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"+44 7{_digits(r, 3)} {_digits(r, 6)}",
    ],
    "DE": [
        lambda r: f"030 {_digits(r, 8, '123456789')}",
        lambda r: f"0171 {_digits(r, 7, '123456789')}",
        lambda r: f"0171-{_digits(r, 7, '123456789')}",
        lambda r: f"(089) {_digits(r, 7, '123456789')}",
        lambda r: f"030/{_digits(r, 7, '123456789')}",
        lambda r: f"+49 30 {_digits(r, 8)}",
        lambda r: f"+49 (0)171 {_digits(r, 7)}",
        lambda r: f"+49 171 {_digits(r, 7)}",
    ],
    "FR": [
        lambda r: "0{} {} {} {} {}".format(r.randint(1, 9), *(_digits(r, 2) for _ in range(4))),
        lambda r: "0{}.{}.{}.{}.{}".format(r.randint(1, 7), *(_digits(r, 2) for _ in range(4))),
        lambda r: "+33 {} {} {} {} {}".format(r.randint(1, 9), *(_digits(r, 2) for _ in range(4))),
        lambda r: "+33 (0){} {} {} {} {}".format(
            r.randint(1, 9), *(_digits(r, 2) for _ in range(4))
        ),
    ],
    "IT": [
        lambda r: f"06 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"02 {_digits(r, 7)}",
        lambda r: f"+39 06 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"+39 3{_digits(r, 2)} {_digits(r, 3)} {_digits(r, 4)}",
    ],
    "ES": [
        lambda r: f"+34 9{_digits(r, 2)} {_digits(r, 3)} {_digits(r, 3)}",
        lambda r: f"+34 6{_digits(r, 2)} {_digits(r, 2)} {_digits(r, 2)} {_digits(r, 2)}",
        lambda r: f"0034 6{_digits(r, 8)}",
    ],
    "NL": [
        lambda r: f"020 {_digits(r, 3, '123456789')} {_digits(r, 4)}",
        lambda r: f"06 {_digits(r, 8, '123456789')}",
        lambda r: f"06-{_digits(r, 8, '123456789')}",
        lambda r: f"+31 20 {_digits(r, 3)} {_digits(r, 4)}",
        lambda r: f"+31 6 {_digits(r, 8)}",
    ],
    "AU": [
        lambda r: f"(02) {_digits(r, 4, '3456789')} {_digits(r, 4)}",
        lambda r: f"04{_digits(r, 2)} {_digits(r, 3)} {_digits(r, 3)}",
        lambda r: f"+61 2 {_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"+61 4{_digits(r, 2)} {_digits(r, 3)} {_digits(r, 3)}",
    ],
    "JP": [
        lambda r: f"03-{_digits(r, 4)}-{_digits(r, 4)}",
        lambda r: f"090-{_digits(r, 4)}-{_digits(r, 4)}",
        lambda r: f"+81 3-{_digits(r, 4)}-{_digits(r, 4)}",
        lambda r: f"+81 90 {_digits(r, 4)} {_digits(r, 4)}",
    ],
    "IN": [
        lambda r: f"+91 9{_digits(r, 4)} {_digits(r, 5)}",
        lambda r: f"+91-9{_digits(r, 9)}",
        lambda r: f"022 {_digits(r, 4, '23456789')} {_digits(r, 4)}",
        lambda r: f"09{_digits(r, 4)} {_digits(r, 5)}",
    ],
    "BR": [
        lambda r: f"({r.randint(11, 99)}) 9{_digits(r, 4)}-{_digits(r, 4)}",
        lambda r: f"({r.randint(11, 99)}) {_digits(r, 4, '2345')}-{_digits(r, 4)}",
        lambda r: f"+55 11 9{_digits(r, 4)} {_digits(r, 4)}",
        lambda r: f"+55 (21) 9{_digits(r, 4)}-{_digits(r, 4)}",
    ],
    "CH": [
        lambda r: f"044 {_digits(r, 3)} {_digits(r, 2)} {_digits(r, 2)}",
        lambda r: f"079 {_digits(r, 3)} {_digits(r, 2)} {_digits(r, 2)}",
        lambda r: f"+41 44 {_digits(r, 3)} {_digits(r, 2)} {_digits(r, 2)}",
    ],
}
"""Printed phone formats by country: national ones and E.164 with separators."""


def gen_phone(rng: random.Random) -> str:
    return rng.choice(PHONE_FORMATS[rng.choice(sorted(PHONE_FORMATS))])(rng)


def gen_ip(rng: random.Random) -> str:
    shape = rng.choice(["v4", "v4", "compressed", "full", "mixed", "link-local", "loopback"])
    if shape == "v4":
        return str(ipaddress.IPv4Address(rng.randint(1 << 24, (223 << 24) - 1)))
    if shape == "mixed":
        v4 = ipaddress.IPv4Address(rng.getrandbits(32))
        return rng.choice([f"::ffff:{v4}", f"64:ff9b::{v4}", f"::{v4}"])
    if shape == "link-local":
        addr = ipaddress.IPv6Address((0xFE80 << 112) | rng.getrandbits(64))
        zone = rng.choice(["", "%eth0", "%en0", "%3", "%wlan1"])
        return addr.compressed + zone
    if shape == "loopback":
        return "::1"
    zeros = rng.choice([0, 16, 32, 64, 80])
    addr = ipaddress.IPv6Address(rng.getrandbits(128) & ~((1 << zeros) - 1))
    if shape == "full":
        return addr.exploded if rng.random() < 0.5 else addr.exploded.upper()
    return addr.compressed


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


GENERATORS: dict[str, Gen] = {
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
    "CARD": ["card {}", "my Visa is {}", "charge {} please", "CC: {}", "paid with {} in May"],
    "EMAIL": ["write to {}", "email: <{}>", "cc {} and me", "from: {}", "contact ({})"],
    "IBAN": ["IBAN {}", "transfer to {}", "account: {}", "wire €1,200.00 to {}", "Konto {}"],
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
        "the office line {} is staffed",
        "reach Ana at {} or by mail",
        "Tel.: {}",
        "({})",
        "her new one, {}, works",
    ],
    "SECRET": ["key {}", "OPENAI_API_KEY={}", "token: {}", "use {} for auth", "export KEY='{}'"],
    "SSN": ["SSN {}", "social security number {}", "ssn: {}", "my SSN is {}", "SSN#{}"],
}
PREFIXES = [
    "",
    "Hi team, ",
    "Re: order #4471-22 — ",
    "On 2024-05-01 at 10:30, ",
    "Note (v2.3.1): ",
    "Total $1,299.00; ",
    "Page 12 of 40. ",
    "Bonjour, ",
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
    " before 5 pm on 12/03/2025.",
    " (ext. 12)",
]


def labelled_corpus(n_per_kind: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """(text, kind, value) triples: one true value of `kind` inside varied ordinary text."""
    rng = random.Random(seed)
    out = []
    for kind, gen in GENERATORS.items():
        for _ in range(n_per_kind):
            value = gen(rng)
            context = rng.choice(CONTEXTS[kind]).format(value)
            out.append((rng.choice(PREFIXES) + context + rng.choice(SUFFIXES), kind, value))
    return out


def ordinary_corpus(n: int, seed: int = 11) -> list[str]:
    """`n` sentences full of numbers, none of them personal data."""
    rng = random.Random(seed)
    makers = _ordinary_makers(rng)
    return [rng.choice(makers)() for _ in range(n)]


def _ordinary_makers(rng: random.Random) -> list[Callable[[], str]]:
    r = rng.randint
    h = rng.getrandbits
    return [
        lambda: (
            f"Released v{r(0, 9)}.{r(0, 30)}.{r(0, 99)} on {r(2015, 2025)}-{r(1, 12):02d}-"
            f"{r(1, 28):02d}."
        ),
        lambda: (
            f"It costs ${r(1, 9)},{r(100, 999)}.{r(0, 99):02d} incl. VAT (was €{r(10, 999)},"
            f"{r(0, 99):02d})."
        ),
        lambda: (
            f"Your order #{r(1000, 9999)}-{r(10, 99)} ships {r(1, 28)}/{r(1, 12)}/{r(2020, 2026)}."
        ),
        lambda: f"Meeting at {r(0, 23)}:{r(0, 59):02d} in room {r(100, 999)}.",
        lambda: f"ISBN 978-{r(0, 9)}-{r(10, 99)}-{r(100000, 999999)}-{r(0, 9)} is out of print.",
        lambda: f"ISBN {r(978, 979)}{r(1000000000, 9999999999)}",
        lambda: f"ISBN 0-{r(100, 999)}-{r(10000, 99999)}-{r(0, 9)} (paperback).",
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
        lambda: f"GPS {r(0, 89)}°{r(0, 59)}'{r(0, 59)}\"N {r(0, 179)}°{r(0, 59)}'{r(0, 59)}\"E",
        lambda: f"Tracking number 1Z{r(100, 999)}AA{r(10000000, 99999999)}{r(0, 9)}.",
        lambda: (
            f"Build {r(1000, 99999)} passed {r(0, 5000)} of {r(5000, 9000)} tests in "
            f"{r(1, 59)}m{r(0, 59)}s."
        ),
        lambda: f"Scored {r(0, 100)}/100 on {r(1, 31)}.{r(1, 12)}.{r(2000, 2024)}.",
        lambda: f"SKU AB-{r(10000, 99999)}, qty {r(1, 500)}, batch {r(100000, 999999)}.",
        lambda: (
            f"Between {r(1900, 1999)}-{r(2000, 2024)} the ratio was {r(1, 9)}:{r(1, 9)}:{r(1, 9)}."
        ),
        lambda: (
            f"Timestamp {r(2000, 2030)}-{r(1, 12):02d}-{r(1, 28):02d}T{r(0, 23):02d}:"
            f"{r(0, 59):02d}:{r(0, 59):02d}Z logged."
        ),
        lambda: f"UUID {h(32):08x}-{h(16):04x}-{h(16):04x}-{h(16):04x}-{h(48):012x}.",
        lambda: f"sha256 {h(256):064x}",
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
        lambda: (
            f"Am {r(1, 28):02d}.{r(1, 12):02d}.{r(2000, 2030)} um {r(0, 23)}:{r(0, 59):02d} Uhr."
        ),
        lambda: (
            f"Le {r(1, 28):02d}/{r(1, 12):02d}/{r(2000, 2030)}, prix {r(1, 999)},{r(0, 99):02d} €."
        ),
        lambda: f"Room is {r(2, 30)}.{r(0, 9)} m x {r(2, 30)}.{r(0, 9)} m, {r(10, 900)} sq ft.",
        lambda: (
            f"Growth was {r(0, 99)}.{r(0, 9)}% in Q{r(1, 4)} {r(1990, 2030)} vs "
            f"{r(0, 99)}.{r(0, 9)}% a year earlier."
        ),
        lambda: f"See pp. {r(1, 500)}-{r(500, 999)} and fig. {r(1, 20)}.{r(1, 20)}.",
        lambda: f"In {r(1800, 2030)}, {r(1, 99)} {r(100, 999)} {r(100, 999)} people voted.",
        lambda: (
            f"Python {r(2, 3)}.{r(0, 13)}.{r(0, 20)} and Node {r(10, 22)}.{r(0, 20)}."
            f"{r(0, 20)} installed."
        ),
        lambda: f"Case no. {r(10000000, 99999999)} was closed on {r(1, 28)} May {r(2000, 2030)}.",
        lambda: (
            f"The ratio {r(1, 9)}.{r(0, 999):03d} ± {r(0, 9)}.{r(0, 999):03d} holds at "
            f"{r(1, 99)} kHz."
        ),
        lambda: f"Serial {r(1000, 9999)} {r(1000, 9999)} {r(1000, 9999)} on the label.",
        lambda: f"Reference {r(0, 9)}{r(10000000, 99999999)} was cited.",
        lambda: (
            f"Between {r(1, 12)}:{r(0, 59):02d} and {r(1, 12)}:{r(0, 59):02d} on "
            f"{r(2000, 2030)}/{r(1, 12):02d}/{r(1, 28):02d}."
        ),
        lambda: f"Weight {r(1, 200)}.{r(0, 9)} kg, height {r(100, 220)} cm, BMI {r(15, 40)}",
        lambda: f"Scores: {r(0, 99)}, {r(0, 99)}, {r(0, 99)}, {r(0, 99)} and {r(0, 99)}.",
        lambda: f"Budget {r(1, 999)} {r(100, 999)} {r(100, 999)} EUR for {r(2024, 2030)}.",
        lambda: (
            f"Dated {r(1, 28):02d} {r(1, 12):02d} {r(2000, 2030)} {r(0, 23):02d} {r(0, 59):02d}."
        ),
        lambda: f"Order {r(100, 899)}-{r(10, 99)}-{r(1000, 9999)} shipped in {r(2, 9)} boxes.",
        lambda: f"Lines {r(1, 999)}\u2013{r(1000, 2000)} of file main.py, commit {h(28):07x}.",
    ]
