"""The documents bench/pii.py measures on: a labelled set made with Faker, and real text nobody here wrote.

Labelled set. Positives are multi-sentence documents (names, addresses, dates, amounts, order numbers around
them) with one to three PII values each. Phone numbers come from Faker in 14 locales, in the locale's own
national format as Faker writes it, and rewritten by hand into the international forms people use
(`+44 20 …`, `+44 (0)20 …`, `0044 20 …`). Faker fills a number's digits at random, so some of its numbers
could never be dialled (US area code 123); those are dropped from the positives and counted in the report.
Negatives, as many documents as the positives, are records full of number-shaped text that is not PII: log
lines with timestamps, invoices, package versions with hashes, parcel tracking numbers, coordinates, match
scores, ISBNs, UUIDs, commit ids, addresses with postcodes, ZIP+4 codes, Unix times and ID numbers.

Real text: the METADATA files of the installed Python packages (READMEs with authors' e-mail addresses,
version tables, dates, hashes, URLs). Nobody labelled them, so the bench reports what each tool redacts
there, per type and per megabyte, with examples: a phone number, card or SSN found in a package README is
almost always a false positive.
"""

from __future__ import annotations

import ipaddress
import random
import string
import sys
from collections.abc import Callable
from pathlib import Path

Span = tuple[int, int, str]
Doc = tuple[str, list[Span]]

# Faker locale -> (libphonenumber region, country calling code, trunk prefix written before national numbers)
PHONE_LOCALES = {
    "en_US": ("US", 1, "1"), "en_GB": ("GB", 44, "0"), "de_DE": ("DE", 49, "0"), "fr_FR": ("FR", 33, "0"),
    "es_ES": ("ES", 34, ""), "it_IT": ("IT", 39, ""), "nl_NL": ("NL", 31, "0"), "pt_BR": ("BR", 55, "0"),
    "en_AU": ("AU", 61, "0"), "pl_PL": ("PL", 48, ""), "sv_SE": ("SE", 46, "0"), "de_CH": ("CH", 41, "0"),
    "ja_JP": ("JP", 81, "0"), "en_IN": ("IN", 91, "0"),
}  # fmt: skip
TYPES = ("EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN", "SECRET")

TEMPLATES = {
    "EMAIL": ("Write to {name} at {v} for the minutes.", "Contact: {v}", "{name} <{v}> signed the form.",
              "Replies went to {v} until the office moved."),
    "PHONE": ("You can reach {name} at {v}.", "Tel. {v}", "{name}, {city}: {v}", "Phone: {v} (mornings only).",
              "For bookings call {v} or write to the office.", "Mobile {v}", "{v} is the number on her card.",
              "Please ring {v} if the delivery is late.", "Contact: {name} / {v}", "Fax {v}",
              "Office hours 9-17, telephone {v}."),
    "IP_ADDRESS": ("The server at {v} stopped answering at {time}.", "A login from {v} was blocked.",
                   "Forward port 8443 to {v} on the gateway."),
    "CREDIT_CARD": ("Card number {v} was charged {price}.", "{name} paid with {v} last week.",
                    "Use card {v}, expiry 09/27, for the deposit."),
    "US_SSN": ("SSN {v} is on the form.", "Social security number: {v}.", "{name} ({v}) filed on {date}."),
    "IBAN": ("Transfer the rent to {v} please.", "IBAN: {v}", "The account {v} received {price} on {date}."),
    "SECRET": ("{v}",),
}
FILLERS = (
    "{name} moved to {address} on {date}.", "The invoice of {date} came to {price}.",
    "Order {order} shipped on {date} and arrived {n} days later.", "The meeting starts at {time} on {date}.",
    "{sentence}", "Room {n}, building {letter}, floor {small}.", "{name} wrote: {sentence}",
    "Reference {order}, amount due {price}.",
)  # fmt: skip


def _fill(fake, rng: random.Random, template: str, value: str = "") -> tuple[str, int]:
    """The template filled in, and where {v} starts (-1 when there is none)."""
    fields = {
        "name": fake.name(), "address": fake.address().replace("\n", ", "), "date": fake.date(),
        "price": fake.pricetag(), "order": f"{rng.choice(['A', 'SO', 'ORD-'])}{rng.randint(10_000, 9_999_999)}",
        "n": rng.randint(2, 40), "time": fake.time(pattern="%H:%M"), "sentence": fake.sentence(nb_words=9),
        "letter": rng.choice("ABCDEF"), "small": rng.randint(1, 12), "city": fake.city(),
    }  # fmt: skip
    if "{v}" not in template:
        return template.format(**fields), -1
    before, _, after = template.partition("{v}")
    head = before.format(**fields)
    return head + value + after.format(**fields), len(head)


def international(national: str, code: int, trunk: str, rng: random.Random) -> str:
    """A national number as people write it abroad: +CC, +CC (0) where the trunk is 0, or 00CC."""
    rest = national.replace("(", "").replace(")", "")
    if trunk and rest.startswith(trunk):
        rest = rest[len(trunk) :].lstrip(" -./")
    style = rng.choice(["plus", "plus0", "00"] if trunk == "0" else ["plus", "00"])
    return {"plus": f"+{code} {rest}", "plus0": f"+{code} (0){rest}", "00": f"00{code} {rest}"}[style]


def phone_value(fakers: dict, rng: random.Random, dropped: list[str]) -> str | None:
    import phonenumbers

    locale = rng.choice(sorted(PHONE_LOCALES))
    region, code, trunk = PHONE_LOCALES[locale]
    raw = fakers[locale].phone_number()
    try:
        valid = phonenumbers.is_valid_number(phonenumbers.parse(raw, region))
    except phonenumbers.NumberParseException:
        valid = False
    if not valid:
        dropped.append(raw)
        return None
    if raw.startswith(("+", "00")) or rng.random() < 0.5:
        return raw
    return international(raw, code, trunk, rng)


def _card(fake, rng: random.Random) -> str:
    number = fake.credit_card_number()
    if len(number) == 16 and rng.random() < 0.6:
        return rng.choice(" -").join(number[i : i + 4] for i in range(0, 16, 4))
    return number


def _secret(fake, rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    kind = rng.randrange(4)
    if kind == 0:
        return "aws_access_key_id = AKIA" + fake.lexify("?" * 16, letters=string.ascii_uppercase + "234567")
    if kind == 1:
        return "export AWS_SECRET_ACCESS_KEY=" + fake.lexify("?" * 40, letters=alnum + "/+")
    if kind == 2:
        return "token: ghp_" + fake.lexify("?" * 36, letters=alnum)
    body = "\n".join(fake.lexify("?" * 64, letters=alnum + "+/") for _ in range(3))
    return f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"


def _ip(fake, rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return fake.ipv4()
    return fake.ipv6() if kind == 1 else ipaddress.IPv6Address(fake.ipv6()).compressed


# en_IN's Faker IBAN is one character shorter than a GB IBAN (21, not 22): not an IBAN at all.
IBAN_LOCALES = tuple(loc for loc in PHONE_LOCALES if loc != "en_IN")


def _iban(fakers: dict, rng: random.Random) -> str:
    value = fakers[rng.choice(IBAN_LOCALES)].iban()
    return value if rng.random() < 0.5 else " ".join(value[i : i + 4] for i in range(0, len(value), 4))


VALUES: dict[str, Callable] = {
    "EMAIL": lambda fake, rng: fake.email(), "IP_ADDRESS": _ip, "CREDIT_CARD": _card,
    "US_SSN": lambda fake, rng: fake.ssn(), "IBAN": _iban, "SECRET": _secret,
}  # fmt: skip


def positive_doc(fakers: dict, rng: random.Random, pii_type: str, dropped: list[str]) -> Doc | None:
    """Fillers around one value of `pii_type` (and sometimes one more value of another type)."""
    parts: list[tuple[str, str | None]] = [(rng.choice(FILLERS), None) for _ in range(rng.randint(1, 3))]
    wanted = [pii_type] + ([rng.choice(TYPES[:6])] if rng.random() < 0.3 else [])
    for t in wanted:
        parts.insert(rng.randint(0, len(parts)), (rng.choice(TEMPLATES[t]), t))
    text, spans = "", []
    fake = fakers[rng.choice(sorted(PHONE_LOCALES))]
    for template, t in parts:
        value = ""
        if t == "PHONE":
            value = phone_value(fakers, rng, dropped)
            if value is None:
                return None
        elif t is not None:
            source = fakers if t == "IBAN" else fakers["en_US"] if t == "US_SSN" else fake
            value = VALUES[t](source, rng)
        sentence, at = _fill(fake, rng, template, value)
        if at >= 0:
            spans.append((len(text) + at, len(text) + at + len(value), t))
        text += sentence + " "
    return text.strip(), spans


def _record(fake, rng: random.Random) -> str:
    """One line of a log, ledger, catalogue or notebook: numbers everywhere, no PII."""
    r, ts = rng.randint, fake.date_time_this_decade()
    records = [
        f"{ts:%Y-%m-%d %H:%M:%S},{r(0, 999):03d} INFO worker-{r(1, 9)} processed {r(100, 99999)} rows in "
        f"{r(5, 5000)} ms (pid {r(1000, 65000)})",
        f"[{ts.isoformat()}] GET /api/v{r(1, 3)}/items/{r(1000, 999999)} 200 {r(200, 90000)}b {r(1, 900)}ms",
        f"Invoice INV-{ts:%Y}-{r(1, 99999):05d} dated {ts:%d.%m.%Y}, customer no. {r(100000, 9999999)}, total "
        f"{fake.pricetag()}, VAT {rng.choice([7, 19, 20, 21])}%",
        f"{fake.word()}=={r(0, 4)}.{r(0, 30)}.{r(0, 20)} released {fake.date()} sha256:{fake.sha256()[:16]}",
        f"Parcel 1Z{fake.bothify('???', letters='ABCDEFGHJKLMNPRSTUVWXYZ')}{r(10**11, 10**12 - 1)} left the depot "
        f"at {ts:%H:%M}; FedEx {r(1000, 9999)} {r(1000, 9999)} {r(1000, 9999)} on {ts:%m/%d/%Y}",
        f"Station {fake.city()} at {fake.latitude():.5f}, {fake.longitude():.5f}, elevation {r(2, 3000)} m",
        f"Round {r(1, 38)}: {fake.last_name()} {r(0, 5)}-{r(0, 5)}, {r(1000, 80000):,} spectators, rating "
        f"{r(10, 99) / 10}/10",
        f"ISBN {fake.isbn13()} (ISBN-10 {fake.isbn10()}), {r(80, 900)} pages, {r(1950, 2024)}",
        f"commit {fake.sha1()} {fake.date_time_this_year():%a %b %d %H:%M:%S %Y} request {fake.uuid4()}",
        f"{fake.name()}, {fake.address().replace(chr(10), ', ')}",
        f"Ship to {fake.city()}, IL {r(60000, 62999)}-{r(1000, 9999)}; weight {r(1, 90)}.{r(0, 9)} kg",
        f"ts={r(1_500_000_000, 1_800_000_000)} seq={r(1, 10**9)} lat_ms={r(1, 999)}.{r(0, 999):03d}",
        f"Employee ID {r(1000, 9999)}-{r(10, 99)}-{r(1000, 9999)}, badge {r(10000, 99999)}, "
        f"cost centre {r(100, 999)}.{r(1000, 9999)}",
        f"Meter reading {r(10000, 999999)} kWh on {ts:%d/%m/%Y}; tariff {r(10, 60)}.{r(0, 99):02d} ct",
        f"Lot {r(100000, 999999)}-{r(10, 99)}, best before {fake.date(pattern='%d.%m.%Y')}, {r(1, 999)} g",
        f"Build {r(1, 20)}.{r(0, 9)}.{r(10000, 29999)}.{r(1000, 9999)} passed {r(100, 9000)} of {r(9000, 9999)} "
        f"tests in {r(10, 900)}.{r(0, 99)} s",
    ]
    return rng.choice(records)


def negative_doc(fakers: dict, rng: random.Random) -> Doc:
    fake = fakers[rng.choice(sorted(PHONE_LOCALES))]
    return "\n".join(_record(fake, rng) for _ in range(rng.randint(2, 5))), []


def labelled_set(per_type: int, phones: int, seed: int) -> tuple[list[Doc], list[str]]:
    """Shuffled documents with their gold spans, and the Faker phone numbers dropped as impossible."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = {loc: Faker(loc) for loc in PHONE_LOCALES}
    for i, fake in enumerate(fakers.values()):
        fake.seed_instance(seed + i)
    docs: list[Doc] = []
    dropped: list[str] = []
    for pii_type in TYPES:
        want = phones if pii_type == "PHONE" else per_type
        made = 0
        while made < want:
            doc = positive_doc(fakers, rng, pii_type, dropped)
            if doc is not None:
                docs.append(doc)
                made += 1
    docs += [negative_doc(fakers, rng) for _ in range(len(docs))]
    rng.shuffle(docs)
    return docs, dropped


def real_corpus(max_files: int, max_chars: int) -> list[str]:
    """METADATA (and the README it embeds) of installed packages, sorted by name, each cut to max_chars."""
    site = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    files = sorted(site.glob("*.dist-info/METADATA"))[:max_files]
    return [f.read_text(errors="replace")[:max_chars] for f in files]
