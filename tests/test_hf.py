"""Hugging Face models through the adapter seam (needs the ``hf`` extra: transformers).

All models are tiny configurations built here; nothing is downloaded.
"""

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

import distilkit as dk  # noqa: E402
from distilkit.adapters import adapt  # noqa: E402
from distilkit.data import IGNORE_INDEX  # noqa: E402
from distilkit.hf import HFCausalAdapter, HFSeq2SeqAdapter  # noqa: E402

V = 100
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def gpt2(seed=0, vocab=V, n_embd=32, **kw):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=n_embd, n_head=2, vocab_size=vocab, n_positions=64,
                                  bos_token_id=1, eos_token_id=2, **{**NO_DROPOUT, **kw})
    return transformers.GPT2LMHeadModel(cfg)


def t5(seed=0, vocab=V, d_model=32):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=vocab, d_model=d_model, d_kv=16, d_ff=64, num_layers=1,
                                num_heads=2, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                                eos_token_id=1)
    return transformers.T5ForConditionalGeneration(cfg)


def bart(seed=0, vocab=V):
    torch.manual_seed(seed)
    cfg = transformers.BartConfig(vocab_size=vocab, d_model=32, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
                                  attention_dropout=0.0, activation_dropout=0.0)
    return transformers.BartForConditionalGeneration(cfg)


LM_EXAMPLES = [[5, 6, 7, 8, 9, 10, 11], torch.tensor([12, 13, 14]), [15, 16],
               [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]]


def s2s_examples(eos):
    return [([5, 6, 7], [8, 9, 10, eos]), ([11], torch.tensor([12, eos])),
            (torch.tensor([13, 14, 15, 16, 17, 18]), [19, 20, 21, 22, 23, eos])]


SEQ2SEQ = [pytest.param(t5, id="t5"), pytest.param(bart, id="bart")]


# ---------------------------------------------------------------------------- dispatch
def test_adapt_dispatches_hf_models():
    g, t, b = adapt(gpt2()), adapt(t5()), adapt(bart())
    assert isinstance(g, HFCausalAdapter) and g.kind == "lm" and g.vocab_size == V and g.max_len == 64
    assert g.pad_id == 2 and g.eos_id == 2  # GPT-2 names no pad token: its <eos> pads (masked anyway)
    assert isinstance(t, HFSeq2SeqAdapter) and t.kind == "seq2seq" and (t.pad_id, t.bos_id, t.eos_id) == (0, 0, 1)
    assert isinstance(b, HFSeq2SeqAdapter) and (b.pad_id, b.bos_id, b.eos_id) == (1, 2, 2)
    assert adapt(g) is g


# ---------------------------------------------------------------------------- causal shift
def test_causal_shift_is_done_once():
    """The adapter's token-mean cross-entropy equals the model's own loss (which shifts
    ``labels=input_ids`` internally): the collate shifted exactly once."""
    model = gpt2().eval()
    a = adapt(model)
    seq = [5, 6, 7, 8, 9, 10, 11]
    batch = a.collate([seq])
    logits = a.logits(batch)
    ours = torch.nn.functional.cross_entropy(logits[0], batch.labels[0])
    ids = torch.tensor([seq])
    theirs = model(input_ids=ids, labels=ids).loss
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert batch.labels[0].tolist() == seq[1:] and batch.input_ids[0].tolist() == seq[:-1]


def test_seq2seq_decoder_input_is_the_models_own_shift():
    model = t5().eval()
    a = adapt(model)
    src, tgt = [5, 6, 7], [8, 9, 1]
    batch = a.collate([(src, tgt)])
    ours = torch.nn.functional.cross_entropy(a.logits(batch)[0], batch.labels[0])
    theirs = model(input_ids=torch.tensor([src]), labels=torch.tensor([tgt])).loss
    assert torch.allclose(ours, theirs, atol=1e-6)


# ---------------------------------------------------------------------------- padding equivalence
def _equivalence(make, examples, teacher_make):
    """Max |difference| of loss and gradients between one padded batch and the examples one by
    one (each summed loss divided by the batch's token count)."""
    model = make(seed=0)
    a = adapt(model)
    teacher = adapt(teacher_make(seed=1).eval())

    def loss_sum(exs):
        batch = a.collate(exs)
        with torch.no_grad():
            t = teacher.logits(batch)
        return dk.distillation_loss(a.logits(batch), t, batch.labels, temperature=2.0, alpha=0.4,
                                    reduction="sum")

    n = int((a.collate(examples).labels != IGNORE_INDEX).sum())
    model.zero_grad()
    together = loss_sum(examples) / n
    together.backward()
    g1 = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    alone = sum(loss_sum([ex]) / n for ex in examples)
    alone.backward()
    g2 = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert g1.keys() == g2.keys() and len(g1) > 0
    diff = max(float((g1[k] - g2[k]).abs().max()) for k in g1)
    return float((together - alone).detach().abs()), diff


def test_padding_equivalence_causal():
    dl, dg = _equivalence(gpt2, LM_EXAMPLES, gpt2)
    assert dl < 1e-5 and dg < 1e-5, (dl, dg)


@pytest.mark.parametrize("make", SEQ2SEQ)
def test_padding_equivalence_seq2seq(make):
    eos = adapt(make()).eos_id
    dl, dg = _equivalence(make, s2s_examples(eos), make)
    assert dl < 1e-5 and dg < 1e-5, (dl, dg)


@pytest.mark.parametrize("make", SEQ2SEQ)
def test_source_padding_is_masked(make):
    """Without the attention mask the padded source would change the encoder's output: the
    padded row's logits equal the row alone only because the mask is built and passed."""
    model = make().eval()
    a = adapt(model)
    eos = a.eos_id
    short, long = ([11, 12], [13, eos]), ([5, 6, 7, 8, 9], [10, eos])
    batch = a.collate([short, long])
    alone = a.logits(a.collate([short]))
    assert torch.allclose(a.logits(batch)[0], alone[0], atol=1e-5)
    unmasked = model(input_ids=batch.src, decoder_input_ids=batch.decoder_input).logits
    assert not torch.allclose(unmasked[0], alone[0], atol=1e-3)


# ---------------------------------------------------------------------------- hidden states + head
@pytest.mark.parametrize("make", [pytest.param(gpt2, id="gpt2"), *SEQ2SEQ])
def test_hidden_and_head_reproduce_the_logits(make):
    model = make().eval()
    a = adapt(model)
    examples = LM_EXAMPLES if a.kind == "lm" else s2s_examples(a.eos_id)
    batch = a.collate(examples)
    hidden, weight, bias = a.hidden_and_head(batch)
    logits = hidden @ weight.T + (0 if bias is None else bias)
    assert weight is model.get_output_embeddings().weight
    assert torch.allclose(logits, a.logits(batch), atol=1e-5)


def test_hidden_and_head_refuses_a_model_that_rescales_its_logits():
    model = gpt2().eval()

    class Scaled(type(model)):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 0.5
            return out

    model.__class__ = Scaled
    a = adapt(model)
    with pytest.raises(NotImplementedError, match="transforms its final hidden states"):
        a.hidden_and_head(a.collate(LM_EXAMPLES))


# ---------------------------------------------------------------------------- decoding state
def test_causal_prompts_of_different_lengths_decode_like_alone():
    model = gpt2().eval()
    a = adapt(model)
    prompts = [[5, 6, 7, 8], [9, 10]]
    with torch.no_grad():
        logits, state = a.start(prompts)
        logits2, _ = a.step(state, torch.tensor([11, 12]))
        for i, p in enumerate(prompts):
            full = model(input_ids=torch.tensor([p + [[11, 12][i]]])).logits[0]
            assert torch.allclose(logits[i], full[-2], atol=1e-5)
            assert torch.allclose(logits2[i], full[-1], atol=1e-5)


@pytest.mark.parametrize("make", SEQ2SEQ)
def test_seq2seq_steps_match_teacher_forcing(make):
    model = make().eval()
    a = adapt(model)
    pairs = [([5, 6, 7], [8, 9, a.eos_id]), ([11], [12, 13, a.eos_id])]
    with torch.no_grad():
        forced = a.logits(a.collate(pairs))
        logits, state = a.start([p[0] for p in pairs])
        assert torch.allclose(logits, forced[:, 0], atol=1e-5)
        state = a.reorder_state(state, torch.tensor([1, 0]))  # swap the rows: the state follows
        logits, state = a.step(state, torch.tensor([12, 8]))
        assert torch.allclose(logits, forced[[1, 0], 1], atol=1e-5)


def test_decoding_input_errors():
    a = adapt(gpt2())
    with pytest.raises(ValueError, match=r"inputs\[1\] is empty"):
        a.start([[1, 2], []])
    with pytest.raises(ValueError, match=r"inputs\[0\] holds token id 100, outside"):
        a.start([[1, 100]])


def test_config_dict_is_json_stable():
    import json

    for m in (gpt2(), t5()):
        d = adapt(m).config_dict()
        assert json.loads(json.dumps(d)) == d
        assert "transformers_version" not in d["hf_config"]
