"""Tests for :mod:`distilkit.models` and :mod:`distilkit.decoding`: shapes, what the models
attend to (source, causality), the incremental ``start``/``step`` interface and KV cache against
full forward passes, and the decoders against each other."""

from __future__ import annotations

import random

import pytest
import torch

torch.set_num_threads(1)

from distilkit import (  # noqa: E402
    PRESETS,
    Seq2SeqConfig,
    Seq2SeqLSTM,
    TrainConfig,
    TransformerConfig,
    TransformerLM,
    beam_candidates,
    beam_search,
    collate_lm,
    collate_seq2seq,
    count_parameters,
    generate,
    greedy,
    make_model,
    sample,
    train,
)

V = 11
EOS = 2


def s2s(seed=0, vocab=V, sharpen=1.0, **kw):
    torch.manual_seed(seed)
    m = Seq2SeqLSTM(Seq2SeqConfig(vocab_size=vocab, embed_dim=16, hidden_dim=16, **kw)).eval()
    if sharpen != 1.0:
        with torch.no_grad():
            m.out.weight.mul_(sharpen)
    return m


def tlm(seed=0, vocab=V, std=0.3, n_layers=2, max_len=32):
    """A tiny Transformer with weights large enough that logits vary a lot between positions."""
    torch.manual_seed(seed)
    m = TransformerLM(TransformerConfig(vocab_size=vocab, d_model=16, n_layers=n_layers, n_heads=2,
                                        max_len=max_len))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, std)
    return m.eval()


SOURCES = [[4, 5, 6], [7, 3, 4, 5, 9], [5]]  # uneven lengths: padding in the batch
TARGETS = [[4, 4, 2], [8, 9, 10, 5, 2], [6, 2]]


def s2s_batch():
    return collate_seq2seq(list(zip(SOURCES, TARGETS)))


# ============================================================================ shapes
def test_forward_shapes():
    b = s2s_batch()
    out = s2s()(b)
    assert out.shape == (3, 5, V) and out.dtype == torch.float32
    lm = tlm()
    lb = collate_lm([[1, 4, 5, 6, 7], [1, 8, 9]])
    assert lm(lb).shape == (2, 4, V)
    assert lm(torch.randint(0, V, (3, 7))).shape == (3, 7, V)


def test_model_input_type_errors():
    with pytest.raises(TypeError, match="Seq2SeqBatch"):
        s2s()(collate_lm([[1, 2, 3]]))
    with pytest.raises(TypeError, match="LMBatch"):
        tlm()(torch.randint(0, V, (7,)))
    with pytest.raises(ValueError, match=f"0, {V}"):
        s2s()(collate_seq2seq([([V + 3], [4, 2])]))
    with pytest.raises(ValueError, match=f"0, {V}"):
        tlm()(torch.tensor([[1, V]]))


# ============================================================================ what the models look at
def test_seq2seq_uses_the_source():
    m, b = s2s(1), s2s_batch()
    base = m(b)
    b2 = s2s_batch()
    b2.src[0, 1] = 10  # another word in the first source (a real position, not padding)
    out = m(b2)
    assert not torch.allclose(out[0], base[0], atol=1e-4)
    assert torch.allclose(out[1:], base[1:], atol=1e-6)  # the other rows do not see it
    # padding positions of the source are ignored
    b3 = s2s_batch()
    b3.src[2, 1:] = 9  # row 2 has length 1: these are padding
    assert torch.allclose(m(b3), base, atol=1e-6)


def test_seq2seq_decoder_embeds_its_input_causally():
    m, b = s2s(2), s2s_batch()
    base = m(b)
    b2 = s2s_batch()
    b2.decoder_input[1, 2] = 3  # change the token fed at position 2 of row 1
    out = m(b2)
    assert torch.allclose(out[1, :2], base[1, :2], atol=1e-6)  # earlier positions: unchanged
    assert not torch.allclose(out[1, 2], base[1, 2], atol=1e-4)  # this position sees the new token
    assert not torch.allclose(out[1, 3:], base[1, 3:], atol=1e-4)  # later ones through the state
    assert torch.allclose(out[[0, 2]], base[[0, 2]], atol=1e-6)


@pytest.mark.parametrize("t", [0, 3, 6])
def test_transformer_is_causal(t):
    m = tlm(3)
    ids = torch.randint(4, V, (2, 8), generator=torch.Generator().manual_seed(0))
    base = m(ids)
    ids2 = ids.clone()
    ids2[:, t] = (ids2[:, t] - 4 + 1) % (V - 4) + 4  # another token at position t
    out = m(ids2)
    assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6)
    assert not torch.allclose(out[:, t], base[:, t], atol=1e-4)
    if t < 7:
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-4)


# ============================================================================ incremental decoding
def test_transformer_kv_cache_matches_full_forward():
    m = tlm(4)
    ids = torch.randint(1, V, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(ids)
        assert (full[:, 1:] - full[:, :-1]).abs().max() > 0.5  # positions differ a lot
        for prompt_len in (1, 4):
            logits, state = m.start(ids[:, :prompt_len].tolist())
            assert torch.allclose(logits, full[:, prompt_len - 1], atol=1e-5)
            for pos in range(prompt_len, 12):
                logits, state = m.step(state, ids[:, pos])
                assert state["length"] == pos + 1
                assert torch.allclose(logits, full[:, pos], atol=1e-5), pos


def test_transformer_reorder_state():
    m = tlm(5)
    ids = torch.randint(1, V, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = m(ids)
        _, state = m.start(ids[:, :3].tolist())
        index = torch.tensor([1, 1, 0])
        state = m.reorder_state(state, index)
        logits, _ = m.step(state, ids[index, 3])
    assert torch.allclose(logits, full[index, 3], atol=1e-5)


def test_seq2seq_start_step_matches_teacher_forcing():
    m, b = s2s(6), s2s_batch()
    with torch.no_grad():
        full = m(b)
        logits, state = m.start(SOURCES)
        assert torch.allclose(logits, full[:, 0], atol=1e-5)
        for pos in range(1, b.decoder_input.shape[1]):
            logits, state = m.step(state, b.decoder_input[:, pos])
            assert torch.allclose(logits, full[:, pos], atol=1e-5), pos
        # beam search reorders rows: selecting rows of the state selects rows of the output
        _, state = m.start(SOURCES)
        index = torch.tensor([2, 0, 0, 1])
        logits, _ = m.step(m.reorder_state(state, index), b.decoder_input[index, 1])
    assert torch.allclose(logits, full[index, 1], atol=1e-5)


def test_start_errors():
    with pytest.raises(ValueError, match="equal length"):
        tlm().start([[1, 2], [3]])
    with pytest.raises(ValueError, match="non-empty"):
        tlm().start([[]])
    with pytest.raises(ValueError, match="non-empty"):
        s2s().start([[4], []])


# ============================================================================ decoders
def manual_greedy(m, inputs, n):
    """Greedy decoding written out: argmax, feed it back, stop at <eos>."""
    out = []
    with torch.no_grad():
        for x in inputs:
            logits, state = m.start([x])
            seq = []
            for _ in range(n):
                tok = int(logits[0].argmax())
                if tok == EOS:
                    break
                seq.append(tok)
                logits, state = m.step(state, torch.tensor([tok]))
            out.append(seq)
    return out


@pytest.fixture(scope="module")
def trained():
    """Two briefly trained models whose outputs stop at different lengths (random tiny models
    tend to stop at once or never): a seq2seq that reverses its source, and an LM that writes
    token a (a - 3) times."""
    rng = random.Random(0)
    pairs = []
    for _ in range(200):
        src = [rng.randrange(4, V) for _ in range(rng.randint(1, 6))]
        pairs.append((src, src[::-1] + [EOS]))
    windows = []
    for _ in range(200):
        a = rng.randrange(4, V)
        windows.append([1] + [a] * (a - 3) + [EOS])
    cfg = dict(steps=60, batch_size=16, lr=2e-2, warmup_steps=0, progress=False, device="cpu")
    m = s2s(0)
    train(m, pairs, config=TrainConfig(**cfg))
    lm = tlm(0, std=0.02)
    train(lm, windows, config=TrainConfig(**cfg))
    return [("s2s-trained", m, SOURCES + [[4, 4, 5, 6, 7, 8]]), ("lm-trained", lm, [[1, 4], [1, 6], [1, 9]])]


@pytest.fixture(scope="module")
def decoding_models(trained):
    models = list(trained)
    models += [("s2s", s2s(seed, sharpen=6.0), SOURCES) for seed in range(2)]
    models += [("lm", tlm(seed, std=0.4), [[1, 4, 5], [1, 9, 3], [1, 6, 6]]) for seed in range(2)]
    return models


def test_greedy_equals_stepwise_argmax(decoding_models):
    lengths = set()
    for _, m, inputs in decoding_models:
        got = greedy(m, inputs, max_new_tokens=10)
        assert got == manual_greedy(m, inputs, 10)
        lengths |= {len(g) for g in got}
        # without stopping at <eos>, exactly max_new_tokens per row
        assert all(len(r) == 10 for r in greedy(m, inputs, max_new_tokens=10, stop_at_eos=False))
    assert {0, 10} < lengths  # rows stop at once, at different lengths, or never: all covered


def test_decoders_restore_training_mode():
    m = s2s(0)
    m.train()
    greedy(m, SOURCES, max_new_tokens=3)
    beam_search(m, SOURCES, max_new_tokens=3)
    sample(m, SOURCES, max_new_tokens=3)
    assert m.training


def test_beam_size_one_equals_greedy(decoding_models):
    for _, m, inputs in decoding_models:
        assert beam_search(m, inputs, max_new_tokens=10, beam_size=1) == greedy(m, inputs, max_new_tokens=10)


def test_beam_search_does_not_depend_on_the_batch(decoding_models):
    for _, m, inputs in decoding_models:
        together = beam_search(m, inputs, max_new_tokens=10, beam_size=3)
        alone = [beam_search(m, [x], max_new_tokens=10, beam_size=3)[0] for x in inputs]
        assert together == alone


def test_beam_candidates_are_ranked_and_their_first_is_the_beam_search_output(trained):
    m, inputs = trained[0][1], trained[0][2]
    ranked = beam_candidates(m, inputs, max_new_tokens=10, beam_size=3)
    assert [c[0] for c in ranked] == beam_search(m, inputs, max_new_tokens=10, beam_size=3)
    several = 0
    for src, cands in zip(inputs, ranked):
        assert 1 <= len(cands) <= 3
        scores = [normalised_score(m, src, c, 10) for c in cands]
        assert all(a >= b - 1e-5 for a, b in zip(scores, scores[1:]))
        several += len({tuple(c) for c in cands}) > 1
    assert several > 0  # some inputs do get more than one distinct candidate


def normalised_score(m, src, hyp, max_new, length_penalty=1.0):
    """The score beam search ranks by: log p(hyp [+ <eos>]) / (len(hyp) + 1) ** length_penalty;
    a hypothesis cut at max_new tokens has no <eos>."""
    ids = hyp + ([EOS] if len(hyp) < max_new else [])
    with torch.no_grad():
        logp = m(collate_seq2seq([(src, ids)]))[0].log_softmax(-1)
    total = logp[torch.arange(len(ids)), torch.tensor(ids)].sum().item()
    return total / (len(hyp) + 1) ** length_penalty


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_scores_at_least_greedy(length_penalty):
    """Beam search should not end with a worse-scoring output than greedy's complete output.

    Beam search with early stopping is a heuristic, not exact search, so this is checked on
    fixed random models rather than claimed in general; and only where greedy finished with
    <eos>: a hypothesis cut at max_new_tokens pays no <eos> cost, and beam search (which stops
    once beam_size hypotheses are finished) may rightly prefer complete ones."""
    compared = differ = 0
    for seed in range(6):
        torch.manual_seed(seed)
        m = Seq2SeqLSTM(Seq2SeqConfig(vocab_size=8, embed_dim=16, hidden_dim=16)).eval()
        with torch.no_grad():
            m.out.weight.mul_(5)
            m.out.bias[EOS] = 1.0
        srcs = [[4, 5, 6], [7, 3, 4, 5], [5]]
        g = greedy(m, srcs, max_new_tokens=12)
        b = beam_search(m, srcs, max_new_tokens=12, beam_size=4, length_penalty=length_penalty)
        for src, hg, hb in zip(srcs, g, b):
            if len(hg) == 12:
                continue
            sg = normalised_score(m, src, hg, 12, length_penalty)
            sb = normalised_score(m, src, hb, 12, length_penalty)
            assert sb >= sg - 1e-5
            compared += 1
            differ += hb != hg
    assert compared >= 10 and differ > 0  # beam search did find other sequences


def test_beam_search_finds_a_better_sequence_than_greedy():
    """A hand-made model where the greedy first token leads nowhere good: greedy takes 'A'
    (0.6) then has to pick among four equally unlikely tokens; beam search finds 'B' (0.4)
    followed by a certain <eos>."""

    class Toy(torch.nn.Module):
        config = Seq2SeqConfig(vocab_size=8)

        def start(self, inputs):
            n = len(inputs)
            lp = torch.full((n, 8), -30.0)
            lp[:, 4], lp[:, 5] = torch.tensor(0.6).log(), torch.tensor(0.4).log()
            return lp, torch.zeros(n, 1)  # state: the previous token

        def step(self, state, tokens):
            n = tokens.shape[0]
            lp = torch.full((n, 8), -30.0)
            after_a = tokens == 4
            lp[after_a, 2:4] = torch.tensor(0.25).log()
            lp[after_a, 6:8] = torch.tensor(0.25).log()
            lp[tokens == 5, 2] = 0.0
            lp[(tokens != 4) & (tokens != 5), 2] = 0.0
            return lp, tokens[:, None].float()

        def reorder_state(self, state, index):
            return state[index]

    toy = Toy()
    assert greedy(toy, [[1]], max_new_tokens=5) == [[4]]  # 'A' then <eos> (first of the ties)
    assert beam_search(toy, [[1]], max_new_tokens=5, beam_size=2) == [[5]]


def test_generate_dispatch():
    m = s2s(1, sharpen=6.0)
    assert generate(m, SOURCES, "greedy", max_new_tokens=5) == greedy(m, SOURCES, max_new_tokens=5)
    assert generate(m, SOURCES, "beam", max_new_tokens=5, beam_size=2) == beam_search(
        m, SOURCES, max_new_tokens=5, beam_size=2)
    with pytest.raises(ValueError, match="greedy, beam, sample"):
        generate(m, SOURCES, "nucleus")


# ============================================================================ sampling
def test_sampling_top_k_one_and_tiny_top_p_equal_greedy(decoding_models):
    for _, m, inputs in decoding_models:
        g = greedy(m, inputs, max_new_tokens=10)
        gen = torch.Generator().manual_seed(0)
        assert sample(m, inputs, max_new_tokens=10, top_k=1, generator=gen) == g
        assert sample(m, inputs, max_new_tokens=10, top_p=1e-6, generator=gen) == g
        assert sample(m, inputs, max_new_tokens=10, top_k=1, temperature=5.0, generator=gen) == g


def test_sampling_is_reproducible_with_a_seeded_generator():
    m = s2s(3)  # a flat model: samples vary
    many = SOURCES * 4

    def run(seed, **kw):
        return sample(m, many, max_new_tokens=12, generator=torch.Generator().manual_seed(seed), **kw)

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(7, top_k=3, top_p=0.9) == run(7, top_k=3, top_p=0.9)
    assert run(7, top_k=3) != run(7)  # the restriction changes what is drawn


def test_top_k_restricts_the_choice():
    m = tlm(2, std=0.4)
    prompt = [[1, 4, 5]]
    with torch.no_grad():
        logits, _ = m.start(prompt)
    allowed = set(logits[0].topk(2).indices.tolist())
    firsts = set()
    for s in range(40):
        out = sample(m, prompt, max_new_tokens=1, top_k=2, generator=torch.Generator().manual_seed(s))[0]
        firsts.add(out[0] if out else EOS)  # an empty output means <eos> was drawn
    assert firsts == allowed


@pytest.mark.parametrize("kwargs, name", [(dict(temperature=0.0), "temperature"), (dict(top_k=0), "top_k"),
                                          (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")])
def test_sampling_argument_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample(s2s(), SOURCES, max_new_tokens=3, **kwargs)


def test_decoder_argument_errors():
    m = s2s()
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy(m, SOURCES, max_new_tokens=0)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(m, SOURCES, beam_size=0)
    with pytest.raises(ValueError, match="non-empty"):
        greedy(m, [])
    with pytest.raises(ValueError, match="non-empty"):
        greedy(m, "hello")
    with pytest.raises(TypeError, match="start/step"):
        greedy(torch.nn.Linear(2, 2), [[1]])


# ============================================================================ max_len
def test_prompt_plus_new_tokens_beyond_max_len():
    m = tlm(max_len=16)
    for fn in (greedy, beam_search, sample):
        with pytest.raises(ValueError, match="max_len 16"):
            fn(m, [[1] * 10], max_new_tokens=7)
    assert len(greedy(m, [[1] * 10], max_new_tokens=6, stop_at_eos=False)[0]) == 6


def test_forward_beyond_max_len_is_a_value_error():
    m = tlm(max_len=16)
    with pytest.raises(ValueError, match="max_len 16"):
        m(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len 16"):
        m.start([[1] * 17])
    _, state = m.start([[1] * 16])
    with pytest.raises(ValueError, match="max_len 16"):
        m.step(state, torch.tensor([1]))


# ============================================================================ presets
@pytest.mark.parametrize("teacher, student, vocab", [("d2t-teacher", "d2t-student", 221),
                                                     ("lm-teacher", "lm-student", 100)])
def test_student_presets_are_at_most_a_quarter_of_the_teacher(teacher, student, vocab):
    t, s = make_model(teacher, vocab), make_model(student, vocab)
    assert count_parameters(s) * 4 <= count_parameters(t)
    assert type(t) is type(s)
    assert t.config.vocab_size == s.config.vocab_size == vocab


def test_make_model_unknown_preset_lists_presets():
    with pytest.raises(ValueError) as info:
        make_model("nope", 10)
    assert "'nope'" in str(info.value)
    for name in PRESETS:
        assert name in str(info.value)


def test_make_model_overrides_and_count_parameters():
    m = make_model("d2t-tiny", 50, hidden_dim=32)
    assert isinstance(m, Seq2SeqLSTM) and m.config.hidden_dim == 32 and m.config.vocab_size == 50
    assert count_parameters(m) == sum(p.numel() for p in m.parameters())
    m.out.weight.requires_grad_(False)
    assert count_parameters(m, trainable_only=True) == count_parameters(m) - m.out.weight.numel()
    assert isinstance(make_model("lm-student", 30), TransformerLM)


@pytest.mark.parametrize("make", [
    lambda: Seq2SeqConfig(vocab_size=0), lambda: Seq2SeqConfig(vocab_size=10, hidden_dim=15),
    lambda: TransformerConfig(vocab_size=10, d_model=10, n_heads=4),
    lambda: TransformerConfig(vocab_size=10, dropout=1.0),
])
def test_bad_model_configs(make):
    with pytest.raises(ValueError):
        make()


def test_encoder_sorts_on_the_host_and_matches_torchs_own_packing():
    """The encoder sorts the batch by length itself (so that nothing is read back from the
    device); its memory and final state equal those of torch's enforce_sorted=False path."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    m = Seq2SeqLSTM(Seq2SeqConfig(vocab_size=V, embed_dim=16, hidden_dim=16, encoder_layers=2)).eval()
    rng = random.Random(0)
    batch = collate_seq2seq([([rng.randrange(4, V) for _ in range(rng.randint(1, 7))], [4, 2])
                             for _ in range(9)])
    assert len(set(batch.src_lengths.tolist())) > 3  # unsorted, uneven lengths
    with torch.no_grad():
        memory, mask, (h0, _) = m.encode(batch.src, batch.src_lengths)
        packed = pack_padded_sequence(m.src_embed(batch.src), batch.src_lengths, batch_first=True,
                                      enforce_sorted=False)
        out, (h, _) = m.encoder(packed)
        ref, _ = pad_packed_sequence(out, batch_first=True, total_length=batch.src.shape[1])
        ref_h0 = torch.tanh(m.bridge_h(torch.cat([h[-2], h[-1]], -1))).view(9, 1, 16).transpose(0, 1)
    assert torch.equal(memory, ref) and torch.equal(h0, ref_h0)
    assert torch.equal(mask.sum(1), batch.src_lengths)
