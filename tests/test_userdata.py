"""The user's own data files: JSONL pairs and text, every malformed line named by number."""

import json

import pytest

from distilkit.data import CharTokenizer, WordTokenizer
from distilkit.userdata import (
    DataFormatError,
    data_format,
    encode_text_pairs,
    load_user_examples,
    read_jsonl_pairs,
    read_text_file,
)


def _write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


GOOD = '{"input": "name : alimentum", "output": "Alimentum is a pub."}\n'


def test_jsonl_pairs_read_in_order(tmp_path):
    lines = [json.dumps({"input": f"in {i}", "output": f"out {i}"}) for i in range(5)]
    p = _write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    assert read_jsonl_pairs(p) == [(f"in {i}", f"out {i}") for i in range(5)]


def test_jsonl_last_line_without_newline(tmp_path):
    p = _write(tmp_path, "d.jsonl", GOOD + GOOD.strip())
    assert len(read_jsonl_pairs(p)) == 2


@pytest.mark.parametrize(
    "bad, expected",
    [
        ('{"input": "a", "output": ', "not valid JSON"),
        ('["a", "b"]', "must be a JSON object"),
        ('"just a string"', "got a JSON str"),
        ('{"input": "a"}', "lacks the key 'output'"),
        ('{"output": "b"}', "lacks the key 'input'"),
        ('{"input": "a", "output": "b", "label": 1}', "unknown key(s) ['label']"),
        ('{"input": 3, "output": "b"}', "'input' must be a string, got int"),
        ('{"input": "a", "output": null}', "'output' must be a string, got NoneType"),
        ('{"input": "a", "output": "  "}', "'output' is empty"),
        ("", "is blank"),
        ("   ", "is blank"),
    ],
)
def test_jsonl_malformed_line_named(tmp_path, bad, expected):
    p = _write(tmp_path, "d.jsonl", GOOD + GOOD + bad + "\n" + GOOD)
    with pytest.raises(DataFormatError) as err:
        read_jsonl_pairs(p)
    assert err.value.line == 3
    assert f"{p}, line 3: " in str(err.value)
    assert expected in str(err.value)


def test_jsonl_not_utf8_names_line(tmp_path):
    p = _write(tmp_path, "d.jsonl", GOOD.encode() + b'{"input": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataFormatError, match=r"line 2: is not UTF-8 text \(byte 0xe9 at column 15\)"):
        read_jsonl_pairs(p)


def test_empty_files_refused(tmp_path):
    with pytest.raises(DataFormatError, match="no lines"):
        read_jsonl_pairs(_write(tmp_path, "e.jsonl", ""))
    with pytest.raises(DataFormatError, match="empty"):
        read_text_file(_write(tmp_path, "e.txt", " \n\n"))
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_text_file(tmp_path / "missing.txt")


def test_text_file_not_utf8_names_line(tmp_path):
    p = _write(tmp_path, "t.txt", b"fine line\nsecond\nbad \xff here\n")
    with pytest.raises(DataFormatError, match=r"line 3: is not UTF-8"):
        read_text_file(p)


def test_format_by_suffix():
    assert data_format("a/b.jsonl") == "jsonl"
    assert data_format("a/b.JSONL") == "jsonl"
    assert data_format("a/b.txt") == "text"
    assert data_format("corpus") == "text"


def test_load_user_examples_seq2seq_and_lm(tmp_path):
    p = _write(tmp_path, "d.jsonl", GOOD * 3)
    tok = WordTokenizer.from_texts(["name : alimentum", "alimentum is a pub."])
    ex = load_user_examples(p, tok, "seq2seq")
    assert len(ex) == 3
    src, tgt = ex[0]
    assert src == tok.encode("name : alimentum")
    assert tgt == tok.encode("Alimentum is a pub.") + [tok.eos_id]
    text = "hello world, " * 20
    t = _write(tmp_path, "c.txt", text)
    ctok = CharTokenizer.from_texts([text])
    windows = load_user_examples(t, ctok, "lm", block_size=16)
    assert all(len(w) == 17 for w in windows)
    assert ctok.decode(windows[0]) == text[:17]


def test_wrong_format_for_model_kind(tmp_path):
    tok = CharTokenizer.from_texts(["abc"])
    with pytest.raises(ValueError, match="needs a seq2seq model"):
        load_user_examples(_write(tmp_path, "d.jsonl", GOOD), tok, "lm")
    with pytest.raises(ValueError, match="give it a .jsonl file"):
        load_user_examples(_write(tmp_path, "c.txt", "abc" * 50), tok, "seq2seq")


def test_side_without_tokens_is_named(tmp_path):
    class Empty:
        eos_token_id = None

        def __call__(self, text, **kw):
            return {"input_ids": [] if text == "nothing" else [5, 6]}

    with pytest.raises(DataFormatError, match="line 2: 'input' encodes to no token"):
        encode_text_pairs([("a", "b"), ("nothing", "b")], Empty(), "x.jsonl")


def test_hf_tokenizer_pairs(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(["a pub near the river", "name : x"],
                            trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "</s>"]))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>",
                                               pad_token="<pad>", unk_token="<unk>")
    assert tokenizers is not None
    p = _write(tmp_path, "d.jsonl", '{"input": "name : x", "output": "a pub"}\n')
    [(src, tgt)] = load_user_examples(p, tok, "seq2seq")
    assert tok.decode(src) == "name : x"
    assert tgt[-1] == tok.eos_token_id and tok.decode(tgt[:-1]) == "a pub"
