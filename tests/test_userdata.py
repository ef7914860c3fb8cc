"""The user's own data files: JSONL pairs and text, every malformed line named by number."""

import json

import pytest
import torch

import distilkit as dk
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
    # JSONL for a causal model: each line a (prompt, completion) pair, the output scored
    chars = CharTokenizer.from_texts([GOOD])
    [(prompt, completion)] = load_user_examples(_write(tmp_path, "d.jsonl", GOOD), chars, "lm")
    assert chars.decode(prompt) == "name : alimentum" and chars.decode(completion[:-1]) == "Alimentum is a pub."
    with pytest.raises(ValueError, match=r"d.jsonl, line 1: .*not in the tokenizer's vocabulary"):
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


# ============================================================================ the command line
def _jsonl(tmp_path, n=30, bad=None):
    lines = [json.dumps({"input": f"name : place {i % 7} | food : thai",
                         "output": f"place {i % 7} serves thai food ."}) for i in range(n)]
    if bad is not None:
        lines[bad[0] - 1] = bad[1]
    return _write(tmp_path, "pairs.jsonl", "\n".join(lines) + "\n")


def test_cli_train_and_distill_on_user_jsonl(tmp_path, capsys):
    from distilkit.cli import main

    data = _jsonl(tmp_path)
    teacher = tmp_path / "t.safetensors"
    common = ["--data", str(data), "--steps", "2", "--batch-size", "4", "--no-progress",
              "--device", "cpu"]
    assert main(["train", "--preset", "d2t-tiny", "--out", str(teacher)] + common) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["train_examples"] == 29  # 30 lines, the last 5% (one) held out
    student = tmp_path / "s.safetensors"
    assert main(["distill", "--teacher", str(teacher), "--preset", "d2t-tiny", "--out", str(student)]
                + common) == 0
    model, tok, _ = dk.load_model(student)
    assert tok.encode("place 3 serves thai food .", unknown="error")  # the data's own vocabulary


def test_cli_malformed_line_is_named_and_nothing_trains(tmp_path, capsys):
    from distilkit.cli import main

    data = _jsonl(tmp_path, bad=(17, '{"input": "x", "output": 5}'))
    out = tmp_path / "t.safetensors"
    rc = main(["train", "--preset", "d2t-tiny", "--data", str(data), "--out", str(out),
               "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{data}, line 17: 'output' must be a string, got int" in err
    assert not out.exists()


def test_cli_text_file_for_a_language_model(tmp_path, capsys):
    from distilkit.cli import main

    text = _write(tmp_path, "notes.txt", "the quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "lm.safetensors"
    assert main(["train", "--preset", "lm-student", "--data", str(text), "--block-size", "32",
                 "--out", str(out), "--steps", "2", "--batch-size", "4", "--no-progress",
                 "--device", "cpu"]) == 0
    model, tok, _ = dk.load_model(out)
    assert model.kind == "lm" and tok.kind == "char"
    # a text file for an encoder-decoder preset is refused, naming both sides
    rc = main(["train", "--preset", "d2t-tiny", "--data", str(text), "--out", str(out),
               "--steps", "1", "--no-progress"])
    assert rc == 2 and "give it a .jsonl file" in capsys.readouterr().err


def _hf_gpt2(tmp_path, name, n_embd, text):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>",
                                               unk_token="<unk>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=n_embd, n_layer=1, n_head=2,
                                  bos_token_id=2, eos_token_id=2, pad_token_id=0)
    folder = tmp_path / name
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_cache_teacher_then_distill_from_cache_with_hf_models(tmp_path, capsys):
    from distilkit.cli import main

    text = "the quick brown fox jumps over the lazy dog and the cat . " * 40
    teacher = _hf_gpt2(tmp_path, "teacher", 32, text)
    student = _hf_gpt2(tmp_path, "student", 16, text)
    data = _write(tmp_path, "notes.txt", text)
    cache = tmp_path / "cache"
    assert main(["cache-teacher", "--teacher", str(teacher), "--data", str(data), "--block-size", "16",
                 "--top-k", "4", "--out", str(cache), "--no-progress", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["top_k"] == 4 and info["tokens"] > 0
    m = dk.load_teacher_cache(cache).manifest
    assert m["teacher"] == str(teacher) and m["kind"] == "lm"
    out = tmp_path / "distilled"
    assert main(["distill", "--cache", str(cache), "--student", str(student), "--data", str(data),
                 "--block-size", "16", "--out", str(out), "--steps", "2", "--batch-size", "4",
                 "--no-progress", "--device", "cpu"]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    # other data than the cache was built for is refused
    other = _write(tmp_path, "other.txt", text.replace("fox", "cat"))
    rc = main(["distill", "--cache", str(cache), "--student", str(student), "--data", str(other),
               "--block-size", "16", "--out", str(out), "--steps", "1", "--no-progress"])
    assert rc == 2 and "built for other examples" in capsys.readouterr().err
    # --top-k is checked against the teacher's vocabulary, named as the flag
    rc = main(["cache-teacher", "--teacher", str(teacher), "--data", str(data), "--top-k", "100000",
               "--out", str(tmp_path / "c2"), "--no-progress"])
    assert rc == 2 and "--top-k must be an int in [1, " in capsys.readouterr().err


def test_cli_distill_needs_a_teacher_or_a_cache(tmp_path, capsys):
    from distilkit.cli import main

    rc = main(["distill", "--out", str(tmp_path / "s.safetensors"), "--no-progress"])
    assert rc == 2 and "--teacher or --cache is required" in capsys.readouterr().err
