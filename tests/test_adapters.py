"""The adapter seam with distilkit's own models, and the vocabulary checks.

Hugging Face models are tested in tests/test_hf.py (they need the ``hf`` extra).
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import distilkit as dk
from distilkit.adapters import (
    CollateAdapter,
    DistilkitLMAdapter,
    DistilkitSeq2SeqAdapter,
    ModelAdapter,
    adapt,
    token_ids,
)
from distilkit.data import IGNORE_INDEX, LMBatch, Seq2SeqBatch
from distilkit.vocab import VocabAlignment, check_vocab, tokenizer_difference

V = 40


def tiny_lm(seed=0, vocab=V):
    torch.manual_seed(seed)
    return dk.TransformerLM(dk.TransformerConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2,
                                                 max_len=32))


def tiny_s2s(seed=0, vocab=V):
    torch.manual_seed(seed)
    return dk.Seq2SeqLSTM(dk.Seq2SeqConfig(vocab_size=vocab, embed_dim=8, hidden_dim=16))


LM_EXAMPLES = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15], [3, 4, 5, 6, 7, 8, 9, 10, 11]]
S2S_EXAMPLES = [([5, 6, 7], [8, 9, 10, 2]), ([11], [12, 2]), ([13, 14, 15, 16, 17], [18, 19, 2])]


# ---------------------------------------------------------------------------- dispatch
def test_adapt_picks_the_adapter_and_is_idempotent():
    lm, s2s = tiny_lm(), tiny_s2s()
    a, b = adapt(lm), adapt(s2s)
    assert isinstance(a, DistilkitLMAdapter) and a.kind == "lm" and a.vocab_size == V
    assert isinstance(b, DistilkitSeq2SeqAdapter) and b.kind == "seq2seq" and b.bos_id == 1
    assert adapt(a) is a and adapt(b) is b
    assert a.model is lm and a.max_len == 32 and b.max_len is None


def test_adapt_refuses_unknown_modules_with_a_clear_error():
    with pytest.raises(TypeError, match="cannot use a Linear directly.*collate="):
        adapt(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module or a ModelAdapter, got str"):
        adapt("gpt2")


def test_custom_module_with_collate_trains_but_cannot_decode():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_lm()

        def forward(self, batch):
            return self.inner(batch)

    model = Wrapped()
    a = adapt(model, collate=dk.collate_lm)
    assert isinstance(a, CollateAdapter)
    batch = a.collate(LM_EXAMPLES)
    assert a.logits(batch).shape == (4, 8, V)
    with pytest.raises(TypeError, match="decoding needs a distilkit or Hugging Face model"):
        a.start([[1, 2]])


# ---------------------------------------------------------------------------- examples
def test_token_ids_accepts_lists_tuples_and_1d_tensors():
    assert token_ids([1, 2, 3], "x") == [1, 2, 3]
    assert token_ids((4, 5), "x") == [4, 5]
    assert token_ids(torch.tensor([6, 7]), "x") == [6, 7]
    assert token_ids([torch.tensor(8), 9], "x") == [8, 9]
    with pytest.raises(TypeError, match=r"examples\[2\] must be a 1-D integer tensor.*2-D"):
        token_ids(torch.zeros(2, 2, dtype=torch.long), "examples[2]")
    with pytest.raises(TypeError, match=r"examples\[0\] must be a 1-D integer tensor.*float"):
        token_ids(torch.tensor([1.0, 2.0]), "examples[0]")
    with pytest.raises(TypeError, match=r"examples\[1\] must hold int token ids, found 1.5"):
        token_ids([1, 1.5], "examples[1]")
    with pytest.raises(TypeError, match="got str"):
        token_ids("hello", "examples[0]")


def test_lm_collate_pads_shifts_masks_and_takes_tensors():
    a = adapt(tiny_lm())
    batch = a.collate([torch.tensor([5, 6, 7, 8]), [9, 10]])
    assert isinstance(batch, LMBatch)
    assert batch.input_ids.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch.labels.tolist() == [[6, 7, 8], [10, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert len(batch) == 2 and batch.to("cpu").attention_mask.tolist() == batch.attention_mask.tolist()


def test_seq2seq_collate_builds_decoder_input_and_source_mask():
    a = adapt(tiny_s2s())
    batch = a.collate([([5, 6, 7], torch.tensor([8, 2])), ([9], [10, 11, 2])])
    assert isinstance(batch, Seq2SeqBatch)
    assert batch.src.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.decoder_input.tolist() == [[1, 8, 0], [1, 10, 11]]
    assert batch.labels.tolist() == [[8, 2, IGNORE_INDEX], [10, 11, 2]]


def test_collate_errors_name_the_example():
    lm, s2s = adapt(tiny_lm()), adapt(tiny_s2s())
    with pytest.raises(ValueError, match=r"examples\[1\] has 1 token\(s\).*at least 2"):
        lm.collate([[1, 2, 3], [4]])
    with pytest.raises(TypeError, match=r"examples\[0\] must be a \(source_ids, target_ids\) pair"):
        s2s.collate([[1, 2, 3]])
    with pytest.raises(ValueError, match="non-empty list"):
        lm.collate([])


def test_old_batch_classes_still_build_without_a_mask():
    b = LMBatch(torch.tensor([[1, 2]]), torch.tensor([[2, 3]]))
    assert b.attention_mask is None and b.to("cpu").attention_mask is None
    s = Seq2SeqBatch(torch.tensor([[4, 5, 0]]), torch.tensor([2]), torch.tensor([[1, 6]]), torch.tensor([[6, 2]]))
    assert s.attention_mask.tolist() == [[1, 1, 0]]


def test_teacher_payload_passes_through_collate():
    a = adapt(tiny_lm())
    rows = [torch.randn(3, V), torch.randn(1, V)]
    batch = a.collate([([1, 2, 3, 4], rows[0]), ([5, 6], rows[1])])
    assert batch.teacher_logits.shape == (2, 3, V)
    assert torch.equal(batch.teacher_logits[1, :1], rows[1])


# ---------------------------------------------------------------------------- logits and decoding
@pytest.mark.parametrize("make,examples", [(tiny_lm, LM_EXAMPLES), (tiny_s2s, S2S_EXAMPLES)])
def test_padded_batch_equals_examples_one_by_one(make, examples):
    """Same summed loss and gradients, padded together or one at a time (token-count weighted)."""
    model = make()
    a = adapt(model)
    teacher = adapt(make(seed=1))

    def loss_sum(exs):
        batch = a.collate(exs)
        with torch.no_grad():
            t = teacher.logits(batch)
        return dk.distillation_loss(a.logits(batch), t, batch.labels, temperature=2.0, alpha=0.3,
                                    reduction="sum")

    n = int((a.collate(examples).labels != IGNORE_INDEX).sum())
    model.zero_grad()
    together = loss_sum(examples) / n
    together.backward()
    g_together = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    alone = sum(loss_sum([ex]) / n for ex in examples)
    alone.backward()
    assert torch.allclose(together, alone, atol=1e-6, rtol=1e-6)
    for g1, p in zip(g_together, model.parameters()):
        assert torch.allclose(g1, p.grad, atol=1e-6, rtol=1e-5)


def test_decoding_goes_through_the_adapter():
    model = tiny_lm().eval()
    a = adapt(model)
    logits, state = a.start([[1, 2, 3]])
    full = model(torch.tensor([[1, 2, 3, 4]]))
    assert torch.allclose(logits, full[:, 2], atol=1e-5)
    logits, state = a.step(state, torch.tensor([4]))
    assert torch.allclose(logits, full[:, 3], atol=1e-5)
    state = a.reorder_state(state, torch.tensor([0, 0]))
    assert a.step(state, torch.tensor([5, 6]))[0].shape == (2, V)


def test_config_dict_survives_json():
    import json

    for m in (tiny_lm(), tiny_s2s()):
        d = adapt(m).config_dict()
        assert json.loads(json.dumps(d)) == d


def test_model_adapter_base_is_abstract():
    class Half(ModelAdapter):
        kind = "lm"

    h = Half(tiny_lm())
    with pytest.raises(NotImplementedError):
        h.collate([[1, 2]])
    with pytest.raises(NotImplementedError, match="does not expose its final hidden states"):
        h.hidden_and_head(None)


# ---------------------------------------------------------------------------- vocabulary checks
def test_equal_sizes_need_no_alignment():
    assert check_vocab(40, 40) is None


def test_different_sizes_are_refused_without_an_alignment():
    with pytest.raises(ValueError, match=r"student vocab size \(151936\) differs from teacher vocab size "
                                         r"\(152064\).*vocab_alignment='slice'"):
        check_vocab(151936, 152064)


def test_unknown_alignment_is_refused():
    with pytest.raises(ValueError, match="vocab_alignment must be None, 'slice' or 'pad'; got 'crop'"):
        check_vocab(10, 12, "crop")


def _word_tok(words):
    return dk.WordTokenizer.from_texts([" ".join(words)])


def test_different_tokenizers_are_refused_even_at_equal_sizes():
    a, b = _word_tok(["red", "green"]), _word_tok(["red", "blue"])
    assert len(a) == len(b)
    with pytest.raises(ValueError, match="different tokenizers.*'green'"):
        check_vocab(len(a), len(b), student_tokenizer=a, teacher_tokenizer=b)
    char = dk.CharTokenizer.from_texts(["ab"])
    assert tokenizer_difference(a, char) == "WordTokenizer vs CharTokenizer"
    assert tokenizer_difference(a, _word_tok(["green", "red"])) is None


def test_slice_alignment_with_a_padded_embedding():
    tok = _word_tok(["red", "green", "blue"])
    n = len(tok)
    al = check_vocab(n, n + 5, "slice", student_tokenizer=tok, teacher_tokenizer=tok)
    assert al == VocabAlignment("slice", n, n + 5) and al.width == n
    s, t = torch.randn(2, 3, n), torch.randn(2, 3, n + 5)
    s2, t2 = al.apply(s, t)
    assert torch.equal(s2, s) and torch.equal(t2, t[..., :n])
    # the student the wider one: its extra columns are cut too
    al = check_vocab(n + 5, n, "slice", student_tokenizer=tok)
    s2, t2 = al.apply(torch.randn(4, n + 5), torch.randn(4, n))
    assert s2.shape == t2.shape == (4, n)
    w, b = al.student_head(torch.randn(n + 5, 3), torch.randn(n + 5))
    assert w.shape == (n, 3) and b.shape == (n,)


def test_slice_refuses_a_tokenizer_that_does_not_fit():
    tok = _word_tok(["red", "green", "blue"])
    with pytest.raises(ValueError, match=f"tokenizer has {len(tok)} tokens but the narrower output layer"):
        check_vocab(len(tok) - 1, len(tok) + 3, "slice", teacher_tokenizer=tok)


def test_alignment_without_tokenizers_warns_that_nothing_was_checked():
    with pytest.warns(UserWarning, match=r"assuming ids \[0, 10\) mean the same tokens"):
        al = check_vocab(10, 12, "slice")
    assert al.width == 10


def test_pad_alignment_widens_the_teacher_with_minus_inf():
    with pytest.warns(UserWarning):
        al = check_vocab(12, 10, "pad")
    s, t = torch.randn(3, 12), torch.randn(3, 10)
    s2, t2 = al.apply(s, t)
    assert torch.equal(s2, s) and t2.shape == (3, 12) and torch.isneginf(t2[:, 10:]).all()
    # forward KL stays finite: the teacher puts no mass on the padded ids
    loss = dk.distillation_loss(s2, t2, alpha=1.0)
    assert torch.isfinite(loss)
    ref = F.kl_div(F.log_softmax(s, -1)[:, :10], F.log_softmax(t, -1), log_target=True, reduction="sum") / 3
    assert torch.allclose(loss, ref, atol=1e-5)


def test_pad_alignment_refusals():
    with pytest.raises(ValueError, match="the teacher is the wider.*use vocab_alignment='slice'"):
        check_vocab(10, 12, "pad")
    with pytest.raises(ValueError, match="reverse_kl is infinite"):
        check_vocab(12, 10, "pad", divergence="reverse_kl")


def test_core_never_imports_transformers():
    """The core install stays free of the ``hf`` extra: importing distilkit and adapting its
    own models does not import transformers."""
    import subprocess
    import sys

    code = ("import sys, distilkit as dk; from distilkit.adapters import adapt; "
            "adapt(dk.TransformerLM(dk.TransformerConfig(vocab_size=9, d_model=8, n_layers=1, n_heads=2)));"
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("make,examples", [(tiny_lm, LM_EXAMPLES), (tiny_s2s, S2S_EXAMPLES)])
def test_hidden_and_head_reproduce_the_logits(make, examples):
    a = adapt(make().eval())
    batch = a.collate(examples)
    hidden, weight, bias = a.hidden_and_head(batch)
    logits = hidden @ weight.T + (0 if bias is None else bias)
    assert torch.allclose(logits, a.logits(batch), atol=1e-6)
