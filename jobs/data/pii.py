"""PII redaction with typed placeholders (<EMAIL>, <PHONE>, <IP_ADDRESS>, <CREDIT_CARD>, <US_SSN>, <IBAN>,
<SECRET>) and counts per type.

The regex backend (jobs.data.pii_detectors) is the default: precompiled patterns, validators that leave
look-alikes alone, and cheap pre-checks (no '@', no email regex). The presidio backend runs Microsoft
Presidio's pattern recognizers instead, for teams that already trust them; secrets stay on the regex backend
because Presidio has no recognizer for them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from jobs.data.pii_detectors import Detector, detectors
from jobs.data.pii_phone import DEFAULT_PHONE_REGIONS
from pipelines.errors import StageError
from pipelines.spec.curation import PII_TYPES, PIIConfig

_DIGIT = re.compile(r"\d")
_MASK_DIGIT, _MASK_LETTER = re.compile(r"\d"), re.compile(r"[^\W\d_]")
Span = tuple[int, int, str]  # start, end, type


def placeholder(pii_type: str) -> str:
    return f"<{pii_type}>"


@lru_cache(maxsize=32)
def detectors_for(
    types: frozenset[str], phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
) -> tuple[Detector, ...]:
    unknown = types - set(PII_TYPES)
    if unknown:
        raise StageError(f"pii: unknown type(s) {', '.join(sorted(unknown))}; valid: {', '.join(PII_TYPES)}")
    return tuple(d for d in detectors(phone_regions) if d.type in types)


def find_spans(text: str, detectors: Iterable[Detector]) -> list[Span]:
    """Validated, non-overlapping PII spans, sorted by start; earlier detectors win overlaps."""
    has_digit = _DIGIT.search(text) is not None
    chosen: list[Span] = []
    taken: list[tuple[int, int]] = []  # chosen spans and look-alikes: later detectors keep off both
    for det in detectors:
        if (det.needs_digit and not has_digit) or (det.triggers and not any(t in text for t in det.triggers)):
            continue
        for m in det.pattern.finditer(text):
            start, end = m.span(det.group)
            length = _validate(det, text, start, end)
            if length is None:
                continue
            end = start + length if length else end
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            if length:
                chosen.append((start, end, det.type))
    return sorted(chosen)


def _validate(det: Detector, text: str, start: int, end: int) -> int | None:
    if det.validate is None:
        return end - start
    if det.context:
        return det.validate(text[start:end], text[max(0, start - 40) : start], text[end : end + 8])
    return det.validate(text[start:end])


def apply_spans(text: str, spans: list[Span]) -> tuple[str, dict[str, int]]:
    """Replace each span with its type's placeholder; counts per type."""
    if not spans:
        return text, {}
    out, last = [], 0
    for start, end, pii_type in spans:
        out += [text[last:start], placeholder(pii_type)]
        last = end
    out.append(text[last:])
    return "".join(out), dict(Counter(t for _, _, t in spans))


def masked_examples(text: str, spans: list[Span], width: int = 40) -> list[tuple[str, str]]:
    """(type, context) per span: the redacted text around it, and in brackets the value's shape, its letters and
    digits masked (`[+## (#)## ### ## ##]`), so a reader can tell a phone number from a date without seeing it."""
    redacted, _ = apply_spans(text, spans)
    out, shift = [], 0
    for start, end, pii_type in spans:
        at = start + shift
        shift += len(placeholder(pii_type)) - (end - start)
        shape = _MASK_DIGIT.sub("#", _MASK_LETTER.sub("x", text[start:end]))
        after = at + len(placeholder(pii_type))
        context = redacted[max(0, at - width) : at] + f"[{shape}]" + redacted[after : after + width]
        out.append((pii_type, " ".join(context.split())))
    return out


def redact(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, dict[str, int]]:
    """`text` with every PII value of the given types replaced by its placeholder, and counts per type."""
    return apply_spans(text, find_spans(text, detectors_for(frozenset(types))))


class Redactor:
    """Built from PIIConfig; `redact(text) -> (text, counts)` with the configured types and backend."""

    def __init__(self, cfg: PIIConfig):
        self.cfg = cfg
        self.types = frozenset(cfg.types)
        self.regions = tuple(cfg.phone_regions)
        self._presidio = PresidioBackend(self.types, self.regions) if cfg.backend == "presidio" else None

    def spans(self, text: str) -> list[Span]:
        if self._presidio is None:
            return find_spans(text, detectors_for(self.types, self.regions))
        return self._presidio.spans(text)

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        return apply_spans(text, self.spans(text))


# llmctl type -> Presidio entity and recognizer class name
PRESIDIO_ENTITIES = {
    "EMAIL": ("EMAIL_ADDRESS", "EmailRecognizer"),
    "PHONE": ("PHONE_NUMBER", "PhoneRecognizer"),
    "IP_ADDRESS": ("IP_ADDRESS", "IpRecognizer"),
    "CREDIT_CARD": ("CREDIT_CARD", "CreditCardRecognizer"),
    "US_SSN": ("US_SSN", "UsSsnRecognizer"),
    "IBAN": ("IBAN_CODE", "IbanRecognizer"),
}


class PresidioBackend:
    """Presidio's predefined pattern recognizers, called directly (no NLP engine, so no spaCy model download)."""

    def __init__(self, types: frozenset[str], phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS,
                 score_threshold: float = 0.0):  # fmt: skip
        try:
            from presidio_analyzer import predefined_recognizers as pr
        except ImportError:
            raise StageError(
                "pii.backend 'presidio' needs the presidio-analyzer package, which is not installed here. "
                "Run `pip install presidio-analyzer`, or set pii.backend: regex."
            ) from None
        _offline_tldextract()
        self.recognizers = [(t, ent, _presidio_recognizer(pr, cls, phone_regions))
                            for t, (ent, cls) in PRESIDIO_ENTITIES.items() if t in types]  # fmt: skip
        self.secrets = detectors_for(frozenset({"SECRET"})) if "SECRET" in types else ()
        self.score_threshold = score_threshold

    def spans(self, text: str) -> list[Span]:
        chosen = find_spans(text, self.secrets)
        found = []
        for pii_type, entity, recognizer in self.recognizers:
            for r in recognizer.analyze(text, entities=[entity], nlp_artifacts=None) or ():
                if r.score >= self.score_threshold:
                    found.append((r.score, r.end - r.start, r.start, r.end, pii_type))
        for _, _, start, end, pii_type in sorted(found, key=lambda f: (-f[0], -f[1], f[2])):
            if all(end <= s or start >= e for s, e, _ in chosen):
                chosen.append((start, end, pii_type))
        return sorted(chosen)


def _presidio_recognizer(module, cls: str, phone_regions: tuple[str, ...]):
    if cls == "PhoneRecognizer":
        return module.PhoneRecognizer(supported_regions=phone_regions)
    return getattr(module, cls)()


def _offline_tldextract() -> None:
    """Presidio's email recognizer calls tldextract, whose default extractor fetches the public-suffix list over
    the network on first use; point it at the snapshot bundled with the package instead."""
    import tldextract

    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
