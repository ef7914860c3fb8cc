"""Inputs are never silently changed: a word or character outside a tokenizer's vocabulary is an
error that names it and where it is (example index or file line), or -- only when asked for with
``unknown="map"`` -- becomes ``<unk>`` with a warning that counts it. Called as a user calls them."""

from __future__ import annotations

import warnings

import pytest

import distilkit as dk
from distilkit.cli import main
from distilkit.data import CharTokenizer, WordTokenizer
from distilkit.experiments import d2t_lm_pairs, d2t_lm_tokenizer
from distilkit.userdata import DataFormatError, encode_lm_text, load_user_examples, split_off_valid


@pytest.fixture(scope="module")
def data():
    return dk.make_data_to_text(num_transfer=10, num_teacher_train=0)


def test_tokenizer_encode_refuses_or_maps_only_when_asked():
    tok = WordTokenizer.from_texts(["the eagle serves thai food ."])
    with pytest.raises(ValueError, match=r"1 word\(s\) not in the tokenizer's vocabulary: 'englsh'"):
        tok.encode("the eagle serves englsh food", unknown="error")
    with pytest.warns(UserWarning, match=r"1 piece\(s\) mapped to <unk>.*'englsh'"):
        ids = tok.encode("the eagle serves englsh food", unknown="map")
    assert ids[3] == tok.unk_id and tok.decode(ids, strip_special=False) == "the eagle serves <unk> food"
    assert tok.unknown_pieces("the englsh eagle englsh") == ["englsh"]
    with pytest.raises(ValueError, match="unknown must be one of 'error', 'map', 'unk', got 'drop'"):
        tok.encode("the eagle", unknown="drop")


def test_encode_inputs_names_the_mr_and_the_words(data):
    mrs = [{"name": "the eagle", "food": "thai"}, {"name": "pizza hut", "food": "thai"}]
    with pytest.raises(ValueError, match=r"mrs\[1\]: 2 word\(s\) not in the tokenizer's vocabulary: 'pizza', 'hut'"):
        data.encode_inputs(mrs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = data.encode_inputs(mrs, unknown="map")
    assert [str(w.message) for w in caught] == [
        "unknown='map': 2 piece(s) in 1 text(s) mapped to <unk> (2 word(s) not in the tokenizer's "
        "vocabulary: 'pizza', 'hut')"]
    assert ids[1].count(data.tokenizer.unk_id) == 2 and data.tokenizer.unk_id not in ids[0]


def test_encode_inputs_refuses_an_attribute_the_task_does_not_know(data):
    # linearize_mr writes only the task's attributes: "wifi" would vanish from the input
    with pytest.raises(ValueError, match=r"mrs\[0\] has attribute\(s\) \['wifi'\] that the task does not know"):
        data.encode_inputs([{"name": "the eagle", "wifi": "yes"}])


def test_encode_pairs_names_the_pair_and_the_side(data):
    mr = {"name": "the eagle", "food": "thai"}
    pairs = [(mr, "the eagle serves thai food ."), (mr, "the eagle serves delicious thai food .")]
    for call in (lambda: data.encode_pairs(pairs), lambda: data.encode_pairs(pairs, unknown="error")):
        with pytest.raises(ValueError, match=r"pairs\[1\] text: 1 word\(s\) .*'delicious'"):
            call()  # the default refuses, as unknown="error" does
    with pytest.warns(UserWarning, match=r"unknown='map': 1 piece\(s\) in 1 text\(s\) mapped to <unk>"):
        mapped = data.encode_pairs(pairs, unknown="map")
    # unknown="unk": the same ids as "map", without the warning (for callers that checked already)
    assert data.encode_pairs(pairs, unknown="unk") == mapped and data.tokenizer.unk_id in mapped[1][1]
    with pytest.raises(ValueError, match="unknown must be one of 'error', 'map', 'unk', got 'drop'"):
        data.encode_pairs([(mr, "the eagle .")], unknown="drop")
    with pytest.raises(ValueError, match=r"mrs\[0\] has attribute\(s\) \['wifi'\]"):
        data.encode_pairs([({"name": "the eagle", "wifi": "yes"}, "the eagle .")])
    # the task's own splits hold no unknown word
    assert len(data.encode_pairs(data.train, unknown="error")) == 400
    assert len(data.encode_inputs(data.transfer)) == 10


def test_lm_text_unknown_character_names_its_line(tmp_path):
    tok = CharTokenizer.from_texts(["abc def\n"])
    path = tmp_path / "notes.txt"
    path.write_text("abc\ndef\nab€c\n" * 3, encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"notes.txt, line 3: 1 character\(s\) not in the tokenizer's "
                                              r"vocabulary: '€'"):
        load_user_examples(path, tok, "lm", block_size=4)
    with pytest.warns(UserWarning, match=r"3 piece\(s\) mapped to <unk>"):
        windows = encode_lm_text(path.read_text(encoding="utf-8"), tok, block_size=4, unknown="map")
    assert any(tok.unk_id in w for w in windows)


def test_d2t_lm_pairs_refuse_unknown_words(data):
    tok = d2t_lm_tokenizer(data)
    mr = {"name": "the eagle", "food": "thai"}
    assert d2t_lm_pairs(tok, [(mr, "the eagle serves thai food .")])  # known words: encoded
    with pytest.raises(ValueError, match=r"pairs\[0\]: 1 word\(s\) .*'yummy'"):
        d2t_lm_pairs(tok, [(mr, "the eagle serves yummy thai food .")])


def test_split_off_valid_warns_when_nothing_is_held_out():
    with pytest.warns(UserWarning, match=r"only 5 example\(s\), fewer than 20: none is held out"):
        train, valid = split_off_valid(list(range(5)))
    assert train == list(range(5)) and valid is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, valid = split_off_valid(list(range(40)))  # enough: no warning
    assert len(valid) == 2 and train + valid == list(range(40))


def test_cli_warns_when_data_is_too_small_to_validate(tmp_path, capsys):
    lines = [f'{{"input": "name : the eagle | food : {f}", "output": "the eagle serves {f} food ."}}\n'
             for f in ("thai", "french", "greek", "indian", "korean")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(lines))
    assert main(["train", "--preset", "d2t-tiny", "--data", str(data), "--steps", "1", "--batch-size", "2",
                 "--no-progress", "--device", "cpu", "--out", str(tmp_path / "m.safetensors")]) == 0
    err = capsys.readouterr().err
    assert f"distilkit train: warning: --data {data}: 5 example(s), fewer than 20: none is held out" in err, err


def test_cli_corpus_with_characters_the_teacher_lacks_is_refused(tmp_path, capsys):
    teacher_text = tmp_path / "teacher.txt"
    teacher_text.write_text("abcdefgh ijklmnop\n" * 40)
    model = tmp_path / "lm.safetensors"
    assert main(["train", "--preset", "lm-student", "--data", str(teacher_text), "--block-size", "16",
                 "--steps", "1", "--no-progress", "--device", "cpu", "--out", str(model)]) == 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc def\n" * 30 + "abc QZ\n" + "abc\n" * 30)
    capsys.readouterr()
    assert main(["distill", "--teacher", str(model), "--corpus", str(corpus), "--block-size", "16",
                 "--steps", "1", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"--corpus {corpus}, line 31: 2 character(s) not in the tokenizer's vocabulary: 'Q', 'Z'" in err, err
