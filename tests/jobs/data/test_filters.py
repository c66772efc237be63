"""Each quality rule drops what it should and keeps what it should, with a reason naming the rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.data.filters import (
    C4Filter,
    FineWebFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LengthFilter,
    build_filters,
    dup_ngram_char_fraction,
    first_failure,
    top_ngram_char_fraction,
)
from pipelines.spec.curation import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LengthConfig,
    MinHashConfig,
    QualityConfig,
)

GOOD = (
    "The old bridge in Marlow was repaired by the council after the storm. Anna and Ben visited the market "
    "with three friends. Many farmers have to carry their apples to the station in the morning.\n\n"
    "It was a quiet day, and the teacher explained the map to the students. Nobody in the village could "
    "remember a colder winter than that one. The baker opened his shop before sunrise and sold warm bread.\n\n"
    "People from the valley often share their stories with curious travellers. The museum of Kelby "
    "collected old letters that describe the harbor and the ships."
)


def test_good_text_passes_every_default_filter():
    assert first_failure(build_filters(QualityConfig()), GOOD) is None


def test_build_filters_order_and_disabling():
    names = [f.name for f in build_filters(QualityConfig())]
    assert names == ["length", "gopher_quality", "gopher_repetition", "c4", "fineweb"]
    cfg = QualityConfig(gopher_quality=None, c4=None, length=None)
    assert [f.name for f in build_filters(cfg)] == ["gopher_repetition", "fineweb"]
    assert build_filters(QualityConfig(length=None, gopher_quality=None, gopher_repetition=None, c4=None,
                                       fineweb=None)) == []


def test_first_failure_reports_the_first_rule_in_order():
    filters = build_filters(QualityConfig())
    assert first_failure(filters, "") == "length:chars<1"
    assert first_failure(filters, "Too short to be a page.") == "gopher_quality:word_count<50"


def test_length_bounds():
    f = LengthFilter(LengthConfig(min_chars=10, max_chars=20))
    assert f.check("short") == "length:chars<10"
    assert f.check("x" * 21) == "length:chars>20"
    assert f.check("just right ok") is None
    with pytest.raises(ValidationError, match=r"max_chars \(5\) is below length.min_chars \(10\)"):
        LengthConfig(min_chars=10, max_chars=5)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("the cat " * 10, "word_count<50"),
        ("the " + "a b c " * 30, "mean_word_length<3"),
        ("the and " + "incomprehensibilities " * 60, "mean_word_length>10"),
        ("the and " + "word #tag " * 40, "symbol_word_ratio>0.1"),
        ("\n".join(f"- the item number {i} and more words" for i in range(20)), "bullet_lines>0.9"),
        ("\n".join(f"the story goes on and on with many more words in line {i}..." for i in range(20)),
         "ellipsis_lines>0.3"),
        ("the and " + " ".join(f"{i} 12.{i} = +{i}" for i in range(40)), "alpha_words<0.8"),
        (" ".join(f"word{i} thing" for i in range(60)), "stop_words<2"),
    ],
)
def test_gopher_quality_rules(text, reason):
    assert GopherQualityFilter(GopherQualityConfig()).check(text) == f"gopher_quality:{reason}"


def test_gopher_quality_rules_can_be_disabled_one_by_one():
    text = " ".join(f"word{i} thing" for i in range(60))  # no stop words
    assert GopherQualityFilter(GopherQualityConfig(min_stop_words=None)).check(text) is None
    short = "the little kitten rested quietly on the carpet"
    assert GopherQualityFilter(GopherQualityConfig(min_words=None)).check(short) is None
    assert GopherQualityFilter(GopherQualityConfig()).check(GOOD) is None
    with pytest.raises(ValidationError, match="max_words .* is below gopher_quality.min_words"):
        GopherQualityConfig(min_words=100, max_words=10)


def test_ngram_fractions():
    words = "a b a b a b c d".split()
    # the bigram (a, b) occurs 3 times, 2 chars each, over 8 chars
    assert top_ngram_char_fraction(words, 2) == pytest.approx(6 / 8)
    assert top_ngram_char_fraction("a b c d".split(), 2) == 0.0
    # 3-grams a b a / b a b repeat: they cover words 0..5
    assert dup_ngram_char_fraction(words, 3) == pytest.approx(6 / 8)
    assert dup_ngram_char_fraction("a b c d e".split(), 3) == 0.0


def test_gopher_repetition_rules():
    f = GopherRepetitionFilter(GopherRepetitionConfig())
    line = "The same line of text appears here again."
    others = [f"Line number {i} says something else entirely today." for i in range(6)]
    assert f.check("\n".join([line] * 6 + others)) == "gopher_repetition:dup_line_fraction>0.3"
    para = "A whole paragraph that repeats itself word for word, which is a typical sign of spam."
    text = "\n\n".join([para, para, "A different paragraph, this one longer than the first by far, truly."])
    lines_off = GopherRepetitionConfig(max_dup_line_fraction=None, max_dup_line_char_fraction=None)
    assert GopherRepetitionFilter(lines_off).check(text) == (
        "gopher_repetition:dup_para_fraction>0.3"
    )
    spam = " ".join(["buy cheap shoes now"] * 20) + " " + GOOD
    assert f.check(spam).startswith("gopher_repetition:top_2gram_char_fraction")
    assert f.check(GOOD) is None
    quiet = GopherRepetitionConfig(max_dup_line_fraction=None, max_dup_para_fraction=None,
                                   max_dup_line_char_fraction=None, max_dup_para_char_fraction=None,
                                   top_ngram_char_fraction={}, dup_ngram_char_fraction={})
    assert GopherRepetitionFilter(quiet).check(spam) is None
    with pytest.raises(ValidationError, match=r"top_ngram_char_fraction\[2\] = 1.5"):
        GopherRepetitionConfig(top_ngram_char_fraction={2: 1.5})


def test_c4_rules():
    f = C4Filter(C4Config())
    assert f.check(GOOD) is None
    assert f.check(GOOD + " Lorem ipsum dolor sit amet.") == "c4:lorem_ipsum"
    assert f.check(GOOD + " function() { return 1; }") == "c4:curly_bracket"
    assert f.check(GOOD + " " + "x" * 1001) == "c4:word_length>1000"
    assert C4Filter(C4Config(bad_words=("harbor",))).check(GOOD) == "c4:bad_words"
    # lines without terminal punctuation, javascript or policy lines do not count as sentences
    lines = ["Home page of the site", "Please enable JavaScript to view the comments.",
             "By using this site you agree to our privacy policy.", "Short one.", "Two words."]
    assert f.check("\n".join(lines * 3)) == "c4:sentences<5"
    assert C4Filter(C4Config(drop_javascript_lines=False, drop_policy_lines=False)).check("\n".join(lines * 3)) is None


def test_fineweb_rules():
    f = FineWebFilter(FineWebConfig())
    assert f.check(GOOD) is None
    menu = "\n".join(f"Menu entry number {i} of the site navigation bar" for i in range(20)) + "\nEnd."
    assert f.check(menu) == "fineweb:punct_lines<=0.12"
    dup = GOOD + "\n" + "\n".join(["Share this article with your friends now."] * 8)
    assert f.check(dup) == "fineweb:dup_line_char_fraction>=0.1"
    short = "\n".join(f"Item {i}." for i in range(30))
    assert f.check(short) == "fineweb:short_lines>=0.67"
    listy = "\n".join(f"the word{i} is here." if i % 5 == 0 else f"w{i}." for i in range(40))
    assert FineWebFilter(FineWebConfig(max_short_line_fraction=None)).check(listy) == "fineweb:newline_word_ratio>0.3"


def test_minhash_config_validators_say_rule_values_and_fix():
    with pytest.raises(ValidationError, match=r"bands \* minhash.rows must be <= num_perm, got 20 \* 10 = 200 > 128"):
        MinHashConfig(bands=20, rows=10)
    with pytest.raises(ValidationError, match="minhash.bands is set without the other"):
        MinHashConfig(bands=4)
    assert MinHashConfig(bands=16, rows=8).bands == 16
    with pytest.raises(ValidationError, match="extra"):
        MinHashConfig(threshhold=0.5)


def test_batch_ngram_statistics_equal_each_documents_own():
    """BatchNgrams answers every document's n-gram questions at once; the answers are NgramRepetition's, and an
    n-gram repeated across two documents is no repetition in either."""
    import random

    from jobs.data.filters import BatchNgrams, NgramRepetition

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(30)]
    lists = [[rng.choice(vocab[: rng.randint(1, 30)]) for _ in range(rng.randint(0, 60))] for _ in range(300)]
    lists += [["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "e"]]
    batch = BatchNgrams(lists)
    for i, words in enumerate(lists):
        own = NgramRepetition(words)
        for n in range(2, 11):
            assert batch.view(i).top_fraction(n) == pytest.approx(own.top_fraction(n), abs=1e-12)
            assert batch.view(i).dup_fraction(n) == pytest.approx(own.dup_fraction(n), abs=1e-12)
    assert batch.view(len(lists) - 1).dup_fraction(5) == 0.0


def test_first_failures_of_a_batch_equal_one_by_one():
    from jobs.data.filters import first_failures

    filters = build_filters(QualityConfig())
    texts = [GOOD, "", "Too short to be a page.", None, GOOD.replace(".", " word word word word word.")]
    assert first_failures(filters, texts) == [first_failure(filters, t) for t in texts]
