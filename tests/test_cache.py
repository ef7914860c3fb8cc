"""The top-k teacher cache: files and manifest, lazy shard reading, refusals, and the
rest-bucket divergence (exact at k = vocab)."""

import json

import pytest
import torch

import distilkit as dk
from distilkit.adapters import adapt
from distilkit.cache import (
    CacheMismatchError,
    IndexedExamples,
    cache_teacher_logits,
    hash_examples,
    load_teacher_cache,
)
from distilkit.losses import TopKTeacher, topk_distillation_loss, topk_divergence

V = 23


def _lm(seed, d=16):
    torch.manual_seed(seed)
    return dk.TransformerLM(dk.TransformerConfig(vocab_size=V, d_model=d, n_layers=1, n_heads=2))


def _examples(n=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, V, (int(k),), generator=g).tolist()
            for k in torch.randint(2, 12, (n,), generator=g)]


def _full_topk(teacher_logits, temperature, k):
    lp = torch.log_softmax(teacher_logits / temperature, -1)
    top, ids = lp.topk(k, -1)
    tail = torch.logsumexp(lp.scatter(-1, ids, float("-inf")), -1)
    return TopKTeacher(top, ids, tail, temperature)


@pytest.mark.parametrize("divergence", dk.DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_k_equal_vocab_is_full_logit_kd(divergence, temperature):
    torch.manual_seed(0)
    s = torch.randn(3, 6, V, dtype=torch.float64, requires_grad=True)
    t = 3 * torch.randn(3, 6, V, dtype=torch.float64)
    labels = torch.randint(0, V, (3, 6))
    labels[1, 2:] = -100
    kw = dict(alpha=0.7, divergence=divergence, beta=0.3)
    a = topk_distillation_loss(s, _full_topk(t, temperature, V), labels, **kw)
    (ga,) = torch.autograd.grad(a, s)
    b = dk.distillation_loss(s, t, labels, temperature=temperature, reduction="sum", **kw)
    (gb,) = torch.autograd.grad(b, s)
    assert a.item() == pytest.approx(b.item(), rel=1e-10, abs=1e-10)
    assert torch.allclose(ga, gb, rtol=1e-9, atol=1e-12)


def test_small_k_never_exceeds_full_kl_and_keeps_tail_gradient():
    torch.manual_seed(1)
    s = torch.randn(40, V, dtype=torch.float64, requires_grad=True)
    t = 2 * torch.randn(40, V, dtype=torch.float64)
    full = dk.per_token_divergence(s, t)
    prev = torch.zeros(40, dtype=torch.float64)
    for k in (1, 4, 8, V):
        d = topk_divergence(s, _full_topk(t, 1.0, k))
        assert (d <= full + 1e-12).all()  # data-processing inequality
        assert (d >= prev - 1e-12).all()  # a finer partition never lowers the divergence
        prev = d
    assert torch.allclose(prev, full)
    # with k = 1 the student's logits outside the top token still get a gradient (the bucket)
    d1 = topk_divergence(s, _full_topk(t, 1.0, 1)).sum()
    (g,) = torch.autograd.grad(d1, s)
    top = t.argmax(-1, keepdim=True)
    assert g.scatter(-1, top, 0.0).abs().sum() > 0


def test_write_read_round_trip_lm(tmp_path):
    teacher, ex = _lm(0), _examples()
    cache = cache_teacher_logits(teacher, ex, tmp_path / "c", top_k=5, temperature=2.0,
                                 batch_size=4, examples_per_shard=5, dtype=torch.float32,
                                 teacher_name="tiny-teacher", progress=False)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    n_tokens = sum(len(e) - 1 for e in ex)
    assert m["teacher"] == "tiny-teacher" and m["vocab_size"] == V and m["top_k"] == 5
    assert m["temperature"] == 2.0 and m["num_examples"] == 13 and m["num_tokens"] == n_tokens
    assert m["examples_sha256"] == hash_examples(ex) and len(m["shards"]) == 3
    again = load_teacher_cache(tmp_path / "c")
    assert cache.manifest == again.manifest
    assert len(again) == 13 and again.top_k == 5 and again.num_tokens == n_tokens
    # rows equal the teacher's own top-k log-probabilities, example by example
    a = adapt(teacher)
    teacher.eval()
    for i in (0, 6, 12):
        batch = a.collate([ex[i]])
        lp = torch.log_softmax(a.logits(batch)[0].detach() / 2.0, -1)
        top, ids = lp.topk(5, -1)
        got_lp, got_ids, got_tail = again.row(i)
        assert torch.equal(got_ids.long(), ids)
        assert torch.allclose(got_lp, top, atol=1e-6)
        rest = torch.logsumexp(lp.scatter(-1, ids, float("-inf")), -1)
        assert torch.allclose(got_tail, rest, atol=1e-6)
    # lazily: at most max_open_shards shards are open after reading all rows
    for i in range(13):
        again.row(i)
    assert len(again._open) <= again.max_open_shards
    per_token = 5 * (4 + 2) + 4  # float32 log-probs, int16 ids, float32 tail
    assert again.nbytes >= per_token * n_tokens
    assert again.bytes_per_token < per_token + 200  # + headers and offsets of 3 shards


def test_cached_batch_rows_line_up_and_give_full_kd_at_k_vocab(tmp_path):
    teacher, student, ex = _lm(0), _lm(1, d=8), _examples()
    cache = cache_teacher_logits(teacher, ex, tmp_path / "c", top_k=V, dtype=torch.float32,
                                 progress=False)
    a = adapt(student)
    fn = cache.collate_fn(a.collate)
    batch = fn([IndexedExamples(ex)[i] for i in (3, 0, 7)])
    logits = a.logits(batch.batch)
    teacher.eval()
    with torch.no_grad():
        t_logits = adapt(teacher).logits(batch.batch)
    got = topk_distillation_loss(logits, batch.teacher, batch.labels, alpha=0.5)
    want = dk.distillation_loss(logits, t_logits, batch.labels, alpha=0.5, reduction="sum")
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_seq2seq_cache(tmp_path):
    torch.manual_seed(0)
    t = dk.Seq2SeqLSTM(dk.Seq2SeqConfig(vocab_size=V, embed_dim=8, hidden_dim=16))
    g = torch.Generator().manual_seed(3)
    pairs = [(torch.randint(4, V, (int(a),), generator=g).tolist(),
              torch.randint(4, V, (int(b),), generator=g).tolist() + [2])
             for a, b in torch.randint(1, 8, (9, 2), generator=g)]
    cache = cache_teacher_logits(t, pairs, tmp_path / "s", top_k=3, progress=False)
    assert cache.num_tokens == sum(len(p[1]) for p in pairs)
    assert cache.manifest["kind"] == "seq2seq" and cache.manifest["dtype"] == "float16"
    lp, ids, tail = cache.row(4)
    assert lp.shape == (len(pairs[4][1]), 3) and lp.dtype == torch.float16
    assert ids.dtype == torch.int16 and tail.dtype == torch.float32
    # top-k plus tail is one distribution (up to float16 rounding)
    total = torch.logsumexp(torch.cat([lp.float(), tail[:, None]], -1), -1)
    assert torch.allclose(total, torch.zeros_like(total), atol=2e-3)


def test_refusals(tmp_path):
    teacher, ex = _lm(0), _examples()
    cache = cache_teacher_logits(teacher, ex, tmp_path / "c", top_k=4, progress=False)
    cache.check(ex, vocab_size=V, temperature=1.0)  # the right ones pass
    with pytest.raises(CacheMismatchError, match="vocabulary of 23 tokens .* vocab size is 24"):
        cache.check(ex, vocab_size=V + 1)
    other = [list(e) for e in ex]
    other[5][0] = (other[5][0] + 1) % V
    with pytest.raises(CacheMismatchError, match="built for other examples"):
        cache.check(other)
    with pytest.raises(CacheMismatchError, match="holds 13 examples but 12"):
        cache.check(ex[:12])
    with pytest.raises(CacheMismatchError, match="temperature 1.0, but temperature=2.0"):
        cache.check(ex, temperature=2.0)
    # reordered examples are other examples too
    with pytest.raises(CacheMismatchError, match="other examples"):
        cache.check(ex[::-1])
    # tensors and lists of the same ids are the same examples
    cache.check([torch.tensor(e) for e in ex])


def test_bad_arguments_and_broken_caches(tmp_path):
    teacher, ex = _lm(0), _examples()
    with pytest.raises(ValueError, match=r"top_k must be an int in \[1, 23\]"):
        cache_teacher_logits(teacher, ex, tmp_path / "x", top_k=V + 1)
    with pytest.raises(ValueError, match="top_k"):
        cache_teacher_logits(teacher, ex, tmp_path / "x", top_k=0)
    with pytest.raises(ValueError, match="temperature must be"):
        cache_teacher_logits(teacher, ex, tmp_path / "x", top_k=2, temperature=0.0)
    with pytest.raises(ValueError, match="examples must not be empty"):
        cache_teacher_logits(teacher, [], tmp_path / "x", top_k=2)
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        load_teacher_cache(tmp_path / "nothing")
    cache_teacher_logits(teacher, ex, tmp_path / "c", top_k=2, examples_per_shard=4, progress=False)
    (tmp_path / "c" / "shard-00001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks shard shard-00001"):
        load_teacher_cache(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_teacher_cache(tmp_path / "c")


def _cfg(**kw):
    return dk.TrainConfig(steps=5, batch_size=4, lr=1e-2, warmup_steps=1, progress=False,
                          device="cpu", **kw)


def test_distill_from_cache_at_k_vocab_equals_live_teacher(tmp_path):
    teacher, ex = _lm(0), _examples()
    kd = dk.KDConfig(temperature=2.0, alpha=0.6)
    cache = dk.cache_teacher_logits(teacher, ex, tmp_path / "c", top_k=V, temperature=2.0,
                                    dtype=torch.float32, progress=False)
    del teacher  # training from the cache needs no teacher
    from_cache = _lm(1, d=8)
    h1 = dk.distill(from_cache, dk.load_teacher_cache(tmp_path / "c"), ex, kd=kd, config=_cfg())
    live = _lm(1, d=8)
    h2 = dk.distill(live, _lm(0), ex, kd=kd, config=_cfg())
    assert h1.train_loss == pytest.approx(h2.train_loss, rel=1e-5)
    for k, v in live.state_dict().items():
        assert torch.allclose(from_cache.state_dict()[k], v, atol=1e-5), k
    assert cache.top_k == V


def test_distill_from_small_k_cache_learns(tmp_path):
    teacher, ex = _lm(0), _examples(40)
    cache = dk.cache_teacher_logits(teacher, ex, tmp_path / "c", top_k=2, progress=False)
    student = _lm(1, d=8)
    hist = dk.distill(student, cache, ex, kd=dk.KDConfig(alpha=1.0),
                      config=dk.TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup_steps=1,
                                            progress=False, device="cpu"))
    assert hist.train_loss[-1] < 0.8 * hist.train_loss[0]


def test_distill_refuses_a_foreign_cache_before_any_step(tmp_path):
    teacher, ex = _lm(0), _examples()
    cache = dk.cache_teacher_logits(teacher, ex, tmp_path / "c", top_k=3, progress=False)
    student = _lm(1, d=8)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(CacheMismatchError, match="built for other examples"):
        dk.distill(student, cache, _examples(seed=9), config=_cfg())
    with pytest.raises(CacheMismatchError, match="temperature"):
        dk.distill(student, cache, ex, kd=dk.KDConfig(temperature=3.0), config=_cfg())
    torch.manual_seed(0)
    wide = dk.TransformerLM(dk.TransformerConfig(vocab_size=V + 5, d_model=8, n_layers=1, n_heads=2))
    with pytest.raises(CacheMismatchError, match="vocab size is 28"):
        dk.distill(wide, cache, ex, config=_cfg())
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_hf_models_cache_at_k_vocab_equals_live_teacher(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    vocab = 40

    def model(seed, width):
        torch.manual_seed(seed)
        if family == "gpt2":
            return transformers.GPT2LMHeadModel(transformers.GPT2Config(
                vocab_size=vocab, n_positions=32, n_embd=width, n_layer=1, n_head=2,
                bos_token_id=2, eos_token_id=2, pad_token_id=0))
        return transformers.BartForConditionalGeneration(transformers.BartConfig(
            vocab_size=vocab, d_model=width, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
            decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None))

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, vocab, (int(n),), generator=g).tolist()
            for n in torch.randint(3, 12, (12,), generator=g)]
    ex = seqs if family == "gpt2" else [(s, s[::-1] + [2]) for s in seqs]
    cache = dk.cache_teacher_logits(model(0, 32), ex, tmp_path / "c", top_k=vocab,
                                    dtype=torch.float32, progress=False)
    assert cache.manifest["kind"] == ("lm" if family == "gpt2" else "seq2seq")
    a, b = model(1, 16), model(1, 16)
    kd = dk.KDConfig(alpha=0.5)
    dk.distill(a, cache, ex, kd=kd, config=_cfg())
    dk.distill(b, model(0, 32), ex, kd=kd, config=_cfg())
    # Attention's key bias shifts every score of a query by the same amount, which softmax
    # ignores: its gradient is zero in exact arithmetic, so Adam's normalisation blows its
    # rounding noise up to a step of ~lr x noise / |noise| (measured with one thread: 1.4e-5 on
    # GPT-2's key bias, < 1e-8 on every other weight). It is compared apart, loosely.
    for k, v in b.state_dict().items():
        mine, key_bias = a.state_dict()[k], torch.zeros_like(v, dtype=torch.bool)
        if k.endswith("attn.c_attn.bias"):  # GPT-2: [query | key | value] biases
            key_bias[v.shape[0] // 3: 2 * v.shape[0] // 3] = True
        elif k.endswith("k_proj.bias"):
            key_bias[:] = True
        assert torch.allclose(mine[~key_bias], v[~key_bias], atol=1e-5), k
        assert torch.allclose(mine[key_bias], v[key_bias], atol=1e-3), k
