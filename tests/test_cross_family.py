"""Distilling across model families, as a user calls it: hidden-state KD (distilkit and Hugging
Face models), ``init_from_teacher``, and teachers with another tokenizer through ``dk.distill``
with strings; the position alignment on hand-made tokenizations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import distilkit as dk
from distilkit.tokenalign import (
    ALIGNED,
    NONE,
    PAIRED,
    VocabMap,
    align_positions,
    encode_with_spans,
    token_texts,
)

TEXT = "the quick brown fox jumps over the lazy dog and the cat . " * 20


# ============================================================================ tiny models
def _hf_gpt2(kind: str, n_embd: int, n_layer: int = 1, text: str = TEXT):
    """A tiny HF GPT-2 and its fast tokenizer, built offline: "word" (WordLevel, whitespace
    split) or "bpe" (byte-level BPE, 300 tokens)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "word":
        raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
        raw.pre_tokenizer = pre_tokenizers.Whitespace()
        raw.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>",
                                                   unk_token="<unk>")
    else:
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        raw.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                            show_progress=False))
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=n_embd, n_layer=n_layer, n_head=2,
                                  bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    return transformers.GPT2LMHeadModel(cfg), tok


def _char_lm(d_model=32, n_layers=2, seed=0):
    tok = dk.CharTokenizer.from_texts([TEXT])
    torch.manual_seed(seed)
    return dk.make_model("lm-student", len(tok), d_model=d_model, n_layers=n_layers, n_heads=2, max_len=64), tok


def _cfg(steps=3, **kw):
    return dk.TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup_steps=0, progress=False, device="cpu", **kw)


def _texts(n=12, width=40):
    return [TEXT[i: i + width] for i in range(0, n * 7, 7)]


# ============================================================================ alignment
def test_merge_split_unknown_whitespace_and_none_on_hand_made_spans():
    # merge: the teacher writes "bc" in one token where the student writes "b", "c"
    assert align_positions([(0, 1), (1, 2), (2, 3)], [(0, 1), (1, 3)]) == [(PAIRED, 0), (PAIRED, 0)]
    # split: the student writes "ab" in one token; its next token "c" is one teacher token
    assert align_positions([(0, 2), (2, 3)], [(0, 1), (1, 2), (2, 3)]) == [(ALIGNED, 1)]
    # one-to-one everywhere
    assert align_positions([(0, 1), (1, 2)], [(0, 1), (1, 2)]) == [(ALIGNED, 0)]
    # an unknown student token is never aligned, even with the same span
    assert align_positions([(0, 1), (1, 2)], [(0, 1), (1, 2)], student_unknown=[False, True]) == [(PAIRED, 0)]
    # the teacher's text is shorter: nothing covers the student's last character
    assert align_positions([(0, 1), (1, 2), (2, 3)], [(0, 1), (1, 2)]) == [(ALIGNED, 0), (NONE, -1)]
    # whitespace: a word student ("a", "b") against a teacher that writes " b"
    text = "a b"
    assert align_positions([(0, 1), (2, 3)], [(0, 1), (1, 3)], text=text) == [(PAIRED, 0)]
    assert align_positions([(0, 1), (2, 3)], [(0, 1), (1, 3)], text=text, trim_whitespace=True) == [(ALIGNED, 0)]


def test_spans_of_distilkit_tokenizers():
    char = dk.CharTokenizer.from_texts(["ab c"])
    ids, spans = encode_with_spans(char, "a é")  # é is unknown to it
    assert spans == [(0, 1), (1, 2), (2, 3)] and ids[-1] == char.unk_id
    word = dk.WordTokenizer.from_texts(["hello world , again"])
    ids, spans = encode_with_spans(word, "Hello,  world")
    assert [word.itos[i] for i in ids] == ["hello", ",", "world"]
    assert spans == [(0, 5), (5, 6), (8, 13)]
    assert token_texts(word)[word.stoi["hello"]] == "hello" and token_texts(word)[word.pad_id] is None


def test_spans_of_a_transformers_fast_tokenizer_cover_the_text():
    _, tok = _hf_gpt2("bpe", 16)
    text = "the quick  fox"
    ids, spans = encode_with_spans(tok, text)
    assert tok.decode(ids) == text
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # byte-level BPE drops nothing


def test_vocab_map_exact_prefix_and_unmatched_mass():
    student = ["<pad>", "a", "b", " "]
    teacher = ["a", "ab", " b", "z", None]
    vm = VocabMap.build([None, "a", "b", " "], teacher)
    assert vm.index.tolist() == [1, 1, 3, -1, -1]
    assert (vm.exact, vm.by_prefix, vm.unmatched) == (1, 2, 2)
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0]])
    target, dropped = vm.move(p)
    assert torch.allclose(dropped, torch.tensor([0.4]))
    assert torch.allclose(target, torch.tensor([[0.0, 0.5, 0.0, 0.5]]))  # renormalised over the rest
    assert len(student) == vm.student_vocab


def test_uld_distance_is_the_l1_distance_of_sorted_zero_padded_probabilities():
    torch.manual_seed(0)
    q = torch.softmax(torch.randn(6, 5), -1).requires_grad_()
    p = torch.softmax(torch.randn(6, 11), -1)
    ref = (F.pad(q, (0, 6)).sort(-1, descending=True).values - p.sort(-1, descending=True).values).abs().sum(-1)
    got = dk.uld_distance(q, p)
    assert torch.allclose(got, ref, atol=1e-6)
    g1, = torch.autograd.grad(got.sum(), q)
    g2, = torch.autograd.grad(ref.sum(), q)
    assert torch.allclose(g1, g2)
    assert torch.allclose(dk.uld_distance(p, p), torch.zeros(6), atol=1e-6)


# ============================================================================ cross-tokenizer KD
@pytest.mark.parametrize("mode", ["uld", "align"])
def test_distill_from_an_hf_teacher_with_another_tokenizer_from_strings(mode):
    teacher, t_tok = _hf_gpt2("word", 32)
    student, s_tok = _hf_gpt2("bpe", 16)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    texts = _texts() + [("the quick brown ", "fox jumps over")]
    kd = dk.KDConfig(cross_tokenizer=mode, alpha=0.5)
    hist = dk.distill(student, teacher, texts, kd=kd, config=_cfg(), student_tokenizer=s_tok,
                      teacher_tokenizer=t_tok, valid_examples=_texts(3))
    assert all(math.isfinite(x) for x in hist.train_loss) and hist.valid_loss
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    targets = dk.CrossTokenizerTargets(teacher, kd, student_tokenizer=s_tok, teacher_tokenizer=t_tok)
    dk.train(student, texts, targets=targets, config=_cfg(steps=1))
    counts = targets.position_counts
    assert counts["paired"] > 0
    if mode == "align":
        assert counts["aligned"] > 0 and targets.vocab_map.exact > 0


def test_cross_tokenizer_loss_is_cross_entropy_at_alpha_zero_and_counts_only_the_completion():
    teacher, t_tok = _hf_gpt2("word", 32)
    student, s_tok = _char_lm()
    kd = dk.KDConfig(cross_tokenizer="align", alpha=0.0)
    targets = dk.CrossTokenizerTargets(teacher, kd, student_tokenizer=s_tok, teacher_tokenizer=t_tok)
    targets.check(dk.adapt(student))
    examples, collate = targets.prepare([("the quick ", "brown fox")], dk.adapt(student).collate, None)
    batch = collate(examples)
    s_batch, t_out = targets(batch, student)
    assert int((s_batch.labels != -100).sum()) == len("brown fox")  # the prompt's positions do not count
    logits = student(s_batch)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), s_batch.labels.reshape(-1), reduction="sum")
    assert torch.allclose(targets.loss_sum(logits, t_out, s_batch.labels), ce)


def test_different_tokenizers_are_still_refused_without_cross_tokenizer():
    teacher, t_tok = _hf_gpt2("word", 32)
    student, s_tok = _hf_gpt2("bpe", 16)
    ids = [s_tok(t)["input_ids"] for t in _texts(4)]
    with pytest.raises(ValueError, match="different tokenizers"):
        dk.distill(student, teacher, ids, config=_cfg(), student_tokenizer=s_tok, teacher_tokenizer=t_tok)
    with pytest.raises(ValueError, match="pass teacher_tokenizer="):
        dk.distill(student, teacher, _texts(4), kd=dk.KDConfig(cross_tokenizer="uld"), config=_cfg(),
                   student_tokenizer=s_tok)
    with pytest.raises(TypeError, match="a string or a \\(prompt, completion\\) pair"):
        dk.distill(student, teacher, ids, kd=dk.KDConfig(cross_tokenizer="uld"), config=_cfg(),
                   student_tokenizer=s_tok, teacher_tokenizer=t_tok)


def test_bits_per_character_of_a_char_model_is_its_loss_in_bits():
    model, tok = _char_lm()
    texts = _texts(5)
    loss = dk.evaluate_loss(model, [tok.encode(t) for t in texts])
    assert dk.bits_per_character(model, tok, texts) == pytest.approx(loss / math.log(2), rel=1e-5)


# ============================================================================ hidden states
def test_hidden_state_kd_with_transformer_lms_trains_the_projection_not_exported():
    teacher, _ = _char_lm(d_model=48, n_layers=4, seed=1)
    student, tok = _char_lm(d_model=32, n_layers=2)
    examples = [tok.encode(t) for t in _texts()]
    kd = dk.KDConfig(hidden_weight=1.0, alpha=0.5)
    targets = dk.HiddenStateTargets(teacher, kd)
    hist = dk.train(student, examples, targets=targets, config=_cfg())
    assert all(math.isfinite(x) for x in hist.train_loss)
    assert targets.pairs == [(0, 1), (1, 3)]
    first = targets.learned[0].weight.detach().clone()
    dk.train(student, examples, targets=targets, config=_cfg(steps=2))
    assert not torch.equal(first, targets.learned[0].weight)  # the projection is optimised
    assert set(student.state_dict()) == set(_char_lm(d_model=32, n_layers=2)[0].state_dict())  # no projection
    # the hidden term alone: cosine loss is 0 between a student layer and itself
    batch = dk.adapt(student).collate(examples[:2])
    _, hidden = dk.adapt(student).logits_and_hidden_states(batch)
    assert float(dk.hidden_state_loss(hidden[0], hidden[0], batch.labels, "cosine").detach()) == pytest.approx(0.0, abs=1e-4)


def test_hidden_state_kd_with_an_hf_causal_pair_through_distill():
    teacher, tok = _hf_gpt2("word", 32, n_layer=2)
    student, _ = _hf_gpt2("word", 16, n_layer=1)
    ids = [tok(t)["input_ids"] for t in _texts()]
    kd = dk.KDConfig(hidden_weight=0.5, hidden_loss="cosine", layer_map=[(0, 1)])
    hist = dk.distill(student, teacher, ids, kd=kd, config=_cfg())
    assert all(math.isfinite(x) for x in hist.train_loss)
    adapter = dk.adapt(teacher)
    assert (adapter.num_layers, adapter.hidden_size) == (2, 32)
    batch = adapter.collate(ids[:2])
    logits, hidden = adapter.logits_and_hidden_states(batch)
    assert len(hidden) == 2 and hidden[0].shape == (*batch.labels.shape, 32)
    assert torch.allclose(logits, adapter.logits(batch), atol=1e-5)


def test_hidden_state_kd_errors():
    teacher, _ = _char_lm(d_model=48, n_layers=4, seed=1)
    student, tok = _char_lm(d_model=32, n_layers=2)
    examples = [tok.encode(t) for t in _texts(4)]
    with pytest.raises(ValueError, match="the teacher has 4 layers"):
        dk.distill(student, teacher, examples, kd=dk.KDConfig(hidden_weight=1, layer_map=[(0, 7)]), config=_cfg())
    with pytest.raises(ValueError, match="the student has 2 layers"):
        dk.distill(student, teacher, examples, kd=dk.KDConfig(hidden_weight=1, layer_map=[(2, 0)]), config=_cfg())
    with pytest.raises(ValueError, match="hidden_weight must be a finite number >= 0"):
        dk.KDConfig(hidden_weight=-1)
    with pytest.raises(ValueError, match="hidden_loss must be one of mse, cosine"):
        dk.KDConfig(hidden_weight=1, hidden_loss="l1")
    with pytest.raises(ValueError, match="layer_map must be a list"):
        dk.KDConfig(hidden_weight=1, layer_map=[(0,)])
    with pytest.raises(ValueError, match="needs HiddenStateTargets"):
        dk.TeacherLogits(teacher, dk.KDConfig(hidden_weight=1))
    with pytest.raises(ValueError, match="cross_tokenizer must be None, 'uld' or 'align'"):
        dk.KDConfig(cross_tokenizer="bytes")


# ============================================================================ init_from_teacher
def test_init_from_teacher_copies_the_named_layers_and_the_rest():
    teacher, _ = _char_lm(d_model=32, n_layers=4, seed=1)
    student, _ = _char_lm(d_model=32, n_layers=2)
    dk.init_from_teacher(student, teacher, layers=[1, 3])
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["blocks.0.qkv.weight"], t["blocks.1.qkv.weight"])
    assert torch.equal(s["blocks.1.mlp.2.bias"], t["blocks.3.mlp.2.bias"])
    assert torch.equal(s["tok.weight"], t["tok.weight"]) and torch.equal(s["ln.weight"], t["ln.weight"])


def test_init_from_teacher_errors_name_the_layer_and_both_shapes():
    teacher, _ = _char_lm(d_model=32, n_layers=4, seed=1)
    narrow, _ = _char_lm(d_model=16, n_layers=2)
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(ValueError, match=r"teacher 'tok.weight' \(\d+, 32\) into student 'tok.weight' \(\d+, 16\)"):
        dk.init_from_teacher(narrow, teacher, layers=[1, 3])
    assert all(torch.equal(before[k], v) for k, v in narrow.state_dict().items())  # nothing copied
    student, _ = _char_lm(d_model=32, n_layers=2)
    with pytest.raises(ValueError, match="the student has 2 layers, got 3"):
        dk.init_from_teacher(student, teacher, layers=[0, 1, 2])
    with pytest.raises(ValueError, match=r"layers\[1\] = 4: the teacher has layers 0 .. 3"):
        dk.init_from_teacher(student, teacher, layers=[0, 4])


def test_init_from_teacher_with_hf_gpt2s():
    teacher, _ = _hf_gpt2("word", 32, n_layer=2)
    student, _ = _hf_gpt2("word", 32, n_layer=1)
    dk.init_from_teacher(student, teacher, layers=[1])
    assert torch.equal(student.transformer.h[0].attn.c_attn.weight, teacher.transformer.h[1].attn.c_attn.weight)
    narrow, _ = _hf_gpt2("word", 16, n_layer=1)
    with pytest.raises(ValueError, match=r"student layer 0 <- teacher layer 1|\(\d+, 32\)"):
        dk.init_from_teacher(narrow, teacher, layers=[1])
