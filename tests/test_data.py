"""Tests for :mod:`distilkit.data`: the generated data-to-text task, tokenizers, the text
corpus, collation and the resumable batch iterator."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

torch.set_num_threads(1)

from distilkit import (  # noqa: E402
    IGNORE_INDEX,
    BatchIterator,
    CharTokenizer,
    WordTokenizer,
    collate_lm,
    collate_seq2seq,
    extract_slots,
    linearize_mr,
    lm_examples,
    load_text_corpus,
    load_tokenizer,
    make_data_to_text,
)
from distilkit.data import ATTRIBUTES, DataToTextTask  # noqa: E402
from distilkit.metrics import slot_errors  # noqa: E402

SMALL = dict(num_train=30, num_transfer=20, num_valid=10, num_test=10, num_refs=3, num_teacher_train=50)


@pytest.fixture(scope="module")
def data():
    """The task exactly as the demo and the CLI build it."""
    return make_data_to_text()


@pytest.fixture(scope="module")
def corpus():
    return load_text_corpus()


# ============================================================================ the data-to-text task
def _as_tuple(d):
    return (d.train, d.transfer, d.valid, d.test, d.teacher_train, d.tokenizer.itos, d.info)


def test_generator_is_deterministic_per_seed():
    a, b = make_data_to_text(seed=3, **SMALL), make_data_to_text(seed=3, **SMALL)
    assert _as_tuple(a) == _as_tuple(b)
    c = make_data_to_text(seed=4, **SMALL)
    assert a.test != c.test and a.train != c.train


def test_teacher_pairs_are_drawn_on_first_read_and_match_drawing_them_at_once():
    """The 40,000 teacher pairs are generated when first read, from the random state the other
    splits leave: the same pairs as continuing the generator by hand, and the other splits are
    unchanged."""
    import random

    from distilkit.data import DataToTextTask

    data = make_data_to_text(seed=3, **SMALL)
    assert len(data.teacher_train) == 50 and "not generated" in repr(data.teacher_train)
    # the generator by hand: test, valid, train, transfer, then the teacher's pairs
    task, rng, seen = DataToTextTask(), random.Random(3), set()

    def fresh():
        while True:
            mr = task.sample_mr(rng)
            if linearize_mr(mr) not in seen:
                seen.add(linearize_mr(mr))
                return mr

    test = [(mr, [task.realise(mr, rng) for _ in range(3)]) for mr in (fresh() for _ in range(10))]
    valid = [(mr, task.realise(mr, rng)) for mr in (fresh() for _ in range(10))]
    train = [(mr, task.realise(mr, rng)) for mr in (fresh() for _ in range(30))]
    transfer = [fresh() for _ in range(20)]
    by_size = {}
    for k in range(1, 9):  # 50 MRs per size, each with exactly k attributes besides the name
        sized = DataToTextTask(min_slots=k, max_slots=k)
        task_k, task = task, sized
        mrs = [fresh() for _ in range(50)]
        task = task_k
        by_size[k] = [(mr, [sized.realise(mr, rng) for _ in range(3)]) for mr in mrs]
    wide, other_splits = DataToTextTask(min_slots=1, max_slots=8), frozenset(seen)

    def unseen():  # the teacher's MRs: none from another split; repeats among them allowed
        while True:
            mr = wide.sample_mr(rng)
            if linearize_mr(mr) not in other_splits:
                return mr

    teacher = [(mr, wide.realise(mr, rng)) for mr in (unseen() for _ in range(50))]
    assert (data.test, data.valid, data.train, data.transfer) == (test, valid, train, transfer)
    assert data.test_by_size == by_size
    assert data.teacher_train[:3] == teacher[:3]  # first read: generated now
    assert list(data.teacher_train) == teacher and data.teacher_train == teacher
    assert "not generated" not in repr(data.teacher_train)


def test_split_sizes(data):
    assert (len(data.train), len(data.transfer), len(data.valid), len(data.test), len(data.teacher_train)) == (
        400, 6000, 200, 400, 40000)
    assert all(len(refs) == 8 for _, refs in data.test)
    small = make_data_to_text(seed=0, **SMALL)
    assert len(small.test) == 10 and all(len(r) == 3 for _, r in small.test)


def test_splits_are_disjoint(data):
    key = linearize_mr
    test = {key(mr) for mr, _ in data.test}
    assert len(test) == len(data.test)  # no duplicate MR inside the test split either
    for name, mrs in [("train", [m for m, _ in data.train]), ("valid", [m for m, _ in data.valid]),
                      ("transfer", data.transfer), ("teacher_train", [m for m, _ in data.teacher_train])]:
        keys = {key(m) for m in mrs}
        assert not keys & test, f"{name} shares MRs with test"
    train_like = {key(m) for m, _ in data.train} | {key(m) for m in data.transfer} | {
        key(m) for m, _ in data.teacher_train}
    assert not train_like & {key(m) for m, _ in data.valid}


def test_test_by_size_covers_every_size_the_teacher_was_trained_on(data):
    assert sorted(data.test_by_size) == list(range(1, 9)) and data.info["teacher_slots"] == [1, 8]
    seen_elsewhere = {linearize_mr(m) for m, _ in data.train + data.valid} | {linearize_mr(m) for m in data.transfer} | {
        linearize_mr(m) for m, _ in data.test} | {linearize_mr(m) for m, _ in data.teacher_train}
    for k, items in data.test_by_size.items():
        assert len(items) == 50 and all(len(mr) - 1 == k and len(refs) == 8 for mr, refs in items)
        assert not {linearize_mr(m) for m, _ in items} & seen_elsewhere, f"size {k} shares MRs with another split"
    sizes = {len(mr) - 1 for mr, _ in data.teacher_train[:5000]}
    assert sizes == set(range(1, 9)), sizes  # the teacher sees one attribute to all eight


def test_task_sizes_are_checked():
    with pytest.raises(ValueError, match="min_slots .* must not exceed max_slots"):
        DataToTextTask(min_slots=5, max_slots=2)
    with pytest.raises(ValueError, match="max_slots must be an int from 0 to 8"):
        DataToTextTask(max_slots=9)
    with pytest.raises(TypeError, match="teacher_task must be a DataToTextTask"):
        make_data_to_text(teacher_task=(1, 8), **SMALL)


def test_mrs_are_well_formed(data):
    task = DataToTextTask()
    for mr, _ in data.test:
        assert "name" in mr and set(mr) <= set(ATTRIBUTES)
        assert task.min_slots <= len(mr) - 1 <= task.max_slots
    assert linearize_mr(data.test[0][0]).startswith("name : ")


def test_every_reference_has_slot_error_zero(data):
    """The generator and the slot-error parser agree: every reference mentions exactly its MR."""
    mrs = [mr for mr, refs in data.test for _ in refs]
    texts = [r for _, refs in data.test for r in refs]
    e = slot_errors(mrs, texts)
    assert e.slots == sum(len(mr) for mr in mrs) > 0
    assert (e.missing, e.wrong, e.added) == (0, 0, 0)
    for split in (data.train, data.valid, data.teacher_train[:5000]):
        e = slot_errors([m for m, _ in split], [t for _, t in split])
        assert (e.missing, e.wrong, e.added) == (0, 0, 0)


def test_references_are_varied(data):
    """One MR has many correct descriptions (what makes multi-reference BLEU meaningful)."""
    assert sum(len(set(refs)) > 1 for _, refs in data.test) > 0.9 * len(data.test)


def test_encode_pairs_and_inputs(data):
    tok = data.tokenizer
    pairs = data.encode_pairs(data.train[:5])
    for (mr, text), (src, tgt) in zip(data.train[:5], pairs):
        assert tgt[-1] == tok.eos_id and tok.decode(tgt) == text
        # the word tokenizer normalises (no space before ':', 'café' -> 'caf é'): compare normalised
        assert tok.decode(src) == tok.join(tok.split(linearize_mr(mr)))
        assert tok.unk_id not in src
    assert data.encode_inputs([data.train[0][0]]) == [pairs[0][0]]


@pytest.mark.parametrize("kwargs", [dict(num_train=0), dict(num_refs=0), dict(num_transfer=-1),
                                    dict(num_test=1.5)])
def test_make_data_to_text_rejects_bad_sizes(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        make_data_to_text(**{**SMALL, **kwargs})


def test_extract_slots_negation():
    assert extract_slots("the eagle is not family friendly.") == {"name": {"the eagle"}, "family": {"no"}}
    assert extract_slots("The Eagle is family friendly.") == {"name": {"the eagle"}, "family": {"yes"}}
    assert extract_slots("it is very expensive") == {"price": {"luxury"}}
    assert extract_slots("it is expensive and high-priced") == {"price": {"expensive"}}
    assert extract_slots("nothing here") == {}
    with pytest.raises(TypeError):
        extract_slots(None)


# ============================================================================ tokenizers
def test_word_tokenizer_round_trips_normalised_text(data):
    tok = data.tokenizer
    texts = [r for _, refs in data.test for r in refs] + [t for _, t in data.valid]
    for t in texts:
        ids = tok.encode(t)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == t
    # normalisation: lower case, single spaces, no space before punctuation
    assert tok.decode(tok.encode("The  EAGLE is cheap , near Avalon .")) == "the eagle is cheap, near avalon."
    assert tok.encode("the eagle", add_bos=True, add_eos=True)[::2] == [tok.bos_id, tok.stoi["eagle"]]
    assert tok.encode("the eagle", add_bos=True, add_eos=True)[-1] == tok.eos_id
    assert tok.decode(tok.encode("zzzqqq", unknown="unk")) == "<unk>"
    with pytest.raises(ValueError, match="1 word.* not in the tokenizer's vocabulary: 'zzzqqq'"):
        tok.encode("the zzzqqq")  # the default refuses and names the word


@pytest.fixture(scope="module")
def small_word_tok():
    return make_data_to_text(seed=0, **SMALL).tokenizer


@given(st.data())
def test_word_tokenizer_round_trip_property(small_word_tok, draw):
    tok = small_word_tok
    pieces = draw.draw(st.lists(st.sampled_from(tok.itos[4:]), min_size=1, max_size=30))
    text = tok.join(pieces)
    ids = tok.encode(text)
    assert ids == [tok.stoi[p] for p in pieces]
    assert tok.decode(ids) == text
    # decoding stops at <eos> and skips <pad> / <bos>
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, ids[0]]) == text
    assert tok.decode([tok.pad_id] + ids) == text


@given(st.data())
def test_char_tokenizer_round_trips_exactly(corpus, draw):
    tok = _char_tok(corpus)
    alphabet = tok.itos[4:]
    text = draw.draw(st.text(alphabet=st.sampled_from(alphabet), max_size=200))
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.unk_id not in ids
    assert tok.decode(ids) == text


_CHAR_CACHE = {}


def _char_tok(corpus):
    if "tok" not in _CHAR_CACHE:
        _CHAR_CACHE["tok"] = CharTokenizer.from_texts([corpus])
    return _CHAR_CACHE["tok"]


def test_char_tokenizer_on_corpus_text(corpus):
    tok = _char_tok(corpus)
    piece = corpus[1000:6000]
    assert tok.decode(tok.encode(piece)) == piece
    assert tok.decode(tok.encode("a<pad>b")) == "a<pad>b"  # specials are not parsed from text


def test_tokenizer_specials_and_errors():
    tok = WordTokenizer(["b", "a"])
    assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and len(tok) == tok.vocab_size == 6
    with pytest.raises(ValueError, match="duplicates"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([99])
    with pytest.raises(TypeError, match="str"):
        tok.encode(["a"])


@pytest.mark.parametrize("kind", ["word", "char"])
def test_tokenizer_save_load_round_trip(tmp_path, kind, small_word_tok):
    tok = small_word_tok if kind == "word" else CharTokenizer.from_texts(["héllo wörld £5\n\t"])
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    back = load_tokenizer(path)
    assert type(back) is type(tok) and back == tok and back.itos == tok.itos
    assert back != (CharTokenizer if kind == "word" else WordTokenizer)(tok.itos)  # kind matters
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp file left behind


@pytest.mark.parametrize("content", ['{"kind": "word", "tokens": ["a", ', "\xff\xfe not utf-8"])
def test_malformed_tokenizer_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken-tokenizer.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError, match="broken-tokenizer.json"):
        load_tokenizer(path)


@pytest.mark.parametrize("obj", [[1, 2], {"kind": "bpe", "tokens": []}, {"tokens": ["a"]},
                                 {"kind": "word", "tokens": ["a", "a"]}])
def test_wrong_tokenizer_description_names_the_file(tmp_path, obj):
    path = tmp_path / "odd-tokenizer.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="odd-tokenizer.json"):
        load_tokenizer(path)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")


# ============================================================================ corpus
def test_default_corpus(corpus):
    assert isinstance(corpus, str) and len(corpus) > 400_000
    assert load_text_corpus(max_chars=1000) == corpus[:1000]


def test_corpus_from_file_and_errors(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("hello world\n", encoding="utf-8")
    assert load_text_corpus(p) == "hello world\n"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_text_corpus(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ValueError, match="UTF-8"):
        load_text_corpus(tmp_path / "bin.txt")


def test_lm_examples():
    ids = list(range(10))
    assert lm_examples(ids, 3) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert lm_examples(ids, 4, stride=2) == [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6], [4, 5, 6, 7, 8]]
    assert lm_examples(ids, 9) == [ids]
    with pytest.raises(ValueError, match="block_size"):
        lm_examples(ids, 10)  # needs 11 tokens
    with pytest.raises(ValueError, match="block_size"):
        lm_examples([1, 2, 3], 0)
    with pytest.raises(ValueError, match="3 tokens"):
        lm_examples([1, 2, 3], 5)


# ============================================================================ collation
def test_collate_seq2seq_pads_and_shifts():
    b = collate_seq2seq([([5, 6, 7], [8, 2]), ([5], [9, 10, 11, 2])])
    assert b.src.tolist() == [[5, 6, 7], [5, 0, 0]]
    assert b.src_lengths.tolist() == [3, 1]
    assert b.decoder_input.tolist() == [[1, 8, 0, 0], [1, 9, 10, 11]]  # <bos> + target[:-1], pad 0
    assert b.labels.tolist() == [[8, 2, IGNORE_INDEX, IGNORE_INDEX], [9, 10, 11, 2]]
    assert b.teacher_logits is None and len(b) == 2
    # custom pad / bos ids
    b = collate_seq2seq([([5], [8, 2]), ([5, 6], [2])], pad_id=7, bos_id=4)
    assert b.src.tolist() == [[5, 7], [5, 6]]
    assert b.decoder_input.tolist() == [[4, 8], [4, 7]]
    assert b.labels.tolist() == [[8, 2], [2, IGNORE_INDEX]]


def test_collate_seq2seq_teacher_logits_and_errors():
    l1, l2 = torch.randn(2, 5), torch.randn(4, 5)
    b = collate_seq2seq([([5], [8, 2], l1), ([6], [9, 9, 9, 2], l2)])
    assert b.teacher_logits.shape == (2, 4, 5)
    assert torch.equal(b.teacher_logits[0, :2], l1) and torch.equal(b.teacher_logits[1], l2)
    assert torch.all(b.teacher_logits[0, 2:] == 0)
    with pytest.raises(ValueError, match="every example"):
        collate_seq2seq([([5], [8, 2], l1), ([6], [9, 2])])
    with pytest.raises(ValueError, match="empty"):
        collate_seq2seq([])
    with pytest.raises(ValueError, match=r"examples\[1\]"):
        collate_seq2seq([([5], [8, 2]), ([], [2])])
    with pytest.raises(TypeError, match=r"examples\[0\]"):
        collate_seq2seq([[5, 8, 2, 2]])


def test_collate_lm_pads_and_shifts():
    b = collate_lm([[1, 2, 3, 4], [5, 6]])
    assert b.input_ids.tolist() == [[1, 2, 3], [5, 0, 0]]
    assert b.labels.tolist() == [[2, 3, 4], [6, IGNORE_INDEX, IGNORE_INDEX]]
    assert b.teacher_logits is None
    b = collate_lm([[1, 2, 3]], pad_id=9)
    assert b.input_ids.tolist() == [[1, 2]] and b.labels.tolist() == [[2, 3]]
    lg = torch.randn(1, 7)
    b = collate_lm([([1, 2], lg), ([3, 4, 5], torch.randn(2, 7))])
    assert b.input_ids.tolist() == [[1, 0], [3, 4]] and b.teacher_logits.shape == (2, 2, 7)
    assert torch.equal(b.teacher_logits[0, :1], lg)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        collate_lm([[1]])
    with pytest.raises(ValueError, match="every example"):
        collate_lm([([1, 2], lg), [3, 4]])


# ============================================================================ batching
def _ids(batch):
    return list(batch)


def test_batch_iterator_epochs_are_permutations():
    it = BatchIterator(list(range(10)), 4, _ids, seed=1)
    epoch1 = next(it) + next(it) + next(it)
    assert sorted(epoch1) == list(range(10))
    epoch2 = next(it) + next(it) + next(it)
    assert sorted(epoch2) == list(range(10)) and epoch1 != epoch2
    it = BatchIterator(list(range(10)), 4, _ids, shuffle=False)
    assert [next(it) for _ in range(4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]
    it = BatchIterator(list(range(10)), 4, _ids, shuffle=False, drop_last=True)
    assert [next(it) for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]


def test_batch_iterator_state_reproduces_batches():
    examples = list(range(11))
    for consumed in (0, 2, 3, 7):  # 3 = exactly the end of the first epoch
        it = BatchIterator(examples, 4, _ids, seed=5)
        for _ in range(consumed):
            next(it)
        saved = json.loads(json.dumps(it.state_dict()))  # it is stored as JSON in checkpoints
        expected = [next(it) for _ in range(8)]
        again = BatchIterator(examples, 4, _ids, seed=5)
        again.load_state_dict(saved)
        assert [next(again) for _ in range(8)] == expected
    a, b = BatchIterator(examples, 4, _ids, seed=5), BatchIterator(examples, 4, _ids, seed=6)
    assert [next(a) for _ in range(3)] != [next(b) for _ in range(3)]


def test_batch_iterator_errors():
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator([1], 0, _ids)
    with pytest.raises(ValueError, match="empty"):
        BatchIterator([], 4, _ids)
