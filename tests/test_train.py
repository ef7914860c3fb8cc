"""Tests for :mod:`distilkit.training`: exact gradient accumulation, determinism, resumable
checkpoints, a frozen teacher, input errors, history / restore_best, cached teacher logits and
sequence-level KD data.

Everything runs on the CPU with tiny models (hidden size 16) and a few dozen examples.
"""

from __future__ import annotations

import math
import random
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(1)

from distilkit import (  # noqa: E402
    IGNORE_INDEX,
    BatchIterator,
    CachedTeacherLogits,
    CheckpointError,
    HardLabels,
    KDConfig,
    Seq2SeqConfig,
    Seq2SeqLSTM,
    TeacherLogits,
    TrainConfig,
    TransformerConfig,
    TransformerLM,
    beam_search,
    collate_lm,
    collate_seq2seq,
    distill,
    distillation_loss,
    evaluate_loss,
    greedy,
    precompute_teacher_logits,
    resolve_device,
    sequence_level_data,
    train,
)

V = 13  # vocabulary: 0 pad, 1 bos, 2 eos, 3 unk, 4..12 "words"


# ---------------------------------------------------------------------------- helpers
def make_pairs(n: int, seed: int, vocab: int = V):
    """(source, target + <eos>) pairs with uneven source and target lengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src = [rng.randrange(4, vocab) for _ in range(rng.randint(1, 6))]
        tgt = [rng.randrange(4, vocab) for _ in range(rng.randint(0, 8))] + [2]
        out.append((src, tgt))
    return out


def make_windows(n: int, seed: int, vocab: int = V):
    """Language-model windows of uneven length (2..10 tokens), so collate_lm pads."""
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(2, 10))] for _ in range(n)]


def s2s(seed: int, vocab: int = V, **kw) -> Seq2SeqLSTM:
    torch.manual_seed(seed)
    return Seq2SeqLSTM(Seq2SeqConfig(vocab_size=vocab, embed_dim=16, hidden_dim=16, **kw))


def lm(seed: int, vocab: int = V) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(TransformerConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, max_len=32))


def cfg(**kw) -> TrainConfig:
    base = dict(steps=1, batch_size=8, lr=1e-2, warmup_steps=0, clip_norm=None, progress=False,
                device="cpu", eval_every=1000)
    base.update(kw)
    return TrainConfig(**base)


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ============================================================================ gradient accumulation
@pytest.fixture
def plain_sgd(monkeypatch):
    """Swap the loop's AdamW for plain SGD, so that one step moves every parameter by exactly
    ``lr * gradient``. (Adam's first step is ``lr * g / (|g| + eps)``, about ``lr * sign(g)``:
    it hides differences in the gradient's size and magnifies rounding where ``g`` is tiny.)"""

    def sgd(params, lr, weight_decay=0.0):
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)

    monkeypatch.setattr(torch.optim, "AdamW", sgd)


@pytest.mark.parametrize("kind, mode", [("seq2seq", "hard"), ("seq2seq", "kd"), ("lm", "hard"), ("lm", "kd")])
def test_grad_accumulation_equals_full_batch(kind, mode, plain_sgd):
    if kind == "seq2seq":
        examples, make, collate = make_pairs(64, seed=1), s2s, collate_seq2seq
    else:
        examples, make, collate = make_windows(64, seed=1), lm, collate_lm
    teacher = make(99) if mode == "kd" else None
    kd = KDConfig(temperature=2.0, alpha=0.3, divergence="forward_kl")

    def targets():
        return TeacherLogits(teacher, kd) if mode == "kd" else HardLabels()

    # the same permutation of the 64 examples is read by both runs: one batch of 64, or its four
    # consecutive quarters; the quarters really are padded differently
    full = next(BatchIterator(examples, 64, collate, seed=0))
    quarters = BatchIterator(examples, 16, collate, seed=0)
    micro = [next(quarters) for _ in range(4)]
    counts = [int((b.labels != IGNORE_INDEX).sum()) for b in micro]
    assert len(set(counts)) > 1  # the micro-batches have different numbers of real tokens
    assert sum(counts) == int((full.labels != IGNORE_INDEX).sum())

    def run(batch_size, grad_accum):
        model = make(0)
        hist = train(model, examples, config=cfg(batch_size=batch_size, grad_accum=grad_accum, lr=1.0),
                     targets=targets(), collate=collate)
        return grads(model), state(model), hist.train_loss[0]

    g_full, w_full, loss_full = run(64, 1)
    g_acc, w_acc, loss_acc = run(16, 4)

    # the reference: the token-mean loss of the whole batch of 64, by hand
    ref = make(0)
    logits = ref(full)
    if mode == "kd":
        with torch.no_grad():
            t_logits = teacher.eval()(full)
        loss = distillation_loss(logits, t_logits, full.labels, temperature=kd.temperature,
                                 alpha=kd.alpha, divergence=kd.divergence)
    else:
        loss = F.cross_entropy(logits.reshape(-1, V), full.labels.reshape(-1), ignore_index=IGNORE_INDEX)
    loss.backward()
    g_ref = grads(ref)

    assert g_full.keys() == g_acc.keys() == g_ref.keys()
    assert max_diff(g_full, g_ref) < 1e-6
    assert max_diff(g_acc, g_ref) < 1e-6
    assert abs(loss_full - loss.item()) < 1e-6 and abs(loss_acc - loss.item()) < 1e-6
    # after the step (SGD, lr 1, no clipping, no warm-up): w1 = w0 - g, the same for both runs
    assert max_diff(w_full, w_acc) < 1e-6
    w0 = {k: v.detach() for k, v in ref.named_parameters()}
    assert max(float((w0[k] - g_ref[k] - w_acc[k]).abs().max()) for k in g_ref) < 1e-6

    # what a naive loop does -- the mean of per-micro-batch token means -- is NOT that gradient,
    # so the comparison above can fail
    naive = make(0)
    for b in micro:
        lg = naive(b)
        if mode == "kd":
            with torch.no_grad():
                tl = teacher(b)
            part = distillation_loss(lg, tl, b.labels, temperature=kd.temperature, alpha=kd.alpha,
                                     divergence=kd.divergence)
        else:
            part = F.cross_entropy(lg.reshape(-1, V), b.labels.reshape(-1), ignore_index=IGNORE_INDEX)
        (part / 4).backward()
    assert max_diff(grads(naive), g_ref) > 1e-4


# ============================================================================ determinism
def test_training_is_deterministic_per_seed():
    pairs = make_pairs(40, seed=2)

    def run(seed):
        model = s2s(0, dropout=0.2)  # dropout makes the torch RNG matter too
        train(model, pairs, config=cfg(steps=6, batch_size=8, seed=seed, clip_norm=1.0, warmup_steps=2))
        return state(model)

    a, b, c = run(0), run(0), run(1)
    assert_bitwise_equal(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


# ============================================================================ resume
class Interrupted(Exception):
    pass


class StopAtCall(HardLabels):
    """Hard labels that raise on the ``at``-th call: a crash in the middle of a step."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def __call__(self, batch, student):
        self.calls += 1
        if self.calls == self.at:
            raise Interrupted(f"stopped at call {self.calls}")
        return super().__call__(batch, student)


RESUME_PAIRS = make_pairs(20, seed=3)  # 20 examples, batch 8: epochs wrap mid-run
RESUME_VALID = make_pairs(6, seed=4)


def resume_cfg(folder, **kw):
    base = dict(steps=10, batch_size=8, lr=1e-2, warmup_steps=3, clip_norm=1.0, eval_every=2,
                checkpoint_dir=str(folder), checkpoint_every=3, keep_checkpoints=2, progress=False,
                device="cpu", seed=7)
    base.update(kw)
    return TrainConfig(**base)


def resume_model(seed):
    return s2s(seed, dropout=0.2)  # dropout: the restored RNG state matters


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt_full")
    model = resume_model(0)
    hist = train(model, RESUME_PAIRS, config=resume_cfg(folder), valid_examples=RESUME_VALID)
    return folder, state(model), hist


def _same_history(h1, h2):
    assert h1.step == h2.step
    assert h1.train_loss == h2.train_loss
    assert h1.lr == h2.lr
    assert h1.valid_step == h2.valid_step
    assert h1.valid_loss == h2.valid_loss


def test_uninterrupted_run_keeps_newest_checkpoints(uninterrupted):
    folder, _, hist = uninterrupted
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000009.safetensors", "step-00000010.safetensors"]
    assert hist.step == list(range(1, 11))


def test_resume_after_interruption_is_bitwise_identical(tmp_path, uninterrupted):
    _, w_full, h_full = uninterrupted
    folder = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        train(resume_model(0), RESUME_PAIRS, config=resume_cfg(folder), targets=StopAtCall(7),
              valid_examples=RESUME_VALID)
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000003.safetensors", "step-00000006.safetensors"]
    # a fresh process would build a freshly initialised model: use another init on purpose
    model = resume_model(123)
    hist = train(model, RESUME_PAIRS, config=resume_cfg(folder), valid_examples=RESUME_VALID)
    assert_bitwise_equal(state(model), w_full)
    _same_history(hist, h_full)


def test_resume_false_ignores_checkpoints(tmp_path, uninterrupted):
    src, _, _ = uninterrupted
    folder = tmp_path / "ckpt"
    shutil.copytree(src, folder)
    model = resume_model(0)
    hist = train(model, RESUME_PAIRS, config=resume_cfg(folder, resume=False, steps=2),
                 valid_examples=RESUME_VALID)
    assert hist.step == [1, 2]


def test_truncated_newest_checkpoint_is_skipped(tmp_path, uninterrupted):
    src, w_full, h_full = uninterrupted
    folder = tmp_path / "ckpt"
    shutil.copytree(src, folder)
    newest = folder / "step-00000010.safetensors"
    blob = newest.read_bytes()
    newest.write_bytes(blob[: len(blob) // 2])  # a crash mid-copy, a full disk, ...
    model = resume_model(5)
    with pytest.warns(UserWarning, match="step-00000010"):
        hist = train(model, RESUME_PAIRS, config=resume_cfg(folder), valid_examples=RESUME_VALID)
    # resumed from step 9, redid step 10: the same result as the uninterrupted run
    assert_bitwise_equal(state(model), w_full)
    _same_history(hist, h_full)


def test_checkpoint_of_another_model_config_is_refused(tmp_path, uninterrupted):
    src, _, _ = uninterrupted
    folder = tmp_path / "ckpt"
    shutil.copytree(src, folder)
    torch.manual_seed(0)
    other = Seq2SeqLSTM(Seq2SeqConfig(vocab_size=V, embed_dim=16, hidden_dim=24, dropout=0.2))
    with pytest.raises(CheckpointError) as info:
        train(other, RESUME_PAIRS, config=resume_cfg(folder), valid_examples=RESUME_VALID)
    msg = str(info.value)
    assert "different model config" in msg
    assert "'hidden_dim': 16" in msg and "'hidden_dim': 24" in msg


# ============================================================================ frozen teacher
def test_teacher_is_frozen_and_in_eval_mode():
    pairs = make_pairs(24, seed=5)
    teacher = s2s(1, dropout=0.3)
    teacher.train()
    assert all(p.requires_grad for p in teacher.parameters())
    before = state(teacher)
    student = s2s(2)
    s_before = state(student)
    distill(student, teacher, pairs, kd=KDConfig(temperature=2.0, alpha=0.7),
            config=cfg(steps=3, batch_size=8))
    assert not teacher.training
    assert_bitwise_equal(state(teacher), before)
    assert all(p.grad is None for p in teacher.parameters())
    # ... while the student did learn
    assert any(not torch.equal(v, s_before[k]) for k, v in state(student).items())


# ============================================================================ errors
def test_vocab_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"\(13\).*\(17\)"):
        distill(s2s(0), s2s(1, vocab=17), make_pairs(4, 0), config=cfg())


def test_teacher_is_student():
    m = s2s(0)
    with pytest.raises(ValueError, match="teacher and student must be different"):
        distill(m, m, make_pairs(4, 0), config=cfg())


def test_empty_train_examples():
    with pytest.raises(ValueError, match="train_examples"):
        train(s2s(0), [], config=cfg())


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=0), "steps"), (dict(lr=-1), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(batch_size=0), "batch_size"), (dict(grad_accum=0), "grad_accum"),
    (dict(clip_norm=0.0), "clip_norm"), (dict(warmup_steps=-1), "warmup_steps"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"), (dict(steps=2.5), "steps"),
    (dict(amp_dtype="float32"), "amp_dtype"), (dict(amp_dtype="fp16"), "amp_dtype"),
])
def test_bad_train_config(kwargs, name):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{name}"):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(temperature=0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(alpha=2), ValueError, "alpha"),
    (dict(alpha=-0.1), ValueError, "alpha"),
    (dict(divergence="kl"), ValueError, "divergence"),
    (dict(divergence="jsd", beta=1), ValueError, "beta"),
    (dict(divergence="jsd", beta=0), ValueError, "beta"),
    (dict(divergence="skew_forward_kl", beta=1), ValueError, "beta"),
])
def test_bad_kd_config(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        KDConfig(**kwargs)


def test_unknown_device_string():
    with pytest.raises(ValueError, match="device"):
        resolve_device("quantum:7")
    with pytest.raises(ValueError, match="quantum"):
        train(s2s(0), make_pairs(4, 0), config=cfg(device="quantum:7"))


def test_cuda_asked_but_not_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"'cuda:0'.*CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match=r"'cuda'.*CUDA is not available"):
        train(s2s(0), make_pairs(4, 0), config=cfg(device="cuda"))
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_targets_and_config_types():
    with pytest.raises(TypeError, match="targets"):
        train(s2s(0), make_pairs(4, 0), config=cfg(), targets="teacher")
    with pytest.raises(TypeError, match="config"):
        train(s2s(0), make_pairs(4, 0), config={"steps": 1})
    with pytest.raises(TypeError, match="teacher"):
        TeacherLogits("not a model")


# ============================================================================ history, restore_best
def _diverging_data():
    """Train targets and validation targets disagree for the same sources, so the validation
    loss gets worse as training goes on: its minimum is not at the last evaluation."""
    rng = random.Random(0)
    srcs = [[rng.randrange(4, V) for _ in range(3)] for _ in range(32)]
    train_ex = [(s, [5, 6, 7, 2]) for s in srcs]
    valid_ex = [(s, [8, 9, 10, 2]) for s in srcs[:8]]
    return train_ex, valid_ex


def test_history_and_lr_schedule():
    tr, va = _diverging_data()
    model = s2s(0)
    c = cfg(steps=10, eval_every=3, warmup_steps=2, lr=0.01, min_lr_ratio=0.1)
    hist = train(model, tr, config=c, valid_examples=va)
    assert hist.step == list(range(1, 11))
    assert len(hist.train_loss) == len(hist.lr) == 10
    assert all(math.isfinite(x) for x in hist.train_loss)
    assert hist.valid_step == [3, 6, 9, 10]  # every eval_every steps, and at the end
    assert len(hist.valid_loss) == 4
    assert hist.best_valid_loss == min(hist.valid_loss)
    # warm-up, then cosine from lr down to min_lr_ratio * lr
    assert hist.lr[0] == pytest.approx(0.005) and hist.lr[1] == pytest.approx(0.01)
    assert hist.lr[2] == pytest.approx(0.01)
    expected_last = 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert hist.lr[9] == pytest.approx(expected_last)
    assert all(a >= b for a, b in zip(hist.lr[1:], hist.lr[2:]))
    # the last validation loss is the model's loss now (no restore_best)
    assert evaluate_loss(model, va) == pytest.approx(hist.valid_loss[-1], abs=1e-6)
    # History round-trips through a dict (it is stored in checkpoints as JSON)
    assert type(hist).from_dict(hist.to_dict()) == hist


def test_restore_best_restores_best_validation_weights():
    tr, va = _diverging_data()
    model = s2s(0)
    hist = train(model, tr, config=cfg(steps=12, eval_every=3, restore_best=True), valid_examples=va)
    best = min(hist.valid_loss)
    assert hist.valid_loss.index(best) < len(hist.valid_loss) - 1, "test needs a best before the end"
    assert hist.valid_loss[-1] > best + 1e-3
    assert evaluate_loss(model, va) == pytest.approx(best, abs=1e-6)
    assert not model.training


# ============================================================================ cached teacher logits
def test_cached_teacher_logits_match_live_teacher():
    pairs = make_pairs(24, seed=6)
    teacher = s2s(9)
    kd = KDConfig(temperature=2.0, alpha=0.6, divergence="jsd", beta=0.3)
    # a different batch size than training: the cached rows must not depend on padding
    cached = precompute_teacher_logits(teacher, pairs, dtype=torch.float32, batch_size=7, progress=False)
    assert len(cached) == len(pairs)
    for (src, tgt), ex in zip(pairs, cached):
        assert ex[0] == src and ex[1] == tgt
        assert ex[2].shape == (len(tgt), V) and ex[2].dtype == torch.float32

    live = s2s(0)
    h_live = train(live, pairs, config=cfg(batch_size=8), targets=TeacherLogits(teacher, kd))
    cache = s2s(0)
    h_cache = train(cache, cached, config=cfg(batch_size=8), targets=CachedTeacherLogits(kd))
    assert h_cache.train_loss[0] == pytest.approx(h_live.train_loss[0], abs=1e-6)
    assert max_diff(grads(live), grads(cache)) < 1e-6

    # float16 storage (the default) is close but not exact
    half = precompute_teacher_logits(teacher, pairs, progress=False)
    assert half[0][2].dtype == torch.float16
    h_half = train(s2s(0), half, config=cfg(batch_size=8), targets=CachedTeacherLogits(kd))
    assert h_half.train_loss[0] == pytest.approx(h_live.train_loss[0], abs=1e-3)


def test_cached_teacher_logits_for_lm():
    windows = make_windows(12, seed=7)
    teacher = lm(3)
    cached = precompute_teacher_logits(teacher, windows, dtype=torch.float32, batch_size=5, progress=False)
    assert [len(w) - 1 for w in windows] == [ex[1].shape[0] for ex in cached]
    kd = KDConfig(alpha=1.0)
    a, b = lm(0), lm(0)
    ha = train(a, windows, config=cfg(batch_size=4), targets=TeacherLogits(teacher, kd))
    hb = train(b, cached, config=cfg(batch_size=4), targets=CachedTeacherLogits(kd))
    assert hb.train_loss[0] == pytest.approx(ha.train_loss[0], abs=1e-6)
    assert max_diff(grads(a), grads(b)) < 1e-6


def test_cached_targets_need_cached_examples():
    with pytest.raises(ValueError, match="precompute_teacher_logits"):
        train(s2s(0), make_pairs(8, 0), config=cfg(), targets=CachedTeacherLogits())


# ============================================================================ sequence-level KD
@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_sequence_level_data_uses_teacher_outputs(method):
    teacher = s2s(11)
    with torch.no_grad():  # make the teacher confident, so that it stops and outputs vary
        teacher.out.weight.mul_(8)
    inputs = [src for src, _ in make_pairs(10, seed=8)]
    data = sequence_level_data(teacher, inputs, method=method, beam_size=3, max_new_tokens=7,
                               batch_size=4, progress=False)
    if method == "beam":
        hyps = beam_search(teacher, inputs, max_new_tokens=7, beam_size=3)
    else:
        hyps = greedy(teacher, inputs, max_new_tokens=7)
    expected = [(list(s), h + [teacher.config.eos_id]) for s, h in zip(inputs, hyps) if h]
    assert 0 < len(expected) < len(inputs)  # some outputs are empty: those inputs are dropped
    assert data == expected
    assert all(t[-1] == teacher.config.eos_id and 2 not in t[:-1] for _, t in data)


def test_sequence_level_data_bad_method():
    with pytest.raises(ValueError, match="method"):
        sequence_level_data(s2s(0), [[4, 5]], method="sample", progress=False)


# ============================================================================ float16 + gradient scaler
def test_amp_dtype_choice_and_when_a_scaler_is_used():
    import sys

    loop = sys.modules["distilkit.training.loop"]
    assert TrainConfig().amp_dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"TrainConfig\.amp_dtype must be one of bfloat16, float16; got 'half'"):
        TrainConfig(amp_dtype="half")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA scaler built without CUDA warns and disables itself
        assert isinstance(loop._grad_scaler(cuda, TrainConfig(amp_dtype="float16")), torch.amp.GradScaler)
    assert loop._grad_scaler(cuda, TrainConfig(amp_dtype="bfloat16")) is None  # bf16 has float32's range
    assert loop._grad_scaler(cuda, TrainConfig(amp_dtype="float16", amp=False)) is None
    assert loop._grad_scaler(cpu, TrainConfig(amp_dtype="float16")) is None  # no autocast on the CPU
    with loop._autocast(cpu, TrainConfig(amp_dtype="float16")):
        assert not torch.is_autocast_enabled("cpu")


@pytest.fixture
def cpu_scaler(monkeypatch):
    """Run the loop's float16 path on the CPU: a real GradScaler for the CPU, starting at a
    scale so large that the first scaled gradients overflow float32 (as float16's do on CUDA)."""
    import sys

    loop = sys.modules["distilkit.training.loop"]
    monkeypatch.setattr(loop, "_grad_scaler", lambda device, config: torch.amp.GradScaler(
        "cpu", init_scale=2.0**126, growth_interval=3))


def test_scaler_skips_overflowing_steps_without_raising(cpu_scaler, tmp_path):
    pairs = make_pairs(24, seed=5)
    model = s2s(0)
    w0 = state(model)
    hist = train(model, pairs, config=cfg(steps=1, clip_norm=1.0, checkpoint_dir=str(tmp_path),
                                          checkpoint_every=1))
    # 2^126 times a gradient entry above 4 overflows float32
    assert hist.skipped_step == [1]
    assert_bitwise_equal(state(model), w0)  # a skipped step never touches the weights
    assert all(math.isfinite(x) for x in hist.train_loss)
    meta = __import__("distilkit").checkpoint.read_checkpoint_meta(tmp_path / "step-00000001.safetensors")
    assert meta["grad_scaler"]["scale"] == 2.0**125  # the scaler backed off
    # trained on (resumed): 2^125 fits, so steps apply; after 3 clean steps (growth_interval)
    # the scaler doubles to 2^126, which overflows again and is skipped, and so on
    hist = train(model, pairs, config=cfg(steps=12, clip_norm=1.0, checkpoint_dir=str(tmp_path),
                                          checkpoint_every=4))
    assert hist.skipped_step == [1, 5, 9], hist.skipped_step
    assert any(not torch.equal(v, w0[k]) for k, v in state(model).items())


def test_scaled_steps_equal_unscaled_ones(cpu_scaler, monkeypatch):
    """With a scale that fits, scaling and unscaling by a power of two is exact: the float16
    path applies the same update as the plain one."""
    import sys

    pairs = make_pairs(24, seed=5)
    scaled = s2s(0)
    monkeypatch.setattr(sys.modules["distilkit.training.loop"], "_grad_scaler",
                        lambda device, config: torch.amp.GradScaler("cpu", init_scale=1024.0))
    hist = train(scaled, pairs, config=cfg(steps=4, clip_norm=1.0))
    assert hist.skipped_step == []
    monkeypatch.setattr(sys.modules["distilkit.training.loop"], "_grad_scaler", lambda device, config: None)
    plain = s2s(0)
    train(plain, pairs, config=cfg(steps=4, clip_norm=1.0))
    assert max_diff(state(scaled), state(plain)) < 1e-6


def test_scaler_state_is_saved_and_resumed_bitwise(cpu_scaler, tmp_path):
    pairs = make_pairs(24, seed=5)

    def config(folder):
        return cfg(steps=10, clip_norm=1.0, checkpoint_dir=str(folder), checkpoint_every=4, seed=3)

    straight = s2s(0)
    h1 = train(straight, pairs, config=config(tmp_path / "a"))
    interrupted = s2s(0)
    with pytest.raises(Interrupted):
        train(interrupted, pairs, config=config(tmp_path / "b"), targets=StopAtCall(7))
    resumed = s2s(1)
    h2 = train(resumed, pairs, config=config(tmp_path / "b"))
    assert h1.skipped_step == h2.skipped_step and h1.skipped_step  # the scale was restored
    _same_history(h1, h2)
    assert_bitwise_equal(state(straight), state(resumed))


def test_a_nan_loss_still_raises_under_the_scaler(cpu_scaler):
    class NaNModel(Seq2SeqLSTM):
        def forward(self, batch):
            return super().forward(batch) * math.nan

    torch.manual_seed(0)
    model = NaNModel(Seq2SeqConfig(vocab_size=V, embed_dim=16, hidden_dim=16))
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        train(model, make_pairs(8, 0), config=cfg(steps=2))


def test_batches_bound_for_an_accelerator_are_checked_on_the_host():
    """The models do not read their ids back on an accelerator; the loop checks the host copy
    before the transfer (here to the ``meta`` device, which holds no values at all)."""
    import sys

    loop = sys.modules["distilkit.training.loop"]
    meta = torch.device("meta")
    good = collate_lm(make_windows(4, seed=0))
    moved = loop._to_device(good, meta, V)
    assert moved.input_ids.device.type == "meta" and moved.labels.device.type == "meta"
    bad = collate_lm([[1, 2, V + 3, 4]])
    with pytest.raises(ValueError, match=r"batch\.input_ids token ids must lie in \[0, 13\), got 16"):
        loop._to_device(bad, meta, V)
    s2s_batch = collate_seq2seq([([4, 5], [6, 2]), ([4, 99], [6, 2])])
    with pytest.raises(ValueError, match=r"batch\.src token ids .* got 99"):
        loop._to_device(s2s_batch, meta, V)
    moved = loop._to_device(collate_seq2seq(make_pairs(3, 0)), meta, V)
    assert moved.src.device.type == "meta" and moved.src_lengths.device.type == "cpu"
