"""On-policy distillation (GKD) for decoder-only pairs: distilkit's TransformerLM and a Hugging
Face GPT-2 through the same ``OnPolicyTargets`` call. Tiny models on the CPU."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

import distilkit as dk  # noqa: E402
from distilkit import IGNORE_INDEX  # noqa: E402

V = 30


def lm(seed, d_model=16, layers=1):
    torch.manual_seed(seed)
    return dk.TransformerLM(dk.TransformerConfig(vocab_size=V, d_model=d_model, n_layers=layers, n_heads=2,
                                                 max_len=64, dropout=0.0))


def windows(n=6, length=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (length,), generator=g).tolist() for _ in range(n)]


def cfg(**kw):
    return dk.TrainConfig(**{**dict(steps=2, batch_size=3, lr=1e-3, warmup_steps=0, clip_norm=None,
                                    device="cpu", progress=False), **kw})


def test_sampled_lm_batch_keeps_the_prompt_and_scores_only_the_continuation():
    student, teacher = lm(0), lm(1, d_model=24, layers=2)
    data = windows()
    batch = dk.collate_lm(data[:3])
    targets = dk.OnPolicyTargets(teacher, dk.KDConfig(alpha=1.0, divergence="reverse_kl"), lam=1.0,
                                 prompt_tokens=5)
    torch.manual_seed(3)
    new, teacher_logits = targets(batch, student)
    # the prompt is the data's first 5 tokens; the rest was sampled (12 inputs per window)
    assert torch.equal(new.input_ids[:, :5], batch.input_ids[:, :5])
    assert new.input_ids.shape == batch.input_ids.shape
    assert not torch.equal(new.input_ids[:, 5:], batch.input_ids[:, 5:])
    assert (new.labels[:, :4] == IGNORE_INDEX).all()
    eos = dk.adapt(student).eos_id
    for row, labels in zip(new.input_ids, new.labels):
        scored = labels[4:][labels[4:] != IGNORE_INDEX]
        assert len(scored) >= 1 and (labels[4:4 + len(scored)] != IGNORE_INDEX).all()
        # a continuation is either the full 8 tokens or stops at the student's <eos>
        assert len(scored) == 8 or scored[-1] == eos
        # labels are the next tokens of the sampled window
        assert torch.equal(labels[4:3 + len(scored)], row[5:4 + len(scored)])
    # the teacher scored the sampled batch, not the original one
    assert torch.allclose(teacher_logits, teacher(new))
    assert not torch.allclose(teacher_logits, teacher(batch))


def test_default_prompt_is_half_the_window_and_lam_zero_keeps_the_batch():
    student, teacher = lm(0), lm(1)
    batch = dk.collate_lm(windows(3, 11))
    new, _ = dk.OnPolicyTargets(teacher, lam=1.0)(batch, student)
    assert (new.labels[:, :4] == IGNORE_INDEX).all() and (new.labels[:, 4] != IGNORE_INDEX).all()
    same, logits = dk.OnPolicyTargets(teacher, lam=0.0)(batch, student)
    assert same is batch and torch.allclose(logits, teacher(batch))


def test_on_policy_lm_training_lowers_the_divergence_on_student_samples():
    """A run of on-policy steps moves the student towards the teacher on its own samples."""
    teacher = lm(1, d_model=24, layers=2)
    data = windows(12, 13, seed=1)
    targets = dk.OnPolicyTargets(teacher, dk.KDConfig(alpha=1.0, divergence="reverse_kl"), lam=1.0)

    def divergence_on_own_samples(student):
        torch.manual_seed(123)
        batch, t_logits = targets(dk.collate_lm(data), student)
        with torch.no_grad():
            return float(dk.distillation_loss(student(batch), t_logits, batch.labels, alpha=1.0,
                                              divergence="reverse_kl"))

    student = lm(0)
    before = divergence_on_own_samples(student)
    dk.train(student, data, targets=targets, config=cfg(steps=60, batch_size=6, lr=1e-2), collate=dk.collate_lm)
    after = divergence_on_own_samples(student)
    assert after < 0.7 * before, (before, after)


def test_prompt_too_long_is_refused_with_the_argument_named():
    student, teacher = lm(0), lm(1)
    targets = dk.OnPolicyTargets(teacher, lam=1.0, prompt_tokens=20)
    with pytest.raises(ValueError, match="prompt_tokens"):
        targets(dk.collate_lm(windows(2, 9)), student)
    with pytest.raises(ValueError, match="prompt_tokens"):
        dk.OnPolicyTargets(teacher, prompt_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        dk.OnPolicyTargets(teacher, max_new_tokens=0)


def test_hf_gpt2_pair_through_the_same_call():
    transformers = pytest.importorskip("transformers")

    def gpt2(seed, n_embd):
        torch.manual_seed(seed)
        c = transformers.GPT2Config(n_layer=1, n_embd=n_embd, n_head=2, vocab_size=V, n_positions=64,
                                    bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(c)

    student, teacher = gpt2(0, 16), gpt2(1, 32)
    targets = dk.OnPolicyTargets(teacher, dk.KDConfig(alpha=1.0, divergence="jsd"), lam=1.0, prompt_tokens=4)
    hist = dk.train(student, windows(6, 10), targets=targets, config=cfg(steps=2))
    assert len(hist.train_loss) == 2 and all(torch.isfinite(torch.tensor(hist.train_loss)))
