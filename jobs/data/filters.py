"""Document quality filters: Gopher quality and repetition, C4 page rules, FineWeb rules, length bounds.

Each filter is built from its config in pipelines.spec.curation (where the thresholds and their sources are
documented) and implements one method, `reject(doc) -> rule | None`. The base class turns the rule into a drop
reason `"<filter>:<rule>"`, e.g. `"gopher_quality:word_count<50"`; the reason names the threshold, not the
measured value, so the stage can count drops per rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cached_property

import numpy as np

from jobs.data.text import normalize
from pipelines.spec.curation import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LengthConfig,
    QualityConfig,
)

BULLETS = ("•", "-", "*", "‣", "⁃", "◦", "●", "▪", "–", "·")
ELLIPSES = ("...", "…")
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")
_HAS_ALPHA = re.compile(r"[^\W\d_]")
_HAS_ALNUM = re.compile(r"[^\W_]")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$|[\"'”’])")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


class Doc:
    """One document's text and the views of it the rules share, each computed at most once."""

    def __init__(self, text: str):
        self.text = text or ""

    @cached_property
    def lines(self) -> list[str]:
        """Non-blank lines, stripped."""
        return [s for s in (line.strip() for line in self.text.split("\n")) if s]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [s for s in (p.strip() for p in _PARAGRAPH_BREAK.split(self.text)) if s]

    @cached_property
    def words(self) -> list[str]:
        """Whitespace tokens that contain a letter or digit (lone punctuation is not a word)."""
        return [w for w in self.text.split() if _HAS_ALNUM.search(w)]

    @cached_property
    def norm_words(self) -> list[str]:
        """Words of the normalized text, for n-gram statistics."""
        return normalize(self.text).split()

    @cached_property
    def ngrams(self) -> NgramRepetition:
        return NgramRepetition(self.norm_words)


class Filter:
    """Base of the quality filters: subclasses set `name` and implement `reject`."""

    name: str = "filter"

    def reject(self, doc: Doc) -> str | None:
        """The failed rule (e.g. 'word_count<50'), or None to keep the document."""
        raise NotImplementedError

    def check(self, text: str) -> str | None:
        """None to keep `text`, else the drop reason '<name>:<rule>'."""
        return self.check_doc(Doc(text))

    def check_doc(self, doc: Doc) -> str | None:
        rule = self.reject(doc)
        return None if rule is None else f"{self.name}:{rule}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def first_failure(filters: Iterable[Filter], text: str) -> str | None:
    """The drop reason of the first filter that rejects `text`, or None if all keep it."""
    return _first_failure(filters, Doc(text))


def _first_failure(filters: Iterable[Filter], doc: Doc) -> str | None:
    for f in filters:
        reason = f.check_doc(doc)
        if reason is not None:
            return reason
    return None


def _first(rules: Iterable[Callable[[], str | None]]) -> str | None:
    for rule in rules:
        failed = rule()
        if failed is not None:
            return failed
    return None


def _fmt(x: float) -> str:
    return f"{x:g}"


class LengthFilter(Filter):
    name = "length"

    def __init__(self, cfg: LengthConfig):
        self.cfg = cfg

    def reject(self, doc: Doc) -> str | None:
        n = len(doc.text.strip())
        if n < self.cfg.min_chars:
            return f"chars<{self.cfg.min_chars}"
        if self.cfg.max_chars is not None and n > self.cfg.max_chars:
            return f"chars>{self.cfg.max_chars}"
        return None


class GopherQualityFilter(Filter):
    """Rae et al. 2021, App. A.1.1: word count, mean word length, symbols, bullets, ellipses, alpha, stop words."""

    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig):
        self.cfg = cfg
        self.stop_words = frozenset(cfg.stop_words)

    def reject(self, doc: Doc) -> str | None:
        return _first([
            lambda: self._word_count(doc),
            lambda: self._mean_word_length(doc),
            lambda: self._symbols(doc),
            lambda: self._line_shapes(doc),
            lambda: self._alpha_words(doc),
            lambda: self._stop_words(doc),
        ])

    def _word_count(self, doc: Doc) -> str | None:
        c, n = self.cfg, len(doc.words)
        if c.min_words is not None and n < c.min_words:
            return f"word_count<{c.min_words}"
        if c.max_words is not None and n > c.max_words:
            return f"word_count>{c.max_words}"
        return None

    def _mean_word_length(self, doc: Doc) -> str | None:
        c = self.cfg
        if not doc.words:
            return None  # an empty document is the word-count rule's (or the length filter's) business
        mean = sum(len(w) for w in doc.words) / len(doc.words)
        if c.min_avg_word_length is not None and mean < c.min_avg_word_length:
            return f"mean_word_length<{_fmt(c.min_avg_word_length)}"
        if c.max_avg_word_length is not None and mean > c.max_avg_word_length:
            return f"mean_word_length>{_fmt(c.max_avg_word_length)}"
        return None

    def _symbols(self, doc: Doc) -> str | None:
        limit = self.cfg.max_symbol_word_ratio
        if limit is None:
            return None
        # '...' is counted before '…' is: the two spellings of one symbol
        symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("…")
        if symbols / max(1, len(doc.words)) > limit:
            return f"symbol_word_ratio>{_fmt(limit)}"
        return None

    def _line_shapes(self, doc: Doc) -> str | None:
        c, lines = self.cfg, doc.lines
        if not lines:
            return None
        if c.max_bullet_lines_ratio is not None:
            if sum(line.startswith(BULLETS) for line in lines) / len(lines) > c.max_bullet_lines_ratio:
                return f"bullet_lines>{_fmt(c.max_bullet_lines_ratio)}"
        if c.max_ellipsis_lines_ratio is not None:
            if sum(line.endswith(ELLIPSES) for line in lines) / len(lines) > c.max_ellipsis_lines_ratio:
                return f"ellipsis_lines>{_fmt(c.max_ellipsis_lines_ratio)}"
        return None

    def _alpha_words(self, doc: Doc) -> str | None:
        limit = self.cfg.min_alpha_words_ratio
        tokens = doc.text.split()  # every token counts here: a page of numbers and symbols should fail
        if limit is None or not tokens:
            return None
        if sum(1 for w in tokens if _HAS_ALPHA.search(w)) / len(tokens) < limit:
            return f"alpha_words<{_fmt(limit)}"
        return None

    def _stop_words(self, doc: Doc) -> str | None:
        need = self.cfg.min_stop_words
        if not need:
            return None
        found = 0
        for w in doc.norm_words:
            found += w in self.stop_words
            if found >= need:
                return None
        return f"stop_words<{need}"


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated elements, characters in them): every occurrence after an element's first."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


class NgramRepetition:
    """Repeated word n-grams of one document, for every n at once, with numpy instead of a Counter per n.

    Each n-gram gets an exact rank (equal ranks, equal n-grams): the rank of the (n-1)-gram starting at i combined
    with the word at i+n-1, renumbered by np.unique, so ranks grow from words to 10-grams in one pass each."""

    def __init__(self, words: list[str]):
        index: dict[str, int] = {}
        self.m = len(words)
        self.ids = np.fromiter((index.setdefault(w, len(index)) for w in words), np.int64, self.m)
        lengths = np.fromiter(map(len, words), np.int64, self.m)
        self.prefix = np.concatenate(([0], np.cumsum(lengths)))  # characters of words[:i]
        self.lengths, self.total = lengths, max(1, int(self.prefix[-1]))
        self._ranks = {1: self.ids}

    def ranks(self, n: int) -> np.ndarray:
        """rank of the n-gram starting at each of the m-n+1 positions."""
        if n not in self._ranks:
            shorter = self.ranks(n - 1)[:-1]
            key = shorter * (self.m + 1) + self.ids[n - 1 :]
            self._ranks[n] = np.unique(key, return_inverse=True)[1].astype(np.int64)
        return self._ranks[n]

    def top_fraction(self, n: int) -> float:
        """Characters covered by the most frequent n-gram (all its occurrences; ties: the one seen first) over
        characters in words."""
        if self.m < n:
            return 0.0
        rank = self.ranks(n)
        counts = np.bincount(rank)
        best = counts.max()
        if best < 2:
            return 0.0
        first = np.flatnonzero(counts[rank] == best)[0]  # earliest occurrence of a most frequent n-gram
        return float(self.prefix[first + n] - self.prefix[first]) * int(best) / self.total

    def dup_fraction(self, n: int) -> float:
        """Characters of words covered by any occurrence of an n-gram that occurs more than once (each word
        counted once) over characters in words."""
        if self.m < n:
            return 0.0
        rank = self.ranks(n)
        starts = np.flatnonzero(np.bincount(rank)[rank] > 1)
        if not len(starts):
            return 0.0
        edges = np.zeros(self.m + 1, dtype=np.int64)
        edges[starts] += 1
        edges[starts + n] -= 1
        return float(self.lengths[np.cumsum(edges[:-1]) > 0].sum()) / self.total


class BatchNgrams:
    """`NgramRepetition` for a whole batch of documents at once: one np.unique per n over every document's
    positions instead of one per document and n (short documents spent most of their filter time in numpy's
    per-call overhead). Ranks are made per document by ranking (document, word) pairs first, so an n-gram
    repeated across two documents is no repetition. `view(i)` answers for document i, equal to
    NgramRepetition(words of document i)."""

    def __init__(self, word_lists: list[list[str]]):
        index: dict[str, int] = {}
        sizes = np.fromiter(map(len, word_lists), np.int64, len(word_lists))
        flat = [w for words in word_lists for w in words]
        self.starts = np.concatenate(([0], np.cumsum(sizes)))
        self.doc = np.repeat(np.arange(len(word_lists)), sizes)
        self.end = self.starts[1:][self.doc]  # where each position's document ends
        ids = np.fromiter((index.setdefault(w, len(index)) for w in flat), np.int64, len(flat))
        self.ids = ids
        self.lengths = np.fromiter(map(len, flat), np.int64, len(flat))
        self.prefix = np.concatenate(([0], np.cumsum(self.lengths)))
        self.total = np.maximum(1, self.prefix[self.starts[1:]] - self.prefix[self.starts[:-1]])
        self._ranks = {1: np.unique(self.doc * (len(index) + 1) + ids, return_inverse=True)[1].astype(np.int64)}
        self._top: dict[int, np.ndarray] = {}
        self._dup: dict[int, np.ndarray] = {}

    def ranks(self, n: int) -> np.ndarray:
        """Rank of the n-gram starting at each position of the concatenated documents (one that runs into the next
        document gets a rank too, but `_occurrences` leaves it out)."""
        if n not in self._ranks:
            shorter = self.ranks(n - 1)[:-1]
            key = shorter * (len(self.ids) + 1) + self.ids[n - 1 :]
            self._ranks[n] = np.unique(key, return_inverse=True)[1].astype(np.int64)
        return self._ranks[n]

    def _occurrences(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions whose n-gram stays inside its document, how often that n-gram occurs in it)."""
        pos = np.flatnonzero(np.arange(len(self.ids)) + n <= self.end)
        rank = self.ranks(n)[pos]
        return pos, np.bincount(rank)[rank]

    def top(self, n: int) -> np.ndarray:
        """Every document's NgramRepetition.top_fraction(n)."""
        if n not in self._top:
            out = np.zeros(len(self.total))
            pos, count = self._occurrences(n)
            if len(pos):
                doc = self.doc[pos]
                best = np.zeros(len(self.total), dtype=np.int64)
                np.maximum.at(best, doc, count)
                hit = count == best[doc]
                docs, first = np.unique(doc[hit], return_index=True)  # earliest most frequent n-gram per document
                at = pos[hit][first]
                chars = (self.prefix[at + n] - self.prefix[at]) * best[docs]
                out[docs] = np.where(best[docs] >= 2, chars / self.total[docs], 0.0)
            self._top[n] = out
        return self._top[n]

    def dup(self, n: int) -> np.ndarray:
        """Every document's NgramRepetition.dup_fraction(n)."""
        if n not in self._dup:
            pos, count = self._occurrences(n)
            starts = pos[count > 1]
            edges = np.zeros(len(self.ids) + 1, dtype=np.int64)
            np.add.at(edges, starts, 1)
            np.add.at(edges, starts + n, -1)
            covered = np.cumsum(edges[:-1]) > 0
            chars = np.bincount(self.doc[covered], weights=self.lengths[covered], minlength=len(self.total))
            self._dup[n] = chars / self.total
        return self._dup[n]

    def view(self, i: int) -> _NgramView:
        return _NgramView(self, i)


class _NgramView:
    """Document i of a BatchNgrams, with NgramRepetition's two questions."""

    def __init__(self, batch: BatchNgrams, i: int):
        self.batch, self.i = batch, i

    def top_fraction(self, n: int) -> float:
        return float(self.batch.top(n)[self.i])

    def dup_fraction(self, n: int) -> float:
        return float(self.batch.dup(n)[self.i])


def first_failures(filters: list[Filter], texts: list[str | None]) -> list[str | None]:
    """`first_failure` of each text, the n-gram statistics of the batch computed together (BatchNgrams)."""
    docs = [Doc(t) for t in texts]
    if any(isinstance(f, GopherRepetitionFilter) for f in filters):
        batch = BatchNgrams([d.norm_words for d in docs])
        for i, d in enumerate(docs):
            d.ngrams = batch.view(i)
    return [_first_failure(filters, doc) for doc in docs]


def top_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram (all its occurrences) over characters in words."""
    return NgramRepetition(words).top_fraction(n)


def dup_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters of words covered by any occurrence of an n-gram that occurs more than once (each word counted
    once, as in Gopher's 'characters within all duplicate n-grams') over characters in words."""
    return NgramRepetition(words).dup_fraction(n)


class GopherRepetitionFilter(Filter):
    """Rae et al. 2021, App. A.1.1 Table A1: duplicate lines/paragraphs and repeated n-grams."""

    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig):
        self.cfg = cfg

    def reject(self, doc: Doc) -> str | None:
        return _first([
            lambda: self._duplicated("line", doc.lines, self.cfg.max_dup_line_fraction,
                                     self.cfg.max_dup_line_char_fraction, doc),
            lambda: self._duplicated("para", doc.paragraphs, self.cfg.max_dup_para_fraction,
                                     self.cfg.max_dup_para_char_fraction, doc),
            lambda: self._ngrams(doc),
        ])

    @staticmethod
    def _duplicated(what: str, items: list[str], max_frac: float | None, max_chars: float | None,
                    doc: Doc) -> str | None:
        if not items:
            return None
        count, chars = duplicates(items)
        if max_frac is not None and count / len(items) > max_frac:
            return f"dup_{what}_fraction>{_fmt(max_frac)}"
        if max_chars is not None and chars / max(1, len(doc.text)) > max_chars:
            return f"dup_{what}_char_fraction>{_fmt(max_chars)}"
        return None

    def _ngrams(self, doc: Doc) -> str | None:
        stats = doc.ngrams
        for n, limit in sorted(self.cfg.top_ngram_char_fraction.items()):
            if stats.top_fraction(n) > limit:
                return f"top_{n}gram_char_fraction>{_fmt(limit)}"
        for n, limit in sorted(self.cfg.dup_ngram_char_fraction.items()):
            if stats.dup_fraction(n) > limit:
                return f"dup_{n}gram_char_fraction>{_fmt(limit)}"
        return None


class C4Filter(Filter):
    """Raffel et al. 2020, §2.2, as document rules: a page must keep `min_sentences` sentences in lines that pass
    C4's line rules (terminal punctuation, >= 3 words, no 'javascript', no policy boilerplate), and must not
    contain 'lorem ipsum', a curly bracket, an over-long word or a listed bad word."""

    name = "c4"

    def __init__(self, cfg: C4Config):
        self.cfg = cfg
        self.bad_words = frozenset(w.lower() for w in cfg.bad_words)

    def reject(self, doc: Doc) -> str | None:
        return _first([lambda: self._page(doc), lambda: self._sentences(doc)])

    def _page(self, doc: Doc) -> str | None:
        c, lower = self.cfg, doc.text.lower()
        if c.drop_lorem_ipsum and "lorem ipsum" in lower:
            return "lorem_ipsum"
        if c.drop_curly_bracket and "{" in doc.text:
            return "curly_bracket"
        if c.max_word_length is not None and any(len(w) > c.max_word_length for w in doc.words):
            return f"word_length>{c.max_word_length}"
        if self.bad_words and not self.bad_words.isdisjoint(doc.norm_words):
            return "bad_words"
        return None

    def _keeps_line(self, line: str) -> bool:
        c, lower = self.cfg, line.lower()
        if c.require_terminal_punct and not line.endswith(TERMINAL_PUNCT):
            return False
        if len(line.split()) < c.min_words_per_line:
            return False
        if c.drop_javascript_lines and "javascript" in lower:
            return False
        return not (c.drop_policy_lines and any(p in lower for p in POLICY_SUBSTRINGS))

    def _sentences(self, doc: Doc) -> str | None:
        need = self.cfg.min_sentences
        if not need:
            return None
        found = 0
        for line in doc.lines:
            if self._keeps_line(line):
                found += max(1, len(_SENTENCE_END.findall(line)))
                if found >= need:
                    return None
        return f"sentences<{need}"


class FineWebFilter(Filter):
    """Penedo et al. 2024, §3.4: punctuated lines, duplicated-line characters, short lines, newline ratio."""

    name = "fineweb"

    def __init__(self, cfg: FineWebConfig):
        self.cfg = cfg

    def reject(self, doc: Doc) -> str | None:
        c, lines = self.cfg, doc.lines
        if not lines:
            return None
        if c.min_punct_line_fraction is not None:
            if sum(line.endswith(TERMINAL_PUNCT) for line in lines) / len(lines) <= c.min_punct_line_fraction:
                return f"punct_lines<={_fmt(c.min_punct_line_fraction)}"
        if c.max_dup_line_char_fraction is not None:
            chars = duplicates(lines)[1] / max(1, len(doc.text.replace("\n", "")))
            if chars >= c.max_dup_line_char_fraction:
                return f"dup_line_char_fraction>={_fmt(c.max_dup_line_char_fraction)}"
        if c.max_short_line_fraction is not None:
            short = sum(len(line) <= c.short_line_chars for line in lines) / len(lines)
            if short >= c.max_short_line_fraction:
                return f"short_lines>={_fmt(c.max_short_line_fraction)}"
        if c.max_newline_word_ratio is not None:
            if doc.text.count("\n") / max(1, len(doc.words)) > c.max_newline_word_ratio:
                return f"newline_word_ratio>{_fmt(c.max_newline_word_ratio)}"
        return None


# QualityConfig field -> filter class, in the order the filters run (cheapest and broadest first).
FILTERS: dict[str, type[Filter]] = {
    "length": LengthFilter,
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "c4": C4Filter,
    "fineweb": FineWebFilter,
}


def build_filters(cfg: QualityConfig) -> list[Filter]:
    """The enabled filters of `cfg`, in run order (a family set to null is left out)."""
    return [cls(getattr(cfg, field)) for field, cls in FILTERS.items() if getattr(cfg, field) is not None]
