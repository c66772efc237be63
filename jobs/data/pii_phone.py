"""Phone numbers: a regex proposes candidates, Google's libphonenumber metadata (the `phonenumbers` package) decides.

Cheap checks come first, so that most number-shaped text never reaches the library: the digit count, shapes
that are something else (dates and timestamps, ZIP+4, ISBNs, decimal coordinates, SSNs, prices), words just
before that name another kind of number ("order", "ISBN", "version"), and how the number is written (grouped,
with a country code, after a trunk prefix, or right after a phone word). What is left must parse:

- written with `+` (`+41 (0)69 979 80 58`, `+447700 208 815`): a number of possible length for its country.
  Any country counts, and length is enough: the allocation data lags the numbers people hand out, and a `+`
  in front of a digit run is how people write a phone number, rarely anything else;
- written with `00` or in national format: a valid number (an allocated range, not just a length) of one of
  the configured regions (`pii.phone_regions`). Where a region's numbers are written with their trunk prefix
  (`07700 063 966`, `030 1234567`), it must be there; Brazil's `(11) 2345-6789` and North America's go without.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pipelines.spec.curation import DEFAULT_PHONE_REGIONS

_SEP = r"(?:[ ]?[/-][ ]?|\.|[ ])"  # "1974-02-28. 0031 …" is a date and then a number, not one number
_PAREN = r"\((?:\+|00)?\d{1,5}\)"  # (0), (020), (+44)
# Groups of digits and parenthesised codes with one separator between them, an optional extension. It may not
# start or end inside a longer run of digits, a word, a time (12:30) or a decimal, so the tail of an order number
# or of an invalid card is never read as a phone number.
PHONE_RE = re.compile(
    rf"(?<![\w/.+:-])(?<!\d[ ])"
    rf"\+?(?:{_PAREN}{_SEP}?)?\d{{1,12}}(?:(?:{_SEP}|{_SEP}?{_PAREN}{_SEP}?)\d{{1,12}}){{0,7}}"
    r"(?:[ ]?(?:x|ext\.?|extension)[ ]?\d{1,6})?"
    r"(?![\w-])(?![ ./-]?\d)(?!:\d)"
)
_EXTENSION = re.compile(r"[ ]?(?:x|ext\.?|extension)[ ]?\d{1,6}$")
_NON_DIGIT = re.compile(r"\D")

# A phone word (English, German, French, Italian, Spanish, Portuguese, Dutch, Nordic, Polish) a few characters
# before: vouches for a bare run of digits, and overrules the words below ("Tel. no. 0612345678").
PHONE_WORD_RE = re.compile(
    r"(?i:\b(?:call|calling|phone|ph|tel|telephone|mobile|mob|cell|cellphone|fax|hotline|whatsapp|sms|text|dial|"
    r"ring|contact|reach|telefon\w*|t[ée]l[ée]phone|portable|tel[ée]fono|cellulare|m[óo]vil|celular|telem[óo]vel|"
    r"bellen|handy|mobil|tlf|puhelin|kom[óo]rka|numer)\b)[^\d\n]{0,25}$"
)
# Words that name some other number just before the candidate, with nothing but punctuation between.
OTHER_NUMBER_WORD_RE = re.compile(
    r"(?i:\b(?:isbn(?:-1[03])?|issn|doi|order|invoice|inv|ref|reference|tracking|serial|s/n|sku|id|no|nr|num|"
    r"account|acct|ticket|case|version|ver|v|build|release|patent|lot|batch|part|model|item|receipt|"
    r"transaction|txn|po|zip|postcode|plz|iban|bic|swift|vat|ein|tin|policy|claim|member|customer|"
    r"registration|reg|license|licence|passport|record|file|page|pages|pp|score|total|amount)\b)[\s.:#№=({\'\"-]{0,5}$"
)
_CURRENCY_BEFORE = re.compile(
    r"(?:[$€£¥₹]|\b(?:EUR|USD|GBP|CHF|JPY|INR|AUD|CAD|SEK|NOK|DKK|PLN|BRL|Rs\.?|Fr\.|kr\.?|zł|R\$))\s?$"
)
_UNIT_AFTER = re.compile(r"^\s?(?:[$€£¥₹%‰°]|(?:EUR|USD|GBP|CHF|JPY|SEK|NOK|DKK|PLN|BRL|kg|km|mi|bytes|MB|GB|ms)\b)")

_YEAR, _MONTH, _DAY = r"(?:1[6-9]|20)\d\d", r"(?:0?[1-9]|1[0-2])", r"(?:0?[1-9]|[12]\d|3[01])"
# Each is a whole-candidate shape, except dates, which also match at the start (a date and then a time).
_NOT_PHONE = re.compile(
    rf"{_YEAR}([-./ ]){_MONTH}\1{_DAY}(?:[ T].*)?"  # 2000-04-16, 2000/4/16 11
    rf"|{_DAY}([-./ ]){_MONTH}\2{_YEAR}(?:[ T].*)?|{_MONTH}([-./ ]){_DAY}\3{_YEAR}(?:[ T].*)?"  # 16.04.2000, 4/16/2000
    rf"|{_YEAR}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"  # 20000416
    r"|\d{5}-\d{4}|\d{5}-\d{3}"  # ZIP+4, Brazil's CEP
    r"|[1-9]\d{3}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?"  # digits in fours: a card, account or parcel number
    r"|\d{1,3}(?:[ ,.']\d{3})+[.,]\d{2}"  # an amount: 27 356.50, 1.234.567,89
    r"|\d{3}-\d{2}-\d{4}"  # SSN-shaped: an SSN or an ID, never a phone
    r"|\d+\.\d+|\d{1,3}\.\d{3,}[ ,]+\d{1,3}\.\d{3,}"  # decimals (arXiv 2403.12345) and coordinates
    r"|(?:1[6-9]|20)\d\d ?- ?(?:1[6-9]|20)\d\d"  # a span of years: (c) 2015-2024
    r"|\d+(?:\.\d+)+ ?- ?\d+(?:\.\d+)+"  # a range of versions or decimals: 0.41.0 - 0.43.0
)

# Hyphenated ISBNs end in a one-character check group: 978-3-16-148410-0, 0-306-40615-2.
_ISBN_SHAPE = re.compile(r"(?:\d+[- ]){2,4}\d")


def isbn_ok(digits: str) -> bool:
    """ISBN-13 (978/979, weights 1,3) or ISBN-10 (weights 10..1, mod 11; a final X is not a digit here)."""
    if len(digits) == 13 and digits.startswith(("978", "979")):
        return sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10 == 0
    if len(digits) == 10:
        return sum(int(d) * (10 - i) for i, d in enumerate(digits)) % 11 == 0
    return False


def not_a_phone(body: str, digits: str, before: str, after: str) -> bool:
    """The candidate is a date, timestamp, ZIP+4, SSN, coordinate, ISBN, price or another named number."""
    if _NOT_PHONE.fullmatch(body) or (_ISBN_SHAPE.fullmatch(body) and isbn_ok(digits)):
        return True
    if _CURRENCY_BEFORE.search(before) or _UNIT_AFTER.match(after):
        return True
    return OTHER_NUMBER_WORD_RE.search(before) is not None and PHONE_WORD_RE.search(before) is None


def written_like_a_phone(body: str, digits: str, before: str) -> bool:
    """International, grouped or parenthesised, a run of 9+ digits after the trunk prefix 0, or after a phone
    word; a bare run of digits otherwise is an ID as often as a phone number."""
    if body[0] in "+(" or body.startswith("00") or not body.isdigit():
        return True
    return (digits[0] == "0" and len(digits) >= 9) or PHONE_WORD_RE.search(before) is not None


class PhoneValidator:
    """`validator(candidate, before, after) -> length | None`: the detector's validator for PHONE candidates."""

    def __init__(self, regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS):
        import phonenumbers

        self.pn = phonenumbers
        self.regions = tuple(_RegionRule.of(code) for code in regions)
        self.country_codes = {phonenumbers.country_code_for_region(code) for code in regions}
        self.valid = lru_cache(maxsize=1 << 16)(self._parses)

    def __call__(self, candidate: str, before: str = "", after: str = "") -> int | None:
        body = _EXTENSION.sub("", candidate)
        digits = _NON_DIGIT.sub("", body)
        if not 7 <= len(digits) <= 17 or not_a_phone(body, digits, before, after):
            return None
        if not written_like_a_phone(body, digits, before):
            return None
        return len(candidate) if self.valid(body) else None

    def _parses(self, body: str) -> bool:
        normal = body.replace("(+", "+").replace("(00", "00").replace("(0)", " ")
        if normal.startswith("+"):
            return self._possible_international(normal)
        if normal.startswith("00"):
            return self._valid_international("+" + normal[2:])
        if self._valid_national(normal):
            return True
        code = re.match(r"\((\d{1,3})\)", body)  # (351) 969 141 777: a country code without its +
        return code is not None and int(code[1]) in self.country_codes and self._valid_international("+" + body)

    def _possible_international(self, text: str) -> bool:
        try:
            return self.pn.is_possible_number(self.pn.parse(text, None))
        except self.pn.NumberParseException:
            return False

    def _valid_international(self, text: str) -> bool:
        try:
            return self.pn.is_valid_number(self.pn.parse(text, None))
        except self.pn.NumberParseException:
            return False

    def _valid_national(self, text: str) -> bool:
        digits = _NON_DIGIT.sub("", text)
        for rule in self.regions:
            if not rule.may_hold(digits):
                continue
            try:
                number = self.pn.parse(text, rule.code)
            except self.pn.NumberParseException:
                continue
            if not self.pn.is_valid_number_for_region(number, rule.code):
                continue
            if rule.prefix_required or self._grouped_as_written(text, number):
                return True
        return False

    def _grouped_as_written(self, text: str, number) -> bool:
        """The candidate's digit groups join the region's own groups and never split one: `441 287 2209` is a
        Mexican number, `4412-87-2209` an ID. Only asked where no trunk prefix vouches for a national number."""
        written = self.pn.format_number(number, self.pn.PhoneNumberFormat.NATIONAL)
        ours, theirs = group_ends(text), group_ends(written)
        return ours <= theirs | {len(_NON_DIGIT.sub("", written))}


def group_ends(text: str) -> set[int]:
    """Where digit groups end, counted in digits from the number's end (so a leading trunk or country code does
    not shift them): `(202) 555-0143` -> {4, 7}."""
    ends, seen = set(), 0
    for ch in reversed(text):
        if ch.isdigit():
            seen += 1
        elif seen:
            ends.add(seen)
    return ends - {sum(ch.isdigit() for ch in text)}


class _RegionRule:
    """What a region's metadata says cheaply about its national numbers, to skip the parser on most regions."""

    def __init__(self, code: str, prefix: str | None, prefix_required: bool, lengths: frozenset[int],
                 pattern: re.Pattern, simple_prefix: bool):  # fmt: skip
        self.code, self.prefix, self.prefix_required = code, prefix, prefix_required
        self.lengths, self.pattern, self.simple_prefix = lengths, pattern, simple_prefix

    @classmethod
    def of(cls, code: str) -> _RegionRule:
        import phonenumbers

        meta = phonenumbers.PhoneMetadata.metadata_for_region(code)
        if meta is None:
            raise ValueError(f"unknown phone region {code!r}")
        prefix, general = meta.national_prefix, meta.general_desc
        # Whether people write the trunk prefix: GB's numbers read 0121 234 5678, Brazil's (11) 2345-6789.
        written = phonenumbers.format_number(phonenumbers.example_number(code), phonenumbers.PhoneNumberFormat.NATIONAL)
        required = bool(prefix) and _NON_DIGIT.sub("", written).startswith(prefix)
        simple = meta.national_prefix_for_parsing in (None, prefix)
        return cls(code, prefix, required, frozenset(general.possible_length),
                   re.compile(general.national_number_pattern), simple)  # fmt: skip

    def may_hold(self, digits: str) -> bool:
        """The trunk prefix where the region's numbers are written with it, then the national number's length and
        the region's general pattern; regions with an elaborate prefix rule go to the parser."""
        national = digits
        if self.prefix and digits.startswith(self.prefix):
            national = digits[len(self.prefix) :]
        elif self.prefix_required:
            return False
        if not self.simple_prefix:
            return True
        return len(national) in self.lengths and self.pattern.fullmatch(national) is not None
