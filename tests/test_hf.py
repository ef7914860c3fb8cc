"""Hugging Face models through the adapter seam (needs the ``hf`` extra: transformers).

All models are tiny configurations built here; nothing is downloaded.
"""

import pytest

transformers = pytest.importorskip("transformers")

import json  # noqa: E402

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


def test_collate_refuses_ids_outside_the_vocabulary():
    """HF models do not check their ids (an embedding lookup fails deep inside); the collate does,
    on the host batch."""
    with pytest.raises(ValueError, match=r"examples hold token id 100, outside the model's vocabulary \[0, 100\)"):
        adapt(gpt2()).collate([[1, 2, 100]])
    with pytest.raises(ValueError, match="target ids hold token id 120"):
        adapt(t5()).collate([([1, 2], [120, 1])])
    with pytest.raises(ValueError, match="source ids hold token id -1"):
        adapt(bart()).collate([([1, -1], [5, 2])])


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


# ============================================================================ through the public API
def cfg(**kw):
    return dk.TrainConfig(**{**dict(steps=1, batch_size=4, lr=1e-3, warmup_steps=0, clip_norm=None,
                                    device="cpu", progress=False), **kw})


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _max_diff(g1, g2):
    assert g1.keys() == g2.keys() and g1
    return max(float((g1[k] - g2[k]).abs().max()) for k in g1)


def test_train_takes_hf_causal_models_and_raw_examples():
    model = gpt2()
    before = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    hist = dk.train(model, LM_EXAMPLES, config=cfg(steps=3, batch_size=2))
    assert len(hist.train_loss) == 3 and all(torch.isfinite(torch.tensor(hist.train_loss)))
    assert not torch.equal(before, model.transformer.h[0].mlp.c_fc.weight)


@pytest.mark.parametrize("make", SEQ2SEQ)
def test_distill_takes_hf_seq2seq_models(make):
    student, teacher = make(seed=0), make(seed=1)
    eos = adapt(student).eos_id
    hist = dk.distill(student, teacher, s2s_examples(eos), kd=dk.KDConfig(temperature=2.0),
                      config=cfg(steps=2, batch_size=2), valid_examples=s2s_examples(eos))
    assert len(hist.train_loss) == 2 and len(hist.valid_loss) == 1


CASES = [
    pytest.param(lambda s: gpt2(seed=s), lambda e: LM_EXAMPLES, id="hf-causal"),
    pytest.param(lambda s: t5(seed=s), lambda e: s2s_examples(e), id="hf-t5"),
    pytest.param(lambda s: bart(seed=s), lambda e: s2s_examples(e), id="hf-bart"),
    pytest.param(lambda s: (torch.manual_seed(s), dk.TransformerLM(dk.TransformerConfig(
        vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_len=32)))[1], lambda e: LM_EXAMPLES,
        id="distilkit-lm"),
    pytest.param(lambda s: (torch.manual_seed(s), dk.Seq2SeqLSTM(dk.Seq2SeqConfig(
        vocab_size=V, embed_dim=8, hidden_dim=16)))[1], lambda e: s2s_examples(e), id="distilkit-s2s"),
]


@pytest.mark.parametrize("make,examples", CASES)
def test_loop_padded_batch_equals_examples_one_by_one(make, examples):
    """dk.distill with one padded batch of 4 vs 4 micro-batches of 1 example: the same loss and
    the same gradient (the loop leaves the step's gradient in p.grad; clipping is off)."""
    data = examples(adapt(make(0)).eos_id)
    runs = []
    for batch_size, accum in ((len(data), 1), (1, len(data))):
        student, teacher = make(0), make(1)
        hist = dk.distill(student, teacher, data, kd=dk.KDConfig(temperature=2.0, alpha=0.3),
                          config=cfg(batch_size=batch_size, grad_accum=accum))
        runs.append((hist.train_loss[0], _grads(student)))
    assert abs(runs[0][0] - runs[1][0]) < 1e-5
    assert _max_diff(runs[0][1], runs[1][1]) < 1e-5


# ---------------------------------------------------------------------------- decoding and metrics
def test_generate_methods_on_hf_causal():
    model = gpt2().eval()
    prompts = [[5, 6, 7], [8, 9]]
    out = dk.greedy(model, prompts, max_new_tokens=5, stop_at_eos=False)
    assert [len(o) for o in out] == [5, 5]
    for p, o in zip(prompts, out):  # each greedy token is the arg-max given everything before it
        logits = model(input_ids=torch.tensor([p + o])).logits[0]
        assert logits[len(p) - 1 : -1].argmax(-1).tolist() == o
    assert dk.beam_search(model, prompts, max_new_tokens=5, beam_size=1)[0][:1] == out[0][:1]
    beams = dk.generate(model, prompts, method="beam", max_new_tokens=4, beam_size=3)
    assert len(beams) == 2
    g = torch.Generator().manual_seed(0)
    samples = dk.generate(model, prompts, method="sample", max_new_tokens=4, top_k=5, generator=g)
    assert all(0 <= t < V for s in samples for t in s)
    with pytest.raises(ValueError, match="exceeds the model's max_len 64"):
        dk.greedy(model, [[1] * 60], max_new_tokens=10)


@pytest.mark.parametrize("make", SEQ2SEQ)
def test_generate_methods_on_hf_seq2seq(make):
    model = make().eval()
    srcs = [[5, 6, 7], [8]]
    out = dk.greedy(model, srcs, max_new_tokens=4, stop_at_eos=False)
    a = adapt(model)
    for s, o in zip(srcs, out):
        batch = a.collate([(s, o + [a.eos_id])])
        assert a.logits(batch)[0, :-1].argmax(-1).tolist() == o
    assert dk.beam_search(model, srcs, max_new_tokens=4, beam_size=2)
    assert dk.sample(model, srcs, max_new_tokens=3, generator=torch.Generator().manual_seed(0))


def test_metrics_on_hf_models():
    model, teacher = gpt2(seed=0).eval(), gpt2(seed=1).eval()
    a = adapt(model)
    batch = a.collate(LM_EXAMPLES)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(a.logits(batch).transpose(1, 2), batch.labels,
                                               ignore_index=IGNORE_INDEX)
    assert dk.perplexity(model, LM_EXAMPLES) == pytest.approx(float(ce.exp()), rel=1e-5)
    agree = dk.agreement(model, teacher, LM_EXAMPLES)
    assert 0 <= agree["top1"] <= 1 and agree["kl"] > 0
    assert dk.agreement(model, model, LM_EXAMPLES)["top1"] == 1.0
    assert dk.decoding_speed(model, [[5, 6, 7]], new_tokens=3) > 0


# ---------------------------------------------------------------------------- vocabulary in the loop
def hf_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def test_distill_refuses_different_vocab_sizes_before_any_step():
    student, teacher = gpt2(vocab=V), gpt2(seed=1, vocab=V + 8)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ValueError, match=r"student vocab size \(100\) differs from teacher vocab size \(108\)"):
        dk.distill(student, teacher, LM_EXAMPLES, config=cfg())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("mode,s_vocab,t_vocab", [("slice", V, V + 8), ("slice", V + 8, V), ("pad", V + 8, V)])
def test_distill_aligns_padded_embeddings_on_request(mode, s_vocab, t_vocab):
    tok = hf_tokenizer([f"w{i}" for i in range(40)])
    student, teacher = gpt2(vocab=s_vocab), gpt2(seed=1, vocab=t_vocab)
    hist = dk.distill(student, teacher, LM_EXAMPLES, kd=dk.KDConfig(vocab_alignment=mode),
                      config=cfg(steps=2), student_tokenizer=tok, teacher_tokenizer=tok)
    assert all(torch.isfinite(torch.tensor(hist.train_loss)))


def test_slice_alignment_equals_kd_on_the_cut_logits():
    """One step with vocab_alignment='slice' gives the gradient of the loss on logits[..., :V]."""
    tok = hf_tokenizer([f"w{i}" for i in range(40)])
    student, teacher = gpt2(vocab=V), gpt2(seed=1, vocab=V + 8).eval()
    kd = dk.KDConfig(vocab_alignment="slice", temperature=2.0)
    hist = dk.distill(student, teacher, LM_EXAMPLES, kd=kd, config=cfg(lr=1e-12), student_tokenizer=tok,
                      teacher_tokenizer=tok)
    got = _grads(student)
    ref_student = gpt2(vocab=V)
    a, t = adapt(ref_student), adapt(teacher)
    batch = a.collate(LM_EXAMPLES)
    with torch.no_grad():
        tl = t.logits(batch)[..., :V]
    loss = dk.distillation_loss(a.logits(batch), tl, batch.labels, temperature=2.0)
    loss.backward()
    assert hist.train_loss[0] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert _max_diff(got, _grads(ref_student)) < 1e-6


def test_distill_refuses_a_different_tokenizer():
    s_tok, t_tok = hf_tokenizer(["red", "green"]), hf_tokenizer(["red", "blue"])
    with pytest.raises(ValueError, match="different tokenizers"):
        dk.distill(gpt2(), gpt2(seed=1), LM_EXAMPLES, config=cfg(), student_tokenizer=s_tok,
                   teacher_tokenizer=t_tok)
    student, teacher = gpt2(), gpt2(seed=1)
    student.tokenizer, teacher.tokenizer = s_tok, t_tok  # tokenizers the models carry count too
    with pytest.raises(ValueError, match="different tokenizers"):
        dk.distill(student, teacher, LM_EXAMPLES, config=cfg())


def test_distill_refuses_mixed_kinds_and_decoder_starts():
    with pytest.raises(ValueError, match="student is a decoder-only .* teacher an encoder-decoder"):
        dk.distill(gpt2(), t5(), LM_EXAMPLES, config=cfg())
    with pytest.raises(ValueError, match="decoder start"):
        dk.distill(t5(), bart(), s2s_examples(1), config=cfg())


# ---------------------------------------------------------------------------- memory-bounded loss
@pytest.mark.parametrize("make,examples", CASES)
def test_memory_bounded_loss_equals_the_plain_path(make, examples):
    """KDConfig(memory_bounded=True): the loss from hidden states and the output layer (HF
    lm_head, T5's rescaled decoder output, BART's final_logits_bias, distilkit's heads) gives
    the plain path's loss and gradients."""
    data = examples(adapt(make(0)).eos_id)
    runs = []
    for bounded in (False, True):
        student, teacher = make(0), make(1)
        kd = dk.KDConfig(temperature=2.0, alpha=0.4, memory_bounded=bounded, chunk_size=3)
        hist = dk.distill(student, teacher, data, kd=kd, config=cfg())
        runs.append((hist.train_loss[0], _grads(student)))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    assert _max_diff(runs[0][1], runs[1][1]) < 1e-5


# ---------------------------------------------------------------------------- export
def test_save_pretrained_round_trip_causal(tmp_path):
    student = gpt2()
    dk.train(student, LM_EXAMPLES, config=cfg(steps=2))
    tok = hf_tokenizer(["red", "green"])
    dk.save_pretrained(student, tmp_path / "student", tokenizer=tok, extra={"steps": 2})
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    assert json.loads((tmp_path / "student" / "distilkit.json").read_text()) == {"steps": 2}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(student.eval()(input_ids=ids).logits, again(input_ids=ids).logits)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "student").get_vocab() == tok.get_vocab()


def test_save_pretrained_round_trip_seq2seq(tmp_path):
    student = t5()
    dk.save_pretrained(student, tmp_path / "t5")
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5").eval()
    src, dec = torch.tensor([[5, 6, 7]]), torch.tensor([[0, 8]])
    assert torch.equal(student.eval()(input_ids=src, decoder_input_ids=dec).logits,
                       again(input_ids=src, decoder_input_ids=dec).logits)


def test_save_pretrained_distilkit_model(tmp_path):
    model = dk.TransformerLM(dk.TransformerConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_len=32))
    dk.save_pretrained(model, tmp_path / "m.safetensors", extra={"steps": 0})
    again, _, meta = dk.load_model(tmp_path / "m.safetensors")
    assert meta["extra"] == {"steps": 0}
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(model.eval()(ids), again(ids))


def test_hf_training_checkpoints_and_resumes(tmp_path):
    model = gpt2()
    dk.train(model, LM_EXAMPLES, config=cfg(steps=2, batch_size=2, checkpoint_dir=str(tmp_path)))
    hist = dk.train(model, LM_EXAMPLES, config=cfg(steps=4, batch_size=2, checkpoint_dir=str(tmp_path)))
    assert hist.step == [1, 2, 3, 4]


def test_on_policy_and_sequence_level_kd_with_hf_seq2seq():
    student, teacher = t5(seed=0), t5(seed=1)
    eos = adapt(student).eos_id
    targets = dk.OnPolicyTargets(teacher, dk.KDConfig(alpha=1.0, divergence="jsd"), lam=1.0, max_new_tokens=3)
    hist = dk.train(student, s2s_examples(eos), targets=targets, config=cfg(steps=2, batch_size=3))
    assert all(torch.isfinite(torch.tensor(hist.train_loss)))
    pairs = dk.sequence_level_data(teacher, [[5, 6, 7], [8]], method="greedy", max_new_tokens=4, progress=False)
    assert pairs and all(tgt[-1] == eos and len(tgt) <= 5 for _, tgt in pairs)
    dk.train(student, pairs, config=cfg(steps=1, batch_size=2))
