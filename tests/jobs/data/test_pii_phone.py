"""Phone numbers decided by libphonenumber: the formats people write are redacted, number-shaped text is not."""

from __future__ import annotations

import textwrap

import pytest

from jobs.data.pii import Redactor, redact
from pipelines.errors import SpecError
from pipelines.load import load
from pipelines.spec.curation import PIIConfig


@pytest.mark.parametrize(
    "number",
    [
        "07700 063 966",  # UK mobile, national, grouped as people do (not as libphonenumber formats it)
        "+41 (0)69 979 80 58",  # trunk zero in parentheses after the country code
        "+447700 208 815",  # country code glued to the number; a range libphonenumber lists as unallocated
        "0044 20 7946 0958",  # 00 instead of +
        "(+44) 20 7946 0958",
        "+1 (202) 555-0143 ext. 12",
        "202.555.0143 x1234",
        "1 (786) 834-4978",  # North America's trunk 1
        "030 1234567",  # Berlin
        "01 42 68 53 00",  # Paris
        "+33 1 42 68 53 00",
        "06 12 34 56 78",
        "(11) 2345-6789",  # Brazil: area code without its trunk zero
        "03-1234-5678",  # Tokyo
        "074104 10123",  # India
        "612 34 56 78",  # Spain, no trunk prefix at all
        "12 345 67 89",  # Kraków
        "+61.437.406.812",
        "02124/15868344",  # Austria, slash after the area code
        "(351) 969 141 777",  # a country code in parentheses without its +
    ],
)
def test_phone_formats_are_redacted(number):
    assert redact(f"Reach the office on {number} today.") == ("Reach the office on <PHONE> today.", {"PHONE": 1})


@pytest.mark.parametrize(
    "text",
    [
        "The job started 2000-04-16 11:34:35 and ended 2000-04-16 12:01:09.",  # ISO timestamps
        "Logged [2023-11-05T08:15:27.123Z] and 16.04.2000 14:22 and 04/16/2000.",  # other dates and times
        "ID 2270-66-1551 was issued; staff number 4412-87-2209.",  # ID numbers shaped like no phone format
        "Upgrade to version 10.0.19041.1288 or v2.31.4; build 20240115.3.",
        "ISBN 978-3-16-148410-0 and 0-306-40615-2 are on the shelf.",
        "Request 123e4567-e89b-12d3-a456-426614174000 failed.",  # UUID
        "sha1 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12 and md5 9e107d9d372bb6826bd81d3542a419d6",
        "It cost $1,234,567.89, or 1.234.567,89 EUR, or Fr. 27 356.50.",  # prices
        "The station is at 48.85661, 2.35222; the other at -33.86882 151.20930.",  # coordinates
        "Ship to Springfield, IL 62704-1234 or Palmares, 72785-388.",  # ZIP+4, Brazilian CEP
        "Copyright (c) 2015-2024 the authors; see arXiv 2403.12345.",
        "FedEx 3486 3662 5967 left the depot; order 020 7946 0958 is ready.",  # parcel id; a named order number
        "Invoice 4829103746 and unix time 1713264875 were logged.",  # bare runs with no phone word
        "Supported: 0.41.0 - 0.43.0 and 0.37.0 - 0.39.1; issn = {2475-9066}.",  # version ranges, a named ISSN
        "See https://x.com/OpenAIDevs/status/1924915343677653014 for the post.",  # a Luhn-valid id in a URL
    ],
)
def test_number_shaped_text_stays(text):
    assert redact(text) == (text, {})


def test_a_phone_word_vouches_for_a_bare_run():
    assert redact("Chiamare il cellulare 3331234567 dopo le sei.")[1] == {"PHONE": 1}
    assert redact("Ticket 3331234567 is valid.")[1] == {}
    assert redact("Tel. no. 020 7946 0958")[1] == {"PHONE": 1}  # the phone word overrules "no."


def test_phone_regions_choose_national_formats():
    only_us = Redactor(PIIConfig(phone_regions=["US"]))
    assert only_us.redact("Mobile 07700 063 966 now") == ("Mobile 07700 063 966 now", {})
    assert only_us.redact("Mobile +44 7700 063966 now") == ("Mobile <PHONE> now", {"PHONE": 1})
    with_gb = Redactor(PIIConfig(phone_regions=["US", "GB"]))
    assert with_gb.redact("Mobile 07700 063 966 now") == ("Mobile <PHONE> now", {"PHONE": 1})


def test_unknown_region_is_a_spec_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""
        name: tiny
        stages:
          curate: {kind: data, inputs: [./corpus.jsonl], pii: {phone_regions: [US, UK, XX]}}
    """))
    with pytest.raises(SpecError) as exc:
        load(str(path))
    message = str(exc.value)
    assert "pii.phone_regions: unknown region code(s) UK (did you mean GB?), XX" in message
    assert "use ISO 3166 alpha-2 codes that libphonenumber knows: AC, AD, AE," in message and ", ZW" in message
