"""Tests for :mod:`distilkit.metrics` (BLEU, slot errors, perplexity, agreement) and
:mod:`distilkit.checkpoint` (safetensors round trips, refusing anything else -- pickles above
all -- and atomic writes)."""

from __future__ import annotations

import math
import os
import pickle

import pytest
import sacrebleu
import torch
from safetensors.torch import save as st_save

torch.set_num_threads(1)

from distilkit import (  # noqa: E402
    CharTokenizer,
    CheckpointError,
    Seq2SeqConfig,
    Seq2SeqLSTM,
    TrainConfig,
    TransformerConfig,
    TransformerLM,
    WordTokenizer,
    agreement,
    collate_lm,
    corpus_bleu,
    load_model,
    load_weights,
    perplexity,
    save_model,
    slot_error_rate,
    slot_errors,
    train,
)
from distilkit.checkpoint import atomic_write_bytes, read_checkpoint, write_checkpoint  # noqa: E402
from distilkit.metrics import decoding_speed  # noqa: E402

V = 13


def s2s(seed=0, vocab=V, hidden=16):
    torch.manual_seed(seed)
    return Seq2SeqLSTM(Seq2SeqConfig(vocab_size=vocab, embed_dim=16, hidden_dim=hidden))


def tlm(seed=0, vocab=V):
    torch.manual_seed(seed)
    return TransformerLM(TransformerConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, max_len=32))


PAIRS = [([4, 5, 6], [7, 8, 2]), ([9], [10, 11, 12, 4, 2]), ([5, 5], [2])]
WINDOWS = [[1, 4, 5, 6, 7], [1, 8, 9], [3, 3, 3, 3, 3, 3]]


# ============================================================================ BLEU
HYPS = ["the eagle is a cheap pub near the river .", "it serves thai food in the city centre ."]
REFS = [["the eagle is a cheap pub by the river .", "the eagle is a pub ."],
        ["it serves thai food in the city centre .", "thai food is served here ."]]


def test_bleu_is_100_for_hypotheses_equal_to_a_reference():
    hyps = [REFS[0][1], REFS[1][0]]  # equal to the 2nd reference of the first input, the 1st of the second
    assert corpus_bleu(hyps, REFS) == pytest.approx(100.0)
    assert corpus_bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx(100.0)
    assert corpus_bleu(["x y z w v"], [["a b c d e"]]) == pytest.approx(0.0)


def test_bleu_matches_sacrebleu():
    streams = [[r[j] for r in REFS] for j in range(2)]
    expected = sacrebleu.corpus_bleu(HYPS, streams).score
    assert 0 < expected < 100
    assert corpus_bleu(HYPS, REFS) == pytest.approx(expected, abs=1e-9)


def test_bleu_with_different_numbers_of_references():
    refs = [[REFS[0][1]], REFS[1]]  # one reference, then two
    got = corpus_bleu(HYPS, refs)
    # a repeated reference changes nothing in BLEU, so padding the short list with a copy of
    # its own reference gives the reference value; a foreign reference in that slot would not
    same = sacrebleu.corpus_bleu(HYPS, [[REFS[0][1], REFS[1][0]], [REFS[0][1], REFS[1][1]]]).score
    assert got == pytest.approx(same, abs=1e-9)
    foreign = sacrebleu.corpus_bleu(HYPS, [[REFS[0][1], REFS[1][0]], [REFS[0][0], REFS[1][1]]]).score
    assert abs(got - foreign) > 1.0
    three = [REFS[0] + ["a third reference for the eagle ."], [REFS[1][1]]]
    assert 0 <= corpus_bleu(HYPS, three) <= 100


def test_bleu_errors():
    with pytest.raises(ValueError, match=r"hypotheses \(2\) and references \(1\)"):
        corpus_bleu(HYPS, REFS[:1])
    with pytest.raises(ValueError, match="equal length"):
        corpus_bleu("a string", REFS)
    with pytest.raises(ValueError, match="empty"):
        corpus_bleu([], [])
    with pytest.raises(ValueError, match=r"references\[1\]"):
        corpus_bleu(HYPS, [REFS[0], []])
    with pytest.raises(ValueError, match=r"references\[0\]"):
        corpus_bleu(HYPS, ["a single string", REFS[1]])


# ============================================================================ slot errors
MR = {"name": "the eagle", "food": "thai", "area": "riverside"}


@pytest.mark.parametrize("text, counts", [
    ("the eagle serves thai food in the riverside.", (0, 0, 0)),
    ("The Eagle serves Thai food.", (1, 0, 0)),                               # area missing
    ("the eagle serves italian food in the riverside.", (0, 1, 0)),           # wrong food
    ("the eagle serves thai and italian food in the riverside.", (0, 1, 0)),  # right and wrong value
    ("the eagle serves thai food in the riverside. it is cheap and kid friendly.", (0, 0, 2)),  # 2 added
    ("it serves food.", (3, 0, 0)),
    ("the mill serves korean food in the harbour near avalon.", (0, 3, 1)),
])
def test_slot_errors_counts(text, counts):
    e = slot_errors([MR], [text])
    assert (e.missing, e.wrong, e.added) == counts
    assert e.slots == 3
    assert e.rate == pytest.approx(sum(counts) / 3)


def test_slot_errors_sum_over_a_corpus():
    mrs = [MR, {"name": "zizzi", "family": "no"}]
    texts = ["the eagle serves thai food.", "zizzi is not family friendly and open late."]
    e = slot_errors(mrs, texts)
    assert (e.slots, e.missing, e.wrong, e.added) == (5, 1, 0, 1)
    assert slot_error_rate(mrs, texts) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match=r"mrs \(2\) and texts \(1\)"):
        slot_errors(mrs, texts[:1])


# ============================================================================ perplexity, agreement
def test_perplexity_of_a_uniform_model_is_the_vocab_size():
    m = s2s(1)
    with torch.no_grad():
        m.out.weight.zero_()
        m.out.bias.zero_()
    assert perplexity(m, PAIRS) == pytest.approx(V, rel=1e-5)
    lm = tlm(1)
    with torch.no_grad():  # the final LayerNorm outputs 0: all logits are 0
        lm.ln.weight.zero_()
        lm.ln.bias.zero_()
    assert perplexity(lm, WINDOWS) == pytest.approx(V, rel=1e-5)
    # any trained-away-from-uniform model differs
    assert perplexity(s2s(2), PAIRS) != pytest.approx(V, rel=1e-3)


def test_perplexity_counts_tokens_not_examples():
    """Token-weighted: the perplexity of two examples is not the mean of their perplexities."""
    m = s2s(3)
    whole = math.log(perplexity(m, PAIRS))
    parts = [(math.log(perplexity(m, [p])), len(p[1])) for p in PAIRS]
    assert whole == pytest.approx(sum(loss * n for loss, n in parts) / sum(n for _, n in parts), rel=1e-5)
    assert perplexity(m, PAIRS, batch_size=1) == pytest.approx(perplexity(m, PAIRS), rel=1e-5)
    with pytest.raises(ValueError, match="empty"):
        perplexity(m, [])


def test_agreement_with_itself_and_with_another_model():
    m = s2s(4)
    m.train()
    a = agreement(m, m, PAIRS)
    assert a["top1"] == 1.0 and abs(a["kl"]) < 1e-6
    assert m.training  # modes are restored
    b = agreement(s2s(5), m, PAIRS)
    assert b["top1"] < 1.0 and b["kl"] > 1e-4
    c = agreement(tlm(6), tlm(6), WINDOWS, collate=collate_lm)
    assert c["top1"] == 1.0 and abs(c["kl"]) < 1e-6


def test_decoding_speed_is_positive():
    assert decoding_speed(s2s(0), [[4, 5, 6]], new_tokens=4) > 0
    with pytest.raises(ValueError, match="empty"):
        decoding_speed(s2s(0), [])


# ============================================================================ checkpoints: round trips
def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _bitwise(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
def test_save_load_model_round_trip(tmp_path, kind):
    if kind == "seq2seq":
        m, tok = s2s(7), WordTokenizer.from_texts(["the eagle is a pub ."])
    else:
        m, tok = tlm(7), CharTokenizer.from_texts(["héllo\nwörld"])
    m.train()
    path = tmp_path / "model.safetensors"
    save_model(m, path, tok, extra={"note": "hi", "n": 3})
    back, tok2, meta = load_model(path)
    assert type(back) is type(m) and back.config == m.config
    _bitwise(_state(back), _state(m))
    assert tok2 == tok and type(tok2) is type(tok)
    assert meta["extra"] == {"note": "hi", "n": 3}
    assert not back.training
    # and without a tokenizer
    save_model(m, path)
    assert load_model(path)[1] is None
    # load_weights into a model of the same config
    fresh = s2s(8) if kind == "seq2seq" else tlm(8)
    load_weights(fresh, path)
    _bitwise(_state(fresh), _state(m))


def test_training_checkpoint_loads_as_model(tmp_path):
    m = s2s(9)
    train(m, PAIRS, config=TrainConfig(steps=2, batch_size=2, checkpoint_dir=str(tmp_path), checkpoint_every=1,
                                       progress=False, device="cpu"))
    back, tok, meta = load_model(tmp_path / "step-00000002.safetensors")
    assert tok is None and meta["kind"] == "train_state"
    _bitwise(_state(back), _state(m))


def test_load_weights_into_another_config_names_both(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(s2s(0, hidden=16), path)
    with pytest.raises(CheckpointError) as info:
        load_weights(s2s(0, hidden=24), path)
    msg = str(info.value)
    assert "different model config" in msg and str(path) in msg
    assert "'hidden_dim': 16" in msg and "'hidden_dim': 24" in msg
    with pytest.raises(CheckpointError, match="TransformerConfig"):
        load_weights(tlm(0), path)


def test_save_model_needs_a_distilkit_model(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


# ============================================================================ checkpoints: refusing files
class _Payload:
    """Unpickling this creates the file ``marker`` -- what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_files(tmp_path, marker):
    good = tmp_path / "good.safetensors"
    save_model(s2s(0), good, WordTokenizer.from_texts(["a b c"]))
    blob = good.read_bytes()
    files = {
        "truncated": blob[: len(blob) // 2],
        "header-only": blob[:8],
        "empty": b"",
        "random": bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()),
        "pickle": pickle.dumps({"model.weight": _Payload(marker)}),
        "plain-safetensors": st_save({"w": torch.zeros(2)}),
        "foreign-format": st_save({"w": torch.zeros(2)}, metadata={"format": "pt"}),
    }
    torch_path = tmp_path / "torch-save.bin"
    torch.save({"model.weight": _Payload(marker)}, torch_path)
    files["torch.save"] = torch_path.read_bytes()
    paths = {}
    for name, data in files.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        paths[name] = p
    return paths


def test_the_pickle_payload_is_live(tmp_path):
    """Sanity check of the test itself: unpickling the payload does create the marker file."""
    marker = tmp_path / "pwned-by-sanity-check"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("name", ["truncated", "header-only", "empty", "random", "pickle", "plain-safetensors",
                                  "foreign-format", "torch.save"])
def test_bad_checkpoint_files_are_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    path = _bad_files(tmp_path, marker)[name]
    for load in (read_checkpoint, load_model, lambda p: load_weights(s2s(0), p)):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert str(path) in str(info.value)
    assert not marker.exists()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path)  # a directory


def test_malformed_distilkit_metadata_is_refused(tmp_path):
    path = tmp_path / "odd.safetensors"
    path.write_bytes(st_save({"model.w": torch.zeros(2)}, metadata={"format": "distilkit-v1", "meta": "{not json"}))
    with pytest.raises(CheckpointError, match="odd.safetensors"):
        load_model(path)
    path.write_bytes(st_save({"model.w": torch.zeros(2)}, metadata={"format": "distilkit-v1"}))
    with pytest.raises(CheckpointError, match="odd.safetensors"):
        load_model(path)


def test_resume_skips_a_pickle_disguised_as_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "step-00000005.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    m = s2s(0)
    with pytest.warns(UserWarning, match="step-00000005"):
        hist = train(m, PAIRS, config=TrainConfig(steps=2, batch_size=2, checkpoint_dir=str(folder),
                                                  progress=False, device="cpu"))
    assert hist.step == [1, 2]  # started from scratch
    assert not marker.exists()


# ============================================================================ atomic writes
def test_atomic_write_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["f.bin"]
    write_checkpoint(tmp_path / "sub" / "c.safetensors", {"x": torch.arange(3)}, {"k": 1})
    assert sorted(os.listdir(path.parent)) == ["c.safetensors", "f.bin"]
    tensors, meta = read_checkpoint(tmp_path / "sub" / "c.safetensors")
    assert meta == {"k": 1} and torch.equal(tensors["x"], torch.arange(3))


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


# ============================================================================ tied weights, configs
def test_shared_tensors_are_stored_once_and_restored_under_every_name(tmp_path):
    w = torch.arange(12.0).reshape(3, 4)
    tensors = {"embed": w, "head": w, "first_row": w[0], "other": torch.ones(2)}
    write_checkpoint(tmp_path / "c.safetensors", tensors, {"kind": "test"})
    back, meta = read_checkpoint(tmp_path / "c.safetensors")
    assert meta == {"kind": "test"}
    assert back.keys() == tensors.keys()
    assert back["head"] is back["embed"]  # one tensor under two names, as it was saved
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
    # the file holds the shared tensor once (a view that only overlaps it is its own copy)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c.safetensors"), "pt") as fh:
        assert sorted(fh.keys()) == ["embed", "first_row", "other"]


class _TiedLM(torch.nn.Module):
    """Input and output embeddings tied the usual way (one Parameter under two names), and a
    config that is a dataclass holding a tuple (JSON gives a list back)."""

    def __init__(self, seed=0):
        super().__init__()
        from dataclasses import dataclass

        @dataclass
        class TiedConfig:
            vocab_size: int = 10
            widths: tuple = (8, 8)

        torch.manual_seed(seed)
        self.config = TiedConfig()
        self.embed = torch.nn.Embedding(10, 8)
        self.head = torch.nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight


def test_tied_model_weights_round_trip_and_stay_tied(tmp_path):
    a, b = _TiedLM(0), _TiedLM(1)
    save_model(a, tmp_path / "tied.safetensors")
    load_weights(b, tmp_path / "tied.safetensors")  # the tuple config compares equal after JSON
    assert b.head.weight is b.embed.weight
    assert torch.equal(b.embed.weight, a.embed.weight)
