"""PII detectors and validators: real values are replaced by typed placeholders, look-alikes stay."""

from __future__ import annotations

import random

import pytest

from jobs.data import pii_detectors as det
from jobs.data.pii import Redactor, redact
from jobs.demo import pii_samples
from pipelines.errors import StageError
from pipelines.spec.curation import PII_TYPES, PIIConfig

MAESTRO_12 = "50180000001" + pii_samples.luhn_digit("50180000001")


@pytest.mark.parametrize(
    ("text", "expected", "counts"),
    [
        ("Write to jane.doe+news@mail.example.co.uk today.", "Write to <EMAIL> today.", {"EMAIL": 1}),
        ("Call +44 20 7946 0958 or +1-202-555-0143.", "Call <PHONE> or <PHONE>.", {"PHONE": 2}),
        ("Call (202) 555-0143 or 020 7946 0958.", "Call <PHONE> or <PHONE>.", {"PHONE": 2}),
        ("Ruf +49 (0) 30 1234567 an, oder 0033 1 42 68 53 00.", "Ruf <PHONE> an, oder <PHONE>.", {"PHONE": 2}),
        ("US office 202.555.0143 x1234 is open.", "US office <PHONE> is open.", {"PHONE": 1}),
        ("Hosts 192.168.1.20 and 10.0.0.1.", "Hosts <IP_ADDRESS> and <IP_ADDRESS>.", {"IP_ADDRESS": 2}),
        ("v6 2001:db8::8a2e:370:7334 and ::ffff:192.0.2.1.", "v6 <IP_ADDRESS> and <IP_ADDRESS>.", {"IP_ADDRESS": 2}),
        ("Card 4111 1111 1111 1111 expires.", "Card <CREDIT_CARD> expires.", {"CREDIT_CARD": 1}),
        ("Amex 3782-822463-10005 and 5555555555554444.", "Amex <CREDIT_CARD> and <CREDIT_CARD>.",
         {"CREDIT_CARD": 2}),
        ("SSN 123-45-6789 on file.", "SSN <US_SSN> on file.", {"US_SSN": 1}),
        ("IBAN DE89 3704 0044 0532 0130 00 AND GB82WEST12345698765432.", "IBAN <IBAN> AND <IBAN>.", {"IBAN": 2}),
        ("Key AKIAIOSFODNN7EXAMPLE in the log.", "Key <SECRET> in the log.", {"SECRET": 1}),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key = <SECRET>",
         {"SECRET": 1}),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----\nbye", "<SECRET>\nbye",
         {"SECRET": 1}),
        ("token ghp_" + "a1B2" * 9 + " leaked", "token <SECRET> leaked", {"SECRET": 1}),
        ("Chiamare il cellulare 3331234567 dopo le sei.", "Chiamare il cellulare <PHONE> dopo le sei.",
         {"PHONE": 1}),
        ("Bel 020-1234567 of 0612345678.", "Bel <PHONE> of <PHONE>.", {"PHONE": 2}),
        (f"Maestro {MAESTRO_12} accepted.", "Maestro <CREDIT_CARD> accepted.", {"CREDIT_CARD": 1}),
    ],
)
def test_detects_and_replaces(text, expected, counts):
    assert redact(text) == (expected, counts)


@pytest.mark.parametrize(
    "text",
    [
        "Order 4111 1111 1111 1112 shipped.",  # fails Luhn
        "Ref 7111 1111 1111 1114 is a Luhn-valid number with no card issuer prefix.",
        "Ids 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567 and 123-45-0000.",  # SSA invalid ranges
        "Code DE12 3704 0044 0532 0130 00 and GB00WEST12345698765432.",  # mod-97 fails
        "Code XX89 3704 0044 0532 0130 00 and DE89 3704 0044 0532 0130.",  # unknown country, short
        "Values 300.168.1.20 and 1.2.3.999 and 01.02.03.04.",  # octets out of range / leading zeros
        "At 12:30:45 on 2024-01-15 the MAC 00:1A:2B:3C:4D:5E was seen.",
        "The 3 pages cost 1,250 dollars; call it 42.",
        "Version 1.2.3 of the tool, build 20240115.",
        "AKIA is not a key and neither is ghp_short.",
        "Order no. 0680623 costs 3 dollars; ticket 3331234567 is valid.",  # short, or bare without a keyword
        "Order 123456789012 shipped.",  # 12 digits, Luhn-valid or not, but no Maestro prefix
        "ISBN 978-3-16-148410-0 and NL91 ABNA 0417 1643 01 (wrong check digits).",
    ],
)
def test_lookalikes_stay_untouched(text):
    assert redact(text) == (text, {})


def test_validators():
    assert det.luhn_ok("79927398713") and not det.luhn_ok("79927398710")
    # 0 = a look-alike of the type (kept as is, and no other detector may claim it); None = another shape
    assert det.card("4111-1111-1111-1111") == 19 and det.card("4111-1111-1111-1112") == 0
    assert det.card("4111 1111-1111 1111") is None and det.card("0111111111111111") is None
    assert det.us_ssn("123-45-6789") == 11 and det.us_ssn("900-12-3456") == 0
    assert det.iban_mod97_ok("GB82WEST12345698765432") and not det.iban_mod97_ok("GB83WEST12345698765432")
    assert det.iban("NL91 ABNA 0417 1643 00 XYZ") == len("NL91 ABNA 0417 1643 00")
    assert det.iban("DE12 3704 0044 0532 0130 00") == 0 and det.iban("XX89 3704 0044 0532 0130 00") is None
    assert det.ipv4("255.255.255.255") and det.ipv4("256.1.1.1") == 0
    assert det.ipv6("fe80::1") and det.ipv6("12:30:45") is None


def test_generated_values_round_trip():
    rng = random.Random(0)
    for _ in range(300):
        assert redact(f"Paid with {pii_samples.card(rng)} today.")[1] == {"CREDIT_CARD": 1}
        assert redact(f"Saw {pii_samples.card(rng, valid=False)} today.")[1] == {}
        assert redact(f"SSN {pii_samples.ssn(rng)} ok.")[1] == {"US_SSN": 1}
        assert redact(f"Ref {pii_samples.ssn(rng, valid=False)} ok.")[1] == {}
        assert redact(f"To {pii_samples.iban(rng)} now.")[1] == {"IBAN": 1}
        assert redact(f"Code {pii_samples.iban(rng, valid=False)} now.")[1] == {}
        assert redact(f"Phone {pii_samples.phone(rng)} now.")[1] == {"PHONE": 1}
        assert redact(f"Host {pii_samples.ipv6(rng)} up.")[1] == {"IP_ADDRESS": 1}


def test_types_are_selectable():
    text = "Mail a@example.com, call (202) 555-0143, card 4111 1111 1111 1111."
    assert redact(text, ["EMAIL"]) == ("Mail <EMAIL>, call (202) 555-0143, card 4111 1111 1111 1111.", {"EMAIL": 1})
    red = Redactor(PIIConfig(types=["PHONE", "CREDIT_CARD"]))
    assert red.redact(text) == ("Mail a@example.com, call <PHONE>, card <CREDIT_CARD>.",
                                {"PHONE": 1, "CREDIT_CARD": 1})
    assert Redactor(PIIConfig()).redact(text)[1] == {"EMAIL": 1, "PHONE": 1, "CREDIT_CARD": 1}
    assert PIIConfig().types == list(PII_TYPES)
    with pytest.raises(StageError, match="unknown type"):
        redact(text, ["PASSPORT"])
    with pytest.raises(ValueError, match="lists EMAIL more than once"):
        PIIConfig(types=["EMAIL", "EMAIL"])


def test_presidio_backend_or_clear_error():
    try:
        import presidio_analyzer  # noqa: F401
    except ImportError:
        with pytest.raises(StageError, match="pip install presidio-analyzer"):
            Redactor(PIIConfig(backend="presidio"))
        return
    red = Redactor(PIIConfig(backend="presidio"))
    text, counts = red.redact("Mail jane@example.com, key AKIAIOSFODNN7EXAMPLE, card 4111 1111 1111 1111.")
    assert text == "Mail <EMAIL>, key <SECRET>, card <CREDIT_CARD>." and counts["SECRET"] == 1
