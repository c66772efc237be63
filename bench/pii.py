"""PII benchmark: llmctl's regex detectors vs Presidio's pattern recognizers on a labelled set made with Faker.

Positives: one Faker value per document (emails, phones, IPv4/IPv6, cards in several groupings, US SSNs,
IBANs compact or grouped) across seven locales, inside varied sentences, some with a context word and some
without; secrets (AWS key ids, AWS secret keys next to their variable name, GitHub tokens, PEM blocks) are
built from Faker's random strings. Negatives: look-alikes with no PII (Luhn-failing card numbers, SSNs in
the SSA's invalid ranges, IBANs with wrong check digits, out-of-range IPv4, dates, times, order numbers,
ISBNs, versions). A prediction is right when it overlaps a labelled span of the same type.

Throughput is single-process docs/s, best of --repeat runs for llmctl, one run for Presidio (it is slow),
both on the six types Presidio has (it has no secret recognizer); llmctl with all seven types is reported too.

    python -m bench.pii [--per-type 300] [--repeat 3] [--seed 0]

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import string
import time
from collections import Counter
from collections.abc import Callable

from jobs.data.pii import PRESIDIO_ENTITIES, detectors_for, find_spans

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL")
TYPES = ("EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN", "SECRET")
TARGETS = {"recall_min": 0.95, "speedup": 10.0}
TEMPLATES = {
    "EMAIL": ("Contact {} for details.", "{} wrote to the club yesterday.", "Send the signed form to {} soon."),
    "PHONE": ("Call {} for an appointment.", "Tel: {}", "Reach the front desk at {} today.",
              "The number {} is printed on the card.", "{} is the new hotline."),
    "IP_ADDRESS": ("The server at {} is down.", "A login from {} was blocked.", "Ping {} to check the link."),
    "CREDIT_CARD": ("Card number {} was charged.", "She paid with {} last week.", "Use {} for the deposit."),
    "US_SSN": ("SSN {} is on the form.", "Social security number: {}.", "{} was listed in the file."),
    "IBAN": ("Transfer the rent to {} please.", "IBAN: {}", "The account {} received the funds."),
    "SECRET": ("{}",),
}


def _card(fake, rng: random.Random) -> str:
    number = fake.credit_card_number()
    if len(number) == 16 and rng.random() < 0.6:
        sep = rng.choice(" -")
        return sep.join(number[i : i + 4] for i in range(0, 16, 4))
    if len(number) == 15 and rng.random() < 0.5:
        return f"{number[:4]} {number[4:10]} {number[10:]}"
    return number


def _iban(fake, rng: random.Random) -> str:
    value = fake.iban()
    return value if rng.random() < 0.5 else " ".join(value[i : i + 4] for i in range(0, len(value), 4))


def _ip(fake, rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return fake.ipv4()
    return fake.ipv6() if kind == 1 else ipaddress.IPv6Address(fake.ipv6()).compressed


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


VALUES: dict[str, Callable] = {
    "EMAIL": lambda fake, rng: fake.email(),
    "PHONE": lambda fake, rng: fake.phone_number(),
    "IP_ADDRESS": _ip,
    "CREDIT_CARD": _card,
    "US_SSN": lambda fake, rng: fake.ssn(),
    "IBAN": _iban,
    "SECRET": _secret,
}


def _negatives(fake, rng: random.Random) -> str:
    """A look-alike of some PII that is not PII."""
    card = fake.credit_card_number()
    bad_iban = fake.iban()
    check = f"{(int(bad_iban[2:4]) + rng.randint(1, 96)) % 97 + 2:02d}"[-2:]
    area = rng.choice(["000", "666", f"{rng.randint(900, 999)}"])
    choices = [
        f"Order {card[:-1]}{(int(card[-1]) + rng.randint(1, 9)) % 10} was shipped.",
        f"Reference {area}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)} is closed.",
        f"Reference {rng.randint(100, 665)}-00-{rng.randint(1000, 9999)} is closed.",
        f"Code {bad_iban[:2]}{check}{bad_iban[4:]} was rejected.",
        f"Sensor {rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)} is off.",
        f"It happened on {fake.date()} at {fake.time()}.",
        f"It happened on {fake.date(pattern='%d.%m.%Y')}.",
        f"Order no. {fake.numerify('#######')} costs {fake.pricetag()}.",
        f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-{rng.randint(0, 9)}.",
        f"Version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 20)} is out.",
    ]
    return rng.choice(choices)


def labelled_set(per_type: int, seed: int) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """(text, gold spans) documents: per_type positives per type, and per_type look-alike negatives."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = {loc: Faker(loc) for loc in LOCALES}
    for i, fake in enumerate(fakers.values()):
        fake.seed_instance(seed + i)
    docs = []
    for pii_type in TYPES:
        for _ in range(per_type):
            fake = fakers["en_US" if pii_type == "US_SSN" else rng.choice(LOCALES)]
            value = VALUES[pii_type](fake, rng)
            before, after = rng.choice(TEMPLATES[pii_type]).split("{}")
            lead = fake.sentence(nb_words=rng.randint(4, 10)) + " "
            text = lead + before + value + after + " " + fake.sentence(nb_words=rng.randint(4, 10))
            start = len(lead) + len(before)
            docs.append((text, [(start, start + len(value), pii_type)]))
    for _ in range(per_type):
        fake = fakers[rng.choice(LOCALES)]
        docs.append((fake.sentence() + " " + _negatives(fake, rng), []))
    rng.shuffle(docs)
    return docs


def score(predicted: list[list[tuple[int, int, str]]], docs: list, types: tuple[str, ...]) -> dict:
    """Recall and precision per type: a span is right when it overlaps a gold span of the same type."""
    tp, fp, gold = Counter(), Counter(), Counter()
    for spans, (_, truth) in zip(predicted, docs, strict=True):
        gold.update(t for _, _, t in truth if t in types)
        for s, e, t in spans:
            ok = any(t == gt and s < ge and gs < e for gs, ge, gt in truth)
            (tp if ok else fp)[t] += 1
    return {t: {"recall": round(min(tp[t], gold[t]) / gold[t], 4) if gold[t] else None,
                "precision": round(tp[t] / (tp[t] + fp[t]), 4) if tp[t] + fp[t] else None,
                "gold": gold[t], "false_positives": fp[t]} for t in types}


def run_llmctl(docs: list, types: tuple[str, ...], repeat: int) -> tuple[float, list]:
    detectors = detectors_for(frozenset(types))
    best, spans = float("inf"), []
    for _ in range(repeat):
        t = time.perf_counter()
        spans = [find_spans(text, detectors) for text, _ in docs]
        best = min(best, time.perf_counter() - t)
    return best, spans


def run_presidio(docs: list, types: tuple[str, ...]) -> tuple[float, list]:
    from presidio_analyzer import predefined_recognizers as pr

    from jobs.data.pii import _offline_tldextract

    _offline_tldextract()
    regions = ("US", "GB", "DE", "FR", "ES", "IT", "NL")
    recognizers = [(t, ent, pr.PhoneRecognizer(supported_regions=regions) if cls == "PhoneRecognizer"
                    else getattr(pr, cls)()) for t, (ent, cls) in PRESIDIO_ENTITIES.items() if t in types]
    out = []
    t0 = time.perf_counter()
    for text, _ in docs:
        spans = []
        for pii_type, entity, rec in recognizers:
            spans += [(r.start, r.end, pii_type) for r in rec.analyze(text, entities=[entity], nlp_artifacts=None)]
        out.append(spans)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-type", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    docs = labelled_set(args.per_type, args.seed)
    shared = tuple(t for t in TYPES if t in PRESIDIO_ENTITIES)
    ours_s, ours = run_llmctl(docs, shared, args.repeat)
    all_s, all_spans = run_llmctl(docs, TYPES, args.repeat)
    theirs_s, theirs = run_presidio(docs, shared)
    ours_score = score(all_spans, docs, TYPES)
    result = {
        "bench": "pii",
        "docs": len(docs),
        "locales": list(LOCALES),
        "llmctl": {"docs_per_s": round(len(docs) / ours_s), "docs_per_s_all_types": round(len(docs) / all_s),
                   "per_type": ours_score},
        "presidio": {"docs_per_s": round(len(docs) / theirs_s), "per_type": score(theirs, docs, shared)},
        "speedup": round(theirs_s / ours_s, 2),
        "targets": TARGETS,
    }
    result["targets_met"] = {
        "recall": all(v["recall"] >= TARGETS["recall_min"] for v in ours_score.values()),
        "speedup": result["speedup"] >= TARGETS["speedup"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
