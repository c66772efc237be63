"""Synthetic PII for the demo corpus: valid values (must be redacted) and look-alikes (must be left alone).

Check digits are computed here independently of jobs.data.pii, so the corpus tests the validators rather
than echoing them.
"""

from __future__ import annotations

import ipaddress
import random
import string

FIRST = "anna ben clara david elena felix grace henry iris james karen leo maya noah olivia peter".split()
LAST = "smith jones brown garcia miller davis wilson moore taylor thomas white harris martin clark lewis".split()
DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "post.example.co.uk")

# Country -> BBAN layout: a string of 'n' (digit), 'a' (upper letter), 'c' (digit or upper letter).
IBAN_LAYOUTS = {
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "FR": "n" * 10 + "c" * 11 + "nn",
    "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20,
    "IT": "a" + "n" * 10 + "c" * 12,
}


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def luhn_digit(payload: str) -> str:
    """The check digit that makes payload + digit pass Luhn."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def _card_digits(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("34", 15), ("6011", 16)])
    payload = prefix + _digits(rng, length - len(prefix) - 1)
    return payload + luhn_digit(payload)


def _group_card(number: str, sep: str) -> str:
    sizes = (4, 6, 5) if len(number) == 15 else (4, 4, 4, 4)
    parts, i = [], 0
    for size in sizes:
        parts.append(number[i : i + size])
        i += size
    return sep.join(parts)


def card(rng: random.Random, valid: bool = True) -> str:
    number = _card_digits(rng)
    if not valid:  # any change of the last digit breaks Luhn
        number = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    return _group_card(number, rng.choice([" ", "-", ""]))


def ssn(rng: random.Random, valid: bool = True) -> str:
    area, group, serial = rng.randint(1, 899), rng.randint(1, 99), rng.randint(1, 9999)
    while area == 666:
        area = rng.randint(1, 899)
    if not valid:
        rule = rng.choice(["area0", "area666", "area9", "group", "serial"])
        area = {"area0": 0, "area666": 666, "area9": rng.randint(900, 999)}.get(rule, area)
        group = 0 if rule == "group" else group
        serial = 0 if rule == "serial" else serial
    return f"{area:03d}-{group:02d}-{serial:04d}"


def _iban_check(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(ch, 36)) for ch in rearranged))
    return f"{98 - number % 97:02d}"


def iban(rng: random.Random, valid: bool = True) -> str:
    country = rng.choice(sorted(IBAN_LAYOUTS))
    pools = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + string.ascii_uppercase}
    bban = "".join(rng.choice(pools[kind]) for kind in IBAN_LAYOUTS[country])
    check = _iban_check(country, bban)
    if not valid:
        check = f"{(int(check) + rng.randint(1, 90)) % 100:02d}"
        if check in ("00", "01", "99"):
            check = f"{(int(check) + 3) % 100:02d}"
    compact = country + check + bban
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def email(rng: random.Random) -> str:
    user = f"{rng.choice(FIRST)}.{rng.choice(LAST)}"
    if rng.random() < 0.5:
        user += str(rng.randint(1, 99))
    return f"{user}@{rng.choice(DOMAINS)}"


# Area codes in service (a random one may be unassigned, and a number there does not exist).
US_AREA_CODES = (202, 206, 212, 303, 305, 312, 404, 415, 512, 617, 702, 718, 805, 916)


def phone(rng: random.Random) -> str:
    d = lambda n: _digits(rng, n)  # noqa: E731
    area = lambda: rng.choice(US_AREA_CODES)  # noqa: E731
    formats = [
        lambda: f"+44 20 7946 {d(4)}",
        lambda: f"+1-202-555-{d(4)}",
        lambda: f"({area()}) 555-{d(4)}",
        lambda: f"020 7946 {d(4)}",
        lambda: f"+1 {area()} {rng.randint(2, 9)}{d(2)} {d(4)}",
        lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"{area()}-555-{d(4)}",
        lambda: f"+49 30 {d(8)}",
    ]
    return rng.choice(formats)()


def phone_lookalike(rng: random.Random) -> str:
    """Number-shaped text a corpus is full of that is no phone number: a timestamp, an ID, a ZIP+4 code."""
    formats = [
        lambda: f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        lambda: f"{rng.randint(1000, 9999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        lambda: f"{rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}",
    ]
    return rng.choice(formats)()


def ipv4(rng: random.Random, valid: bool = True) -> str:
    octets = [rng.randint(1, 254) for _ in range(4)]
    if not valid:
        octets[rng.randrange(4)] = rng.randint(256, 999)
    return ".".join(map(str, octets))


def ipv6(rng: random.Random) -> str:
    return str(ipaddress.IPv6Address(rng.getrandbits(128) | (0x2001 << 112)))


def aws_access_key(rng: random.Random) -> str:
    return "AKIA" + "".join(rng.choice(string.ascii_uppercase + "234567") for _ in range(16))


def aws_secret_key(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "/+") for _ in range(40))


def github_token(rng: random.Random) -> str:
    return "ghp_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(36))


def private_key_block(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "+/"
    body = ["".join(rng.choice(alphabet) for _ in range(64)) for _ in range(4)]
    return "\n".join(["-----BEGIN RSA PRIVATE KEY-----", *body, "-----END RSA PRIVATE KEY-----"])
