"""Curation configs used by the `data` stage: quality filters, MinHash-LSH near-dedup, PII redaction.

Thresholds default to the values published with the dataset each rule comes from; every field says where:
- Gopher = Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher", App. A.
- C4 = Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer", §2.2.
- FineWeb = Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data at Scale", §3.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipelines.spec.base import Model


class LengthConfig(Model):
    """Cheap character-length bounds, applied before the word-level rules."""

    min_chars: int = Field(
        1,
        ge=0,
        description="Drop documents shorter than this (characters, after stripping). Not from a paper: a cheap "
        "floor; the published word-count rule is gopher_quality.min_words (Gopher: 50 words).",
    )
    max_chars: int | None = Field(
        None,
        gt=0,
        description="Drop documents longer than this (characters); null for no limit. Gopher bounds length in "
        "words instead (gopher_quality.max_words = 100,000).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LengthConfig:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(
                f"length.max_chars ({self.max_chars}) is below length.min_chars ({self.min_chars}); "
                "raise max_chars or lower min_chars"
            )
        return self


GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQualityConfig(Model):
    """Gopher's document-level quality heuristics (Rae et al. 2021, App. A.1.1 'Quality filters')."""

    min_words: int | None = Field(50, ge=0, description="Drop documents with fewer words. Gopher: 50.")
    max_words: int | None = Field(100_000, gt=0, description="Drop documents with more words. Gopher: 100,000.")
    min_avg_word_length: float | None = Field(
        3.0, ge=0, description="Drop documents whose mean word length (characters) is below this. Gopher: 3."
    )
    max_avg_word_length: float | None = Field(
        10.0, gt=0, description="Drop documents whose mean word length (characters) is above this. Gopher: 10."
    )
    max_symbol_word_ratio: float | None = Field(
        0.1,
        ge=0,
        description="Drop documents whose ratio of '#' and '...' (or '…') to words exceeds this. Gopher: 0.1.",
    )
    max_bullet_lines_ratio: float | None = Field(
        0.9, ge=0, le=1, description="Drop documents where more than this fraction of lines start with a bullet. "
        "Gopher: 0.9.",
    )
    max_ellipsis_lines_ratio: float | None = Field(
        0.3, ge=0, le=1, description="Drop documents where more than this fraction of lines end with an ellipsis. "
        "Gopher: 0.3.",
    )
    min_alpha_words_ratio: float | None = Field(
        0.8,
        ge=0,
        le=1,
        description="Drop documents where fewer than this fraction of words contain an alphabetic character. "
        "Gopher: 0.8.",
    )
    min_stop_words: int | None = Field(
        2,
        ge=0,
        description="Drop documents containing fewer than this many occurrences of the stop words (English). "
        "Gopher: 2 of {the, be, to, of, and, that, have, with}.",
    )
    stop_words: tuple[str, ...] = Field(
        GOPHER_STOP_WORDS, description="Stop words counted by min_stop_words (lowercase). Gopher's English list."
    )

    @model_validator(mode="after")
    def _ordered(self) -> GopherQualityConfig:
        pairs = [("min_words", "max_words"), ("min_avg_word_length", "max_avg_word_length")]
        for low, high in pairs:
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and hi < lo:
                raise ValueError(
                    f"gopher_quality.{high} ({hi}) is below gopher_quality.{low} ({lo}); "
                    f"raise {high} or lower {low}"
                )
        return self


class GopherRepetitionConfig(Model):
    """Gopher's repetition heuristics (Rae et al. 2021, App. A.1.1, Table A1 'Repetition removal')."""

    max_dup_line_fraction: float | None = Field(
        0.30, ge=0, le=1, description="Drop if more than this fraction of lines are duplicates of another line. "
        "Gopher: 0.30.",
    )
    max_dup_para_fraction: float | None = Field(
        0.30, ge=0, le=1, description="Drop if more than this fraction of paragraphs are duplicates. Gopher: 0.30.",
    )
    max_dup_line_char_fraction: float | None = Field(
        0.20, ge=0, le=1, description="Drop if duplicated lines hold more than this fraction of the characters. "
        "Gopher: 0.20.",
    )
    max_dup_para_char_fraction: float | None = Field(
        0.20, ge=0, le=1, description="Drop if duplicated paragraphs hold more than this fraction of the "
        "characters. Gopher: 0.20.",
    )
    top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n -> limit: drop if the most frequent word n-gram covers more than this fraction of the "
        "characters. Gopher: 2-grams 0.20, 3-grams 0.18, 4-grams 0.16. Empty disables the rule.",
    )
    dup_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> limit: drop if word n-grams that occur more than once cover more than this fraction of "
        "the characters. Gopher: 5-grams 0.15 down to 10-grams 0.10. Empty disables the rule.",
    )

    @model_validator(mode="after")
    def _valid_ngram_maps(self) -> GopherRepetitionConfig:
        for name in ("top_ngram_char_fraction", "dup_ngram_char_fraction"):
            for n, limit in getattr(self, name).items():
                if n < 1 or not 0 <= limit <= 1:
                    raise ValueError(
                        f"gopher_repetition.{name}[{n}] = {limit}: n-gram sizes must be >= 1 and limits in [0, 1]; "
                        f"e.g. {{2: 0.20}}"
                    )
        return self


class C4Config(Model):
    """C4's page rules (Raffel et al. 2020, §2.2). Applied as document filters; lines are not rewritten."""

    min_sentences: int | None = Field(
        5, ge=0, description="Drop pages with fewer sentences (in lines that pass the line rules). C4: 5."
    )
    min_words_per_line: int = Field(
        3, ge=0, description="Lines with fewer words do not count towards min_sentences (C4 keeps lines of >= 3 words)."
    )
    require_terminal_punct: bool = Field(
        True, description="Only lines ending in . ! ? or a quote count towards min_sentences (C4's line rule)."
    )
    max_word_length: int | None = Field(
        1000, gt=0, description="Drop pages with a word longer than this (C4's implementation: 1000 characters)."
    )
    drop_lorem_ipsum: bool = Field(True, description="Drop pages containing 'lorem ipsum' (C4).")
    drop_curly_bracket: bool = Field(True, description="Drop pages containing '{', C4's cheap code detector.")
    drop_javascript_lines: bool = Field(
        True, description="Lines mentioning 'javascript' do not count towards min_sentences (C4 removed them)."
    )
    drop_policy_lines: bool = Field(
        True,
        description="Lines with 'terms of use', 'privacy policy', 'uses cookies', ... do not count towards "
        "min_sentences (C4 removed them).",
    )
    bad_words: tuple[str, ...] = Field(
        (),
        description="Drop pages containing any of these words (C4 used the LDNOOBW list; llmctl ships none, so "
        "the rule is off until you list words).",
    )


class FineWebConfig(Model):
    """FineWeb's custom filters (Penedo et al. 2024, §3.4 'Additional heuristic filters')."""

    min_punct_line_fraction: float | None = Field(
        0.12, ge=0, le=1, description="Drop if the fraction of lines ending with terminal punctuation is at most "
        "this. FineWeb: 0.12.",
    )
    max_dup_line_char_fraction: float | None = Field(
        0.10, ge=0, le=1, description="Drop if characters in duplicated lines are at least this fraction. "
        "FineWeb: 0.1.",
    )
    short_line_chars: int = Field(30, gt=0, description="A line at most this long is 'short'. FineWeb: 30.")
    max_short_line_fraction: float | None = Field(
        0.67, ge=0, le=1, description="Drop if the fraction of short lines is at least this. FineWeb: 0.67."
    )
    max_newline_word_ratio: float | None = Field(
        0.3,
        ge=0,
        description="Drop list-like documents whose newline-to-word ratio exceeds this (datatrove's "
        "FineWebQualityFilter, which produced FineWeb: 0.3).",
    )


class QualityConfig(Model):
    """Quality filters in the order they run; set a family to null to disable it."""

    length: LengthConfig | None = Field(default_factory=LengthConfig, description="Character-length bounds.")
    gopher_quality: GopherQualityConfig | None = Field(
        default_factory=GopherQualityConfig, description="Gopher quality heuristics (Rae et al. 2021)."
    )
    gopher_repetition: GopherRepetitionConfig | None = Field(
        default_factory=GopherRepetitionConfig, description="Gopher repetition heuristics (Rae et al. 2021)."
    )
    c4: C4Config | None = Field(default_factory=C4Config, description="C4 page rules (Raffel et al. 2020).")
    fineweb: FineWebConfig | None = Field(
        default_factory=FineWebConfig, description="FineWeb custom filters (Penedo et al. 2024)."
    )


class MinHashConfig(Model):
    """MinHash-LSH near-duplicate removal (Broder 1997; banding as in Leskovec et al., Mining of Massive Datasets)."""

    ngram_size: int = Field(
        5, ge=1, description="Shingles are word n-grams of normalized text. FineWeb and Gopher use 5-grams."
    )
    num_perm: int = Field(
        128,
        ge=2,
        le=1024,
        description="MinHash permutations per document. More lowers the variance of the estimate (sd ≈ "
        "sqrt(J(1-J)/num_perm)) at linear cost; FineWeb used 112 (14 bands x 8 rows).",
    )
    threshold: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Target Jaccard similarity: bands and rows are chosen to minimise the false-positive plus "
        "false-negative area around it (datasketch's rule). FineWeb's 14x8 bands sit near 0.75.",
    )
    bands: int | None = Field(None, ge=1, description="LSH bands; set with rows to override the automatic choice.")
    rows: int | None = Field(None, ge=1, description="Rows (hashes) per band; set with bands.")
    false_positive_weight: float = Field(
        0.5, ge=0, le=1, description="Weight of false positives when choosing bands/rows (false negatives get 1-w)."
    )
    seed: int = Field(1, ge=0, description="Seed of the hash permutations; the same seed gives the same clusters.")
    verify_jaccard: bool = Field(
        False,
        description="Keep only candidate pairs whose exact shingle Jaccard reaches `threshold` (removes LSH false "
        "positives at the cost of comparing shingle sets).",
    )

    @model_validator(mode="after")
    def _bands_rows(self) -> MinHashConfig:
        if (self.bands is None) != (self.rows is None):
            given = "bands" if self.bands is not None else "rows"
            raise ValueError(
                f"minhash.{given} is set without the other: set both bands and rows, or neither to choose them "
                f"from threshold={self.threshold} and num_perm={self.num_perm}"
            )
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"minhash.bands * minhash.rows must be <= num_perm, got {self.bands} * {self.rows} = "
                f"{self.bands * self.rows} > {self.num_perm}; raise num_perm to {self.bands * self.rows} or use "
                "fewer bands/rows"
            )
        return self


# ISO 3166 codes, as libphonenumber names regions: North America, the British Isles, Oceania, South Africa,
# India, Singapore, Hong Kong, Japan, the EU's larger members and their neighbours, Latin America's largest.
# Luxembourg is left out: its numbers take almost any digits in almost any grouping (4412-87-2209 is one).
DEFAULT_PHONE_REGIONS: tuple[str, ...] = (
    "US", "CA", "GB", "IE", "AU", "NZ", "ZA", "IN", "SG", "HK", "JP",
    "DE", "AT", "CH", "FR", "BE", "NL", "IT", "ES", "PT", "SE", "NO", "DK", "FI", "PL", "CZ",
    "BR", "MX", "AR",
)  # fmt: skip
# Names people use for a region that ISO 3166 (and so libphonenumber) spells otherwise.
REGION_ALIASES = {"UK": "GB", "EN": "GB", "USA": "US", "GER": "DE", "SP": "ES", "SUI": "CH", "JA": "JP"}

PIIType = Literal["EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN", "SECRET"]
PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN", "SECRET")


class PIIConfig(Model):
    """PII redaction: each match becomes a typed placeholder such as <EMAIL>; counts per type go to the report."""

    types: list[PIIType] = Field(
        default_factory=lambda: list(PII_TYPES),
        description="Which kinds of PII to redact. Card numbers must pass Luhn, SSNs the SSA range rules, IBANs "
        "mod-97 and their country's length; look-alikes are left as they are.",
    )
    backend: Literal["regex", "presidio"] = Field(
        "regex",
        description="'regex': llmctl's precompiled patterns and validators (fast, no dependencies). 'presidio': "
        "Microsoft Presidio's pattern recognizers (needs `pip install presidio-analyzer`); SECRET stays regex.",
    )

    phone_regions: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PHONE_REGIONS),
        description="Regions (ISO 3166 alpha-2, as Google's libphonenumber names them) whose national formats count "
        "as phone numbers: `07700 900123` is found only if GB is listed. A number written with + or 00 and a "
        "country code is found for any country. The default covers North America, the British Isles, Oceania, "
        "South Africa, India, Singapore, Hong Kong, Japan, the larger EU countries and their neighbours, Brazil, "
        "Mexico and Argentina; add your corpus's regions, and remove ones it does not have (each region is one "
        "more way for an ID number to read as a phone number).",
    )

    @model_validator(mode="after")
    def _known_phone_regions(self) -> PIIConfig:
        if set(self.phone_regions) <= set(DEFAULT_PHONE_REGIONS):
            return self
        from phonenumbers import SUPPORTED_REGIONS  # 50 ms to import: only for lists beyond the default

        unknown = [r for r in self.phone_regions if r not in SUPPORTED_REGIONS]
        if unknown:
            hints = [f"{r} (did you mean {REGION_ALIASES[r.upper()]}?)" if r.upper() in REGION_ALIASES else r
                     for r in unknown]  # fmt: skip
            raise ValueError(
                f"pii.phone_regions: unknown region code(s) {', '.join(hints)}; use ISO 3166 alpha-2 codes that "
                f"libphonenumber knows: {', '.join(sorted(SUPPORTED_REGIONS))}"
            )
        return self

    @model_validator(mode="after")
    def _unique_types(self) -> PIIConfig:
        dupes = sorted({t for t in self.types if self.types.count(t) > 1})
        if dupes:
            raise ValueError(f"pii.types lists {', '.join(dupes)} more than once; list each type once")
        return self
