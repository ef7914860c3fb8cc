"""dk.notebook.table (one table per output), dk.repeated_ngram_rate (a repeated clause), and sentence BLEU /
 self-BLEU."""
from __future__ import annotations

import re

import pytest

import distilkit as dk
import distilkit.notebook  # noqa: F401  (dk.notebook)
from distilkit.data import make_data_to_text


def test_table_is_one_html_table_with_every_row():
    rows = [{"model": "teacher", "BLEU": 84.86, "SER %": 1.39, "params": 1234203},
            {"model": "student", "BLEU": 53.4, "SER %": None, "params": 182331}]
    t = dk.notebook.table(rows, caption="Test split")
    html = t._repr_html_()
    assert html.count("<table") == 1 and html.count("<tr>") == 3  # header + two rows
    assert "<caption>Test split</caption>" in html
    assert "1,234,203" in html and "84.86" in html and "–" in html  # None shows as a dash
    text = repr(t).splitlines()
    assert text[0] == "Test split" and text[1].split() == ["model", "BLEU", "SER", "%", "params"]
    # numbers right-aligned: every row's BLEU ends in the same column
    ends = {line.index(x) + len(x) for line, x in zip(text[3:], ["84.86", "53.40"])}
    assert len(ends) == 1


def test_table_columns_and_formats():
    t = dk.notebook.table([["a", 0.5], ["b", 12.25]], columns=["name", "x"], formats={"x": ".1f"})
    assert re.search(r"b\s+12\.2", repr(t)) and "0.5" in repr(t)
    t = dk.notebook.table([{"a": 1, "b": 2}], columns=["b"])
    assert "a" not in repr(t).split("\n")[0]


@pytest.mark.parametrize("rows, kwargs, error, match", [
    ({"a": 1}, {}, TypeError, "rows must be a list"),
    ([["a", 1]], {}, ValueError, "columns must name the fields"),
    ([["a", 1]], {"columns": ["x"]}, ValueError, r"rows\[0\] has 2 fields, columns names 1"),
    ([{"a": 1}, ["b"]], {}, TypeError, "all dicts or all lists"),
    ([{"a": 1}], {"formats": {"z": ".1f"}}, ValueError, r"formats names column\(s\) \['z'\]"),
])
def test_table_refuses_bad_input(rows, kwargs, error, match):
    with pytest.raises(error, match=match):
        dk.notebook.table(rows, **kwargs)


def test_repeated_ngram_rate_counts_texts_that_say_a_clause_twice():
    texts = ["the eagle is cheap . it is in the riverside . it is in the riverside .",
             "the eagle is cheap and it is in the riverside ."]
    assert dk.repeated_ngram_rate(texts) == 50.0
    assert dk.repeated_ngram_rate(texts[1:]) == 0.0
    assert dk.repeated_ngram_rate(["it is cheap . it is cheap ."], n=3) == 100.0
    assert dk.repeated_ngram_rate(["it is cheap . it is cheap ."], n=4) == 0.0  # 3 words repeat, not 4


def test_repeated_ngram_rate_of_the_references_is_low():
    """The figure the docstring and the book quote: 0.4% of the test references at n = 4."""
    data = make_data_to_text(num_teacher_train=0)
    refs = [r for _, rs in data.test for r in rs]
    assert dk.repeated_ngram_rate(refs) == pytest.approx(0.40625)


@pytest.mark.parametrize("texts, n, error", [
    ("one text", 4, TypeError), ([1, 2], 4, TypeError), ([], 4, ValueError), (["a b"], 0, ValueError),
    (["a b"], True, ValueError)])
def test_repeated_ngram_rate_refuses_bad_input(texts, n, error):
    with pytest.raises(error):
        dk.repeated_ngram_rate(texts, n=n)


def test_table_right_aligns_numbers_only():
    t = dk.notebook.table([{"student": "1 layer d64", "BLEU": "58.0 ± 3.8", "A - B": "+1.1 [-11.1, +13.3]"},
                           {"student": "2 layers d64", "BLEU": "61.2 ± 1.0", "A - B": "–"}])
    html = t._repr_html_()
    assert '<td style="text-align:left">1 layer d64</td>' in html
    assert '<td style="text-align:right;white-space:nowrap">58.0 ± 3.8</td>' in html
    assert '<td style="text-align:right;white-space:nowrap">+1.1 [-11.1, +13.3]</td>' in html


def test_sentence_bleu_and_self_bleu():
    assert dk.sentence_bleu("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert dk.sentence_bleu("a b c d", ["w x y z"]) < 5
    texts = ["the cat sat on the mat", "the cat sat on a mat", "a dog ran far away"]
    # the mean of each text's sentence BLEU against the others (Texygen), not a corpus score
    each = [dk.sentence_bleu(t, [o for o in texts if o is not t]) for t in texts]
    assert dk.self_bleu(texts) == pytest.approx(sum(each) / 3)
    assert dk.self_bleu(["same words here"] * 3) == pytest.approx(100.0)
    assert dk.self_bleu(texts) != pytest.approx(dk.corpus_bleu(texts, [[o for o in texts if o is not t]
                                                                       for t in texts]))
    with pytest.raises(ValueError, match="at least 2"):
        dk.self_bleu(["alone"])
    with pytest.raises(ValueError, match="references"):
        dk.sentence_bleu("x", [])
