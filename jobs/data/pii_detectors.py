"""PII detectors: one precompiled regex per shape, then a validator that rejects look-alikes.

A regex only proposes candidates; validators decide (Luhn for cards, SSA rules for SSNs, mod-97 and the
country's length for IBANs, octet range for IPv4, `ipaddress` for IPv6, libphonenumber's metadata for
phones: jobs.data.pii_phone). A 16-digit number that fails Luhn is an order number, not a card, and stays as it is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from jobs.data.pii_phone import DEFAULT_PHONE_REGIONS, PHONE_RE, PhoneValidator

# A validator gets the candidate text and returns how many of its leading characters are the PII (usually all
# of them; fewer when the regex overshot, as an IBAN followed by an uppercase word); 0 for a look-alike of
# its type (shaped right, check failed), which stays untouched and keeps lower-priority detectors off it, so
# the digits of an invalid IBAN are not re-read as a phone number; None when it is not this type at all.
Validator = Callable[[str], "int | None"]


@dataclass(frozen=True)
class Detector:
    type: str
    pattern: re.Pattern
    validate: Validator | None = None
    triggers: tuple[str, ...] = ()  # the text must contain one of these for the regex to run at all
    group: int = 0  # the regex group that is the PII (secrets are matched together with their keyword)
    needs_digit: bool = False  # skip the regex on text without any digit
    context: bool = False  # the validator also gets the text just before and after the candidate


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


MAESTRO_PREFIXES = ("50", "56", "57", "58", "6", "0604")  # Maestro numbers can be as short as 12 digits


# A card word a few characters before: a 12-digit Maestro number is written next to one, and a parcel or
# account number of 12 digits (4-4-4) is not.
CARD_WORD_RE = re.compile(
    r"(?i:\b(?:card|maestro|visa|mastercard|debit|credit|paid|pay|karte|carte|tarjeta|carta)\b)\D{0,25}$"
)


def card(text: str, before: str = "", after: str = "") -> int | None:
    """12-19 digits with one kind of separator, an issuer's first digit (1-6, or Maestro's 0604) and a valid Luhn
    check digit; 12 digits only for Maestro, after a card word."""
    digits = "".join(ch for ch in text if ch.isdigit())
    separators = {ch for ch in text if not ch.isdigit()}
    if not 12 <= len(digits) <= 19 or len(separators) > 1:
        return None
    if digits[0] not in "123456" and not digits.startswith("0604"):
        return None
    if len(digits) == 12 and not (digits.startswith(MAESTRO_PREFIXES) and CARD_WORD_RE.search(before)):
        return None
    return len(text) if luhn_ok(digits) else 0


def us_ssn(text: str) -> int | None:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    digits = "".join(ch for ch in text if ch.isdigit())
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return 0
    return len(text)


# IBAN length per country (SWIFT IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_mod97_ok(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def iban(text: str) -> int | None:
    """The country's exact length and ISO 7064 mod-97 = 1; trims what the regex took beyond that length."""
    length = IBAN_LENGTHS.get(text[:2])
    compact = text.replace(" ", "")
    if length is None:
        return None
    if len(compact) < length or not iban_mod97_ok(compact[:length]):
        return 0
    seen = end = 0
    while seen < length:  # characters of `text` that hold the first `length` non-space characters
        seen += text[end] != " "
        end += 1
    return end


def ipv4(text: str) -> int | None:
    octets = text.split(".")
    if any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in octets):
        return 0
    return len(text)


def ipv6(text: str) -> int | None:
    if "::" not in text and text.count(":") != 7:
        return None  # times (12:30:45) and MAC addresses are not IPv6
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return len(text) if sum(ch not in ":." for ch in text) >= 3 else None


def ipv6_trimmed(text: str) -> int | None:
    """ipv6 on the candidate without a sentence's final period."""
    return ipv6(text.rstrip("."))


# Lookbehinds such as (?<!\d[ -]) stop a pattern from starting inside a longer digit sequence, so the tail of
# an invalid card or IBAN is never re-read as a phone number or an SSN.
EMAIL_RE = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])")
CARD_RE = re.compile(r"(?<![\w./+-])(?<!\d[ -])\d(?:[ -]?\d){11,18}(?![\w-])(?![ -]\d)")
SSN_RE = re.compile(r"(?<![\w-])(?<!\d )\d{3}([- ])\d{2}\1\d{4}(?![\w-])(?![ -]\d)")
IBAN_RE = re.compile(r"(?<!\w)[A-Z]{2}\d{2}(?:(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?|[A-Z0-9]{11,30})(?![A-Za-z0-9])")
IPV4_RE = re.compile(r"(?<![\w.+])(?:\d{1,3}\.){3}\d{1,3}(?!\w)(?!\.\d)")
IPV6_RE = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(?![\w:])")
AWS_KEY_ID_RE = re.compile(
    r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])"
)
AWS_SECRET_RE = re.compile(
    r"(?i:aws|amazon)[\w.-]{0,30}?(?i:secret|private)[\w.-]{0,20}?[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+]{40})(?![\w/+=])"
)
PEM_RE = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----[\s\S]*?-----END \1PRIVATE KEY-----")
GITHUB_RE = re.compile(r"(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_\w{82})(?!\w)")
GOOGLE_API_RE = re.compile(r"(?<![\w-])AIza[\w-]{35}(?![\w-])")
SLACK_RE = re.compile(r"(?<![\w-])xox[abprs]-[A-Za-z0-9-]{10,72}(?![\w-])")

# In priority order: when two candidates overlap, the earlier detector's wins. Phone numbers come last (below).
DETECTORS: tuple[Detector, ...] = (
    Detector("SECRET", PEM_RE, triggers=("-----BEGIN",)),
    Detector("SECRET", AWS_KEY_ID_RE, triggers=("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA",
                                                "APKA", "ABIA", "ACCA")),
    Detector("SECRET", AWS_SECRET_RE, group=1, triggers=("secret", "Secret", "SECRET", "private", "PRIVATE")),
    Detector("SECRET", GITHUB_RE, triggers=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    Detector("SECRET", GOOGLE_API_RE, triggers=("AIza",)),
    Detector("SECRET", SLACK_RE, triggers=("xox",)),
    Detector("EMAIL", EMAIL_RE, triggers=("@",)),
    Detector("IBAN", IBAN_RE, iban, needs_digit=True),
    Detector("CREDIT_CARD", CARD_RE, card, needs_digit=True, context=True),
    Detector("US_SSN", SSN_RE, us_ssn, needs_digit=True),
    Detector("IP_ADDRESS", IPV6_RE, ipv6_trimmed, triggers=(":",)),
    Detector("IP_ADDRESS", IPV4_RE, ipv4, needs_digit=True, triggers=(".",)),
)


def detectors(phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS) -> tuple[Detector, ...]:
    """Every detector in priority order; phone numbers last, validated for the given regions."""
    phone = Detector("PHONE", PHONE_RE, PhoneValidator(phone_regions), needs_digit=True, context=True)
    return (*DETECTORS, phone)
