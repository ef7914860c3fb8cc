"""Tests for :mod:`distilkit.losses`.

Each group below targets a bug that is common in knowledge-distillation code:

1. every divergence against an independent float64 reference written here from the formulas
   (ordinary, +-1e4, near-one-hot and masked-vocabulary logits, T from 0.05 to 100), with
   finite values and gradients;
2. the direction of beta in ``jsd`` / ``skew_*`` (swapping beta, or p and q, is a classic bug);
3. token mean, not batch mean; padding positions do not count;
4. the combined objective ``alpha * T^2 * soft + (1 - alpha) * CE`` and its reductions;
5. Hinton's T^2 factor keeps the gradient size independent of T;
6. no gradient reaches the teacher;
7. half precision inputs and autocast;
8. an all-masked batch gives exactly 0, never NaN;
9. the temperature softmax and ``per_token_divergence`` basics;
10. every input error gives a clear message.

The reference implementation (``ref_*``) is numpy float64 with explicit sums; it never calls
distilkit. Tolerances for the float32 code are an error budget: the float32 rounding of
``logits / T`` is ~eps32 * |logits| / T, which moves every log-probability by up to a few times
that; a divergence D then moves by at most about that error times (D + 4) (see
:func:`float32_budget`). Wrong formulas, a swapped beta or a missing T^2 are off by far more.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import distilkit
from distilkit import (
    DIVERGENCES,
    distillation_loss,
    distillation_loss_terms,
    divergence_from_log_probs,
    per_token_divergence,
    temperature_log_softmax,
    temperature_softmax,
)

SIX = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")
INF = float("inf")
EPS32 = float(np.finfo(np.float32).eps)


def _examples(factor: float = 1.0) -> settings:
    """Hypothesis settings scaled from the active profile (see tests/conftest.py)."""
    return settings(max_examples=max(10, int(settings().max_examples * factor)))


# =============================================================================
# float64 reference, written from the formulas in the specification
# =============================================================================
def ref_log_softmax(logits, temperature: float) -> np.ndarray:
    """log softmax(logits / T) over the last axis, float64. -inf entries stay -inf."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    zmax = np.max(z, axis=-1, keepdims=True)  # finite: every row has a finite entry
    shifted = z - zmax
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def ref_kl(log_a: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """KL(a || b) = sum_v a_v (log a_v - log b_v), with 0 log 0 = 0."""
    a = np.exp(log_a)
    with np.errstate(invalid="ignore"):  # (-inf) - (-inf) where a_v = 0; discarded below
        terms = np.where(a > 0, a * (log_a - log_b), 0.0)
    return terms.sum(axis=-1)


def ref_log_mix(log_a: np.ndarray, log_b: np.ndarray, weight_a: float) -> np.ndarray:
    """log(weight_a * a + (1 - weight_a) * b). In log space: 1e4-scale logits underflow exp."""
    with np.errstate(divide="ignore"):  # log(0) = -inf for weight 0 or 1 is what we want
        return np.logaddexp(np.log(weight_a) + log_a, np.log1p(-weight_a) + log_b)


def ref_divergence(student, teacher, temperature, divergence, beta=0.5) -> np.ndarray:
    """Per-position divergence between p = softmax(teacher/T) and q = softmax(student/T)."""
    log_p = ref_log_softmax(teacher, temperature)
    log_q = ref_log_softmax(student, temperature)
    if divergence == "forward_kl":
        return ref_kl(log_p, log_q)
    if divergence == "reverse_kl":
        return ref_kl(log_q, log_p)
    if divergence == "tvd":
        return 0.5 * np.abs(np.exp(log_p) - np.exp(log_q)).sum(axis=-1)
    if divergence == "jsd":  # m = beta p + (1 - beta) q
        log_m = ref_log_mix(log_p, log_q, beta)
        return beta * ref_kl(log_p, log_m) + (1 - beta) * ref_kl(log_q, log_m)
    if divergence == "skew_forward_kl":  # KL(p || beta p + (1 - beta) q)
        return ref_kl(log_p, ref_log_mix(log_p, log_q, beta))
    if divergence == "skew_reverse_kl":  # KL(q || beta q + (1 - beta) p)
        return ref_kl(log_q, ref_log_mix(log_q, log_p, beta))
    raise AssertionError(divergence)


def ref_cross_entropy(student, labels, ignore_index=-100) -> np.ndarray:
    """Per-position -log softmax(student)[label] at T = 1; 0 where label == ignore_index."""
    log_q = ref_log_softmax(student, 1.0)
    labels = np.asarray(labels)
    safe = np.where(labels == ignore_index, 0, labels)
    nll = -np.take_along_axis(log_q, safe[..., None], axis=-1)[..., 0]
    return np.where(labels == ignore_index, 0.0, nll)


def ref_loss(student, teacher, labels=None, *, temperature=1.0, alpha=0.5,
             divergence="forward_kl", beta=0.5, ignore_index=-100, t2_scale=True,
             reduction="mean", num_tokens=None) -> float:
    """alpha * T^2 * soft + (1 - alpha) * hard, token-mean (or sum) over counted positions."""
    div = ref_divergence(student, teacher, temperature, divergence, beta)
    if labels is None:
        counted = np.ones(div.shape, dtype=bool)
    else:
        counted = np.asarray(labels) != ignore_index
    soft = float(np.where(counted, div, 0.0).sum())
    if t2_scale:
        soft *= temperature**2
    if labels is None:
        total = soft
    else:
        hard = float(ref_cross_entropy(student, labels, ignore_index).sum())
        total = alpha * soft + (1 - alpha) * hard
    if reduction == "sum":
        return total
    if num_tokens is not None:
        return total / num_tokens
    return total / max(int(counted.sum()), 1)


def float32_budget(reference, student, teacher, temperature, factor=16.0) -> np.ndarray:
    """Error budget of a float32 computation, per position (see the module docstring)."""
    both = np.concatenate([np.asarray(student, np.float64), np.asarray(teacher, np.float64)], -1)
    finite_abs = np.where(np.isfinite(both), np.abs(both), 0.0)
    scale = finite_abs.max(axis=-1) / temperature + 1.0
    return 1e-6 + factor * EPS32 * scale * (np.abs(reference) + 4.0)


def assert_close_to_reference(actual, reference, budget, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    err = np.abs(actual - reference)
    bad = ~(err <= budget)  # also catches NaN
    assert not bad.any(), (
        f"{what}: float32 result differs from the float64 reference beyond the error budget\n"
        f"actual    = {actual[bad]}\nreference = {np.asarray(reference)[bad]}\n"
        f"error     = {err[bad]}\nbudget    = {np.asarray(budget)[bad]}"
    )


# =============================================================================
# Hypothesis strategies
# =============================================================================
REGIMES = ("ordinary", "extreme", "near_one_hot", "masked")


def temperatures():
    """T in [0.05, 100], log-uniform, plus the end points and T = 1."""
    log_uniform = st.floats(math.log(0.05), math.log(100.0)).map(
        lambda x: min(100.0, max(0.05, math.exp(x)))
    )
    return st.one_of(st.sampled_from([0.05, 1.0, 100.0]), log_uniform)


@st.composite
def logit_cases(draw, regimes=REGIMES, max_vocab=8):
    """(regime, student, teacher, T): float32 numpy logits of shape (batch, seq, vocab).

    * ordinary     -- entries in [-10, 10];
    * extreme      -- entries in [-1e4, 1e4], often exactly +-1e4;
    * near_one_hot -- small noise plus one spike of 15..80 per row (separately for each model);
    * masked       -- the same vocabulary positions are -inf in teacher and student (at least one
                      finite entry per row), the others of scale 10 or 1e4.
    """
    regime = draw(st.sampled_from(regimes))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(2, max_vocab)))
    vocab = shape[-1]

    def logits(elements):
        return draw(hnp.arrays(np.float32, shape, elements=elements))

    def positions():
        return draw(hnp.arrays(np.int64, shape[:-1], elements=st.integers(0, vocab - 1)))

    if regime == "ordinary":
        elements = st.floats(-10, 10, width=32)
        student, teacher = logits(elements), logits(elements)
    elif regime == "extreme":
        elements = st.one_of(st.sampled_from([-1e4, 1e4]), st.floats(-1e4, 1e4, width=32))
        student, teacher = logits(elements), logits(elements)
    elif regime == "near_one_hot":
        elements = st.floats(-1, 1, width=32)
        student, teacher = logits(elements), logits(elements)
        height = draw(st.sampled_from([15.0, 30.0, 80.0]))
        for x in (student, teacher):
            np.put_along_axis(x, positions()[..., None], np.float32(height), axis=-1)
    else:
        scale = draw(st.sampled_from([10.0, 1e4]))
        elements = st.floats(-scale, scale, width=32)
        student, teacher = logits(elements), logits(elements)
        masked = draw(hnp.arrays(np.bool_, shape))
        np.put_along_axis(masked, positions()[..., None], False, axis=-1)
        student[masked] = -np.inf
        teacher[masked] = -np.inf
    return regime, student, teacher, draw(temperatures())


def betas(divergence):
    if divergence == "jsd":  # 0 < beta < 1
        return st.one_of(st.sampled_from([0.5, 0.01, 0.99]), st.floats(0.01, 0.99))
    if divergence.startswith("skew_"):  # 0 <= beta < 1
        return st.one_of(st.sampled_from([0.0, 0.1, 0.9]), st.floats(0.0, 0.99))
    return st.just(0.5)


@st.composite
def labels_for(draw, student, ignore_index=-100, allow_all_ignored=False):
    """Integer labels for (batch, seq); a label always points at a finite student logit."""
    shape = student.shape[:-1]
    picks = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 10**6)))
    finite = np.isfinite(student)
    labels = np.empty(shape, dtype=np.int64)
    for idx in np.ndindex(shape):
        choices = np.flatnonzero(finite[idx])
        labels[idx] = choices[picks[idx] % len(choices)]
    ignored = draw(hnp.arrays(np.bool_, shape))
    if not allow_all_ignored and ignored.all():
        ignored.flat[0] = False
    labels[ignored] = ignore_index
    return labels


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# =============================================================================
# 1. every divergence against the float64 reference; finite value and gradient
# =============================================================================
@pytest.mark.parametrize("divergence", SIX)
@_examples()
@given(case=logit_cases(), data=st.data())
def test_divergence_matches_float64_reference(divergence, case, data):
    regime, student, teacher, temperature = case
    beta = data.draw(betas(divergence), label="beta")
    ref = ref_divergence(student, teacher, temperature, divergence, beta)
    assert np.isfinite(ref).all()  # sanity of the generated case, not of the code under test
    budget = float32_budget(ref, student, teacher, temperature)

    s = _t(student).requires_grad_()
    t = _t(teacher)
    per_token = per_token_divergence(s, t, temperature=temperature, divergence=divergence, beta=beta)
    assert per_token.dtype == torch.float32
    assert per_token.shape == student.shape[:-1]
    assert_close_to_reference(per_token.detach().numpy(), ref, budget, f"{divergence}/{regime}")

    loss = distillation_loss(s, t, temperature=temperature, divergence=divergence, beta=beta)
    n = ref.size
    ref_mean = temperature**2 * ref.mean()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert torch.isfinite(loss), f"non-finite loss {loss} ({regime}, T={temperature})"
    assert_close_to_reference(
        loss.item(), ref_mean, temperature**2 * budget.mean() + 1e-6 * abs(ref_mean), "loss"
    )

    loss.backward()
    grad = s.grad.numpy().astype(np.float64)
    assert np.isfinite(grad).all(), f"non-finite gradient ({regime}, T={temperature})"
    # entries both models mask carry no probability, so no gradient either
    masked = np.isneginf(student)
    assert (grad[masked] == 0).all()

    # Analytic gradients of T^2 * mean KL w.r.t. the student logits, where they are simple.
    log_p = ref_log_softmax(teacher, temperature)
    log_q = ref_log_softmax(student, temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    row_scale = float32_budget(np.zeros(ref.shape), student, teacher, temperature) / 4.0
    if divergence == "forward_kl":  # d/dz_s = T (q - p) / N
        expected = temperature * (q - p) / n
        tol = temperature / n * (row_scale[..., None] * (p + q) + 1e-7)
        assert_close_to_reference(grad, expected, tol, "forward_kl gradient")
    elif divergence == "reverse_kl":  # d/dz_s = T q (log q - log p - KL(q||p)) / N
        with np.errstate(invalid="ignore"):
            diff = np.where(q > 0, log_q - log_p, 0.0)
        expected = temperature * q * (diff - ref[..., None]) / n
        mag = q * (np.abs(diff) + np.abs(ref[..., None]) + 1.0) + p
        tol = temperature / n * (row_scale[..., None] * mag + 1e-7)
        assert_close_to_reference(grad, expected, tol, "reverse_kl gradient")


@pytest.mark.parametrize("divergence", SIX)
@_examples(0.5)
@given(case=logit_cases(), data=st.data())
def test_divergence_is_nonnegative_and_bounded(divergence, case, data):
    _, student, teacher, temperature = case
    beta = data.draw(betas(divergence), label="beta")
    d = per_token_divergence(_t(student), _t(teacher), temperature=temperature,
                             divergence=divergence, beta=beta).numpy()
    assert (d >= -1e-5).all()
    if divergence == "tvd":
        assert (d <= 1 + 1e-6).all()
    if divergence == "jsd":  # generalized JSD is at most the entropy of (beta, 1 - beta)
        assert (d <= -beta * math.log(beta) - (1 - beta) * math.log1p(-beta) + 1e-5).all()


def test_reference_handles_zero_log_zero():
    """Self-check of the reference: a one-hot teacher against uniform student is log V."""
    teacher = np.array([[0.0, -np.inf, -np.inf, -np.inf]])
    student = np.zeros((1, 4))
    assert ref_divergence(student, teacher, 1.0, "forward_kl")[0] == pytest.approx(math.log(4))
    assert ref_divergence(student, student, 1.0, "reverse_kl")[0] == 0.0


# =============================================================================
# 2. the direction of beta
# =============================================================================
# A peaked teacher and a student that puts its mass elsewhere: every swap is visible.
ASYM_TEACHER = np.array([[[6.0, 1.0, 0.0, 0.0, -2.0]]], dtype=np.float32)
ASYM_STUDENT = np.array([[[0.0, 0.0, 1.0, 0.5, 3.0]]], dtype=np.float32)


def _div(student, teacher, divergence, beta=0.5, temperature=1.0):
    return per_token_divergence(_t(student), _t(teacher), temperature=temperature,
                                divergence=divergence, beta=beta).numpy().astype(np.float64)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.3, 0.7, 0.9, 0.95])
@pytest.mark.parametrize("divergence", ["jsd", "skew_forward_kl", "skew_reverse_kl"])
def test_beta_direction_on_asymmetric_distributions(divergence, beta):
    ref = ref_divergence(ASYM_STUDENT, ASYM_TEACHER, 1.0, divergence, beta)
    # the test can only catch a swapped beta if the swapped value is clearly different
    # (1000x the tolerance below)
    swapped = ref_divergence(ASYM_STUDENT, ASYM_TEACHER, 1.0, divergence, 1 - beta)
    assert abs(swapped - ref).min() > 1e-2 * abs(ref).max()
    np.testing.assert_allclose(_div(ASYM_STUDENT, ASYM_TEACHER, divergence, beta), ref,
                               rtol=1e-5, atol=1e-6)


def test_skew_mixes_towards_its_own_distribution():
    """skew_forward_kl mixes p into q (KL(p||beta p + (1-beta) q)), not q into p."""
    beta = 0.3
    log_p = ref_log_softmax(ASYM_TEACHER, 1.0)
    log_q = ref_log_softmax(ASYM_STUDENT, 1.0)
    wrong_forward = ref_kl(log_p, ref_log_mix(log_q, log_p, beta))
    wrong_reverse = ref_kl(log_q, ref_log_mix(log_p, log_q, beta))
    got_forward = _div(ASYM_STUDENT, ASYM_TEACHER, "skew_forward_kl", beta)
    got_reverse = _div(ASYM_STUDENT, ASYM_TEACHER, "skew_reverse_kl", beta)
    assert abs(got_forward - wrong_forward).max() > 0.05
    assert abs(got_reverse - wrong_reverse).max() > 0.05


@_examples()
@given(case=logit_cases(regimes=("ordinary", "near_one_hot", "masked")))
def test_skew_with_beta_zero_is_plain_kl(case):
    _, student, teacher, temperature = case
    for skew, plain in (("skew_forward_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")):
        got = _div(student, teacher, skew, 0.0, temperature)
        want = _div(student, teacher, plain, 0.5, temperature)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{skew} beta=0")


def test_skew_beta_zero_distinguishes_forward_from_reverse():
    fwd = _div(ASYM_STUDENT, ASYM_TEACHER, "forward_kl")
    rev = _div(ASYM_STUDENT, ASYM_TEACHER, "reverse_kl")
    assert abs(fwd - rev).min() > 0.5  # so the beta=0 identities above tell them apart
    np.testing.assert_allclose(_div(ASYM_STUDENT, ASYM_TEACHER, "skew_forward_kl", 0.0), fwd,
                               rtol=1e-5)
    np.testing.assert_allclose(_div(ASYM_STUDENT, ASYM_TEACHER, "skew_reverse_kl", 0.0), rev,
                               rtol=1e-5)


@_examples()
@given(case=logit_cases(regimes=("ordinary", "near_one_hot", "masked")),
       beta=st.floats(0.01, 0.99))
def test_jsd_swap_symmetry(case, beta):
    """Swapping teacher and student maps jsd(beta) to jsd(1 - beta); symmetric at beta = 0.5."""
    _, student, teacher, temperature = case
    np.testing.assert_allclose(
        _div(student, teacher, "jsd", 0.5, temperature),
        _div(teacher, student, "jsd", 0.5, temperature), rtol=1e-4, atol=1e-6,
    )
    np.testing.assert_allclose(
        _div(student, teacher, "jsd", beta, temperature),
        _div(teacher, student, "jsd", 1 - beta, temperature), rtol=1e-4, atol=1e-6,
    )


@pytest.mark.parametrize("beta", [0.1, 0.2, 0.8, 0.9])
def test_jsd_is_not_symmetric_away_from_one_half(beta):
    straight = _div(ASYM_STUDENT, ASYM_TEACHER, "jsd", beta)
    swapped = _div(ASYM_TEACHER, ASYM_STUDENT, "jsd", beta)
    assert abs(straight - swapped).min() > 0.05 * abs(straight).max()


# =============================================================================
# 3. token mean, not batch mean; padding does not count
# =============================================================================
def _random_case(shape, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=g) * scale
    teacher = torch.randn(*shape, generator=g) * scale
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return student, teacher, labels


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("divergence", SIX)
def test_loss_does_not_grow_with_sequence_length(divergence, with_labels):
    vocab = 7
    student, teacher, labels = _random_case((1, 3, vocab), seed=1)
    kw = dict(temperature=2.0, alpha=0.3, divergence=divergence, beta=0.3)
    ref = ref_loss(student.numpy(), teacher.numpy(), labels.numpy() if with_labels else None, **kw)
    assert ref > 0.05  # a zero loss would make the comparisons below vacuous
    # one token repeated, then a 3-token pattern tiled; and the batch dimension too
    single = [distillation_loss(student[:, :1].expand(1, n, vocab), teacher[:, :1].expand(1, n, vocab),
                                labels[:, :1].expand(1, n) if with_labels else None, **kw)
              for n in (1, 4, 32)]
    for loss in single[1:]:
        torch.testing.assert_close(loss, single[0], rtol=1e-5, atol=1e-6)
    tiled = [distillation_loss(student.repeat(b, n, 1), teacher.repeat(b, n, 1),
                               labels.repeat(b, n) if with_labels else None, **kw)
             for b, n in ((1, 1), (1, 4), (1, 11), (8, 1), (3, 5))]
    for loss in tiled:
        assert loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def _garbage(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 1e3
    x.view(-1)[::5] = 1e4
    x.view(-1)[1::7] = -1e4
    return x


@pytest.mark.parametrize("divergence", SIX)
def test_padding_positions_do_not_change_the_loss(divergence):
    batch, seq, vocab, pad = 2, 5, 6, 7
    student, teacher, labels = _random_case((batch, seq, vocab), seed=2)
    kw = dict(temperature=1.5, alpha=0.6, divergence=divergence, beta=0.4)
    base = distillation_loss(student, teacher, labels, **kw)
    assert base.item() == pytest.approx(ref_loss(student.numpy(), teacher.numpy(),
                                                 labels.numpy(), **kw), rel=1e-5)

    pad_s, pad_t = _garbage((batch, pad, vocab), 3), _garbage((batch, pad, vocab), 4)
    pad_labels = torch.full((batch, pad), -100)
    for order in ("right", "left", "interleaved"):
        s = torch.cat([student, pad_s], 1)
        t = torch.cat([teacher, pad_t], 1)
        lab = torch.cat([labels, pad_labels], 1)
        if order == "left":
            perm = torch.cat([torch.arange(seq, seq + pad), torch.arange(seq)])
        elif order == "interleaved":
            perm = torch.randperm(seq + pad, generator=torch.Generator().manual_seed(5))
        else:
            perm = torch.arange(seq + pad)
        s = s[:, perm].clone().requires_grad_()
        loss = distillation_loss(s, t[:, perm], lab[:, perm], **kw)
        torch.testing.assert_close(loss, base, rtol=1e-5, atol=1e-6, msg=f"{order} padding")
        loss.backward()
        assert torch.isfinite(s.grad).all()
        assert (s.grad[lab[:, perm] == -100] == 0).all(), "padded positions received a gradient"


@pytest.mark.parametrize("divergence", SIX)
def test_custom_ignore_index(divergence):
    student, teacher, labels = _random_case((2, 4, 5), seed=6)
    labels[0, 1] = labels[1, 3] = -1
    kw = dict(temperature=2.0, alpha=0.5, divergence=divergence)
    got = distillation_loss(student, teacher, labels, ignore_index=-1, **kw)
    want = ref_loss(student.numpy(), teacher.numpy(), labels.numpy(), ignore_index=-1, **kw)
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("divergence", SIX)
def test_ragged_batch_is_a_token_mean_not_a_mean_of_sequence_means(divergence):
    student, teacher, labels = _random_case((2, 6, 5), seed=7)
    labels[0, 1:] = -100  # sequence 0 counts 1 token, sequence 1 counts 6
    kw = dict(temperature=2.0, alpha=0.5, divergence=divergence)
    got = distillation_loss(student, teacher, labels, **kw).item()
    token_mean = ref_loss(student.numpy(), teacher.numpy(), labels.numpy(), **kw)
    seq_means = [ref_loss(student[i:i + 1].numpy(), teacher[i:i + 1].numpy(),
                          labels[i:i + 1].numpy(), **kw) for i in range(2)]
    assert abs(np.mean(seq_means) - token_mean) > 1e-3 * abs(token_mean)  # distinguishable
    assert got == pytest.approx(token_mean, rel=1e-5)


@pytest.mark.parametrize("divergence", SIX)
@pytest.mark.parametrize("side", ["teacher", "student"])
def test_padding_with_one_sided_masked_entry_does_not_change_the_value(divergence, side):
    """At a padded position the divergence may be infinite (a vocabulary entry only one model
    masks); it must be dropped, not multiplied by 0 (inf * 0 = NaN)."""
    student, teacher, labels = _random_case((2, 3, 4), seed=8)
    base = distillation_loss(student[:, :2], teacher[:, :2], labels[:, :2], divergence=divergence)
    (teacher if side == "teacher" else student)[0, 2, 1] = -INF
    labels[:, 2] = -100
    loss = distillation_loss(student, teacher, labels, divergence=divergence)
    torch.testing.assert_close(loss, base, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("divergence", SIX)
@pytest.mark.parametrize("side", ["teacher", "student"])
def test_padding_with_one_sided_masked_entry_has_finite_gradient(divergence, side):
    """Regression: a padded position whose teacher masks a token the student does not (e.g. a
    prompt position under constrained decoding) must not matter. reverse_kl is inf there; with
    ``torch.where(mask, divs, 0)`` the value was right but the gradient was 0 * inf = NaN."""
    student, teacher, labels = _random_case((2, 3, 4), seed=8)
    (teacher if side == "teacher" else student)[0, 2, 1] = -INF
    labels[:, 2] = -100
    s = student.clone().requires_grad_()
    loss = distillation_loss(s, teacher, labels, divergence=divergence, alpha=1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert (s.grad[:, 2] == 0).all()
    s_ref = student[:, :2].clone().requires_grad_()
    distillation_loss(s_ref, teacher[:, :2], labels[:, :2], divergence=divergence,
                      alpha=1.0).backward()
    torch.testing.assert_close(s.grad[:, :2], s_ref.grad, rtol=1e-6, atol=1e-7)


# =============================================================================
# 4. the combined loss and its reductions
# =============================================================================
@_examples()
@given(data=st.data(), case=logit_cases(regimes=("ordinary", "extreme", "masked")),
       divergence=st.sampled_from(SIX), alpha=st.one_of(st.sampled_from([0.0, 1.0]),
                                                         st.floats(0.0, 1.0)),
       t2_scale=st.booleans())
def test_combined_loss_matches_reference(data, case, divergence, alpha, t2_scale):
    regime, student, teacher, temperature = case
    beta = data.draw(betas(divergence), label="beta")
    labels = data.draw(labels_for(student), label="labels")
    kw = dict(temperature=temperature, alpha=alpha, divergence=divergence, beta=beta,
              t2_scale=t2_scale)
    s, t, lab = _t(student), _t(teacher), _t(labels)
    got = distillation_loss(s, t, lab, **kw)

    counted = labels != -100
    n = int(counted.sum())
    div = ref_divergence(student, teacher, temperature, divergence, beta)
    ce = ref_cross_entropy(student, labels)
    t2 = temperature**2 if t2_scale else 1.0
    want = (alpha * t2 * div[counted].sum() + (1 - alpha) * ce[counted].sum()) / n
    assert want == pytest.approx(ref_loss(student, teacher, labels, **kw), rel=1e-12)
    soft_budget = float32_budget(div, student, teacher, temperature)[counted].sum()
    hard_budget = float32_budget(ce, student, student, 1.0)[counted].sum()
    tol = (alpha * t2 * soft_budget + (1 - alpha) * hard_budget) / n + 1e-6 * abs(want)
    assert_close_to_reference(got.item(), want, tol, f"combined loss ({regime})")

    total = distillation_loss(s, t, lab, reduction="sum", **kw)
    torch.testing.assert_close(total, got * n, rtol=1e-5, atol=1e-5)
    for num_tokens in (1, 7, 1000):
        by_n = distillation_loss(s, t, lab, num_tokens=num_tokens, **kw)
        torch.testing.assert_close(by_n, total / num_tokens, rtol=1e-5, atol=1e-6)


@_examples(0.5)
@given(case=logit_cases(regimes=("ordinary", "extreme")), data=st.data(),
       divergence=st.sampled_from(SIX))
def test_alpha_zero_is_plain_cross_entropy(case, data, divergence):
    _, student, teacher, temperature = case
    labels = _t(data.draw(labels_for(student), label="labels"))
    s = _t(student)
    got = distillation_loss(s, _t(teacher), labels, alpha=0.0, temperature=temperature,
                            divergence=divergence)
    want = F.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("divergence", SIX)
def test_labels_none_is_the_soft_term_alone(divergence):
    student, teacher, _ = _random_case((2, 3, 6), seed=9)
    kw = dict(temperature=3.0, divergence=divergence, beta=0.2)
    soft = 9.0 * ref_divergence(student.numpy(), teacher.numpy(), 3.0, divergence, 0.2).mean()
    for alpha in (0.0, 0.25, 1.0):  # alpha only weighs soft against hard; no hard term here
        got = distillation_loss(student, teacher, None, alpha=alpha, **kw)
        assert got.item() == pytest.approx(soft, rel=1e-5)
    no_t2 = distillation_loss(student, teacher, None, t2_scale=False, **kw)
    assert no_t2.item() == pytest.approx(soft / 9.0, rel=1e-5)
    total = distillation_loss(student, teacher, None, reduction="sum", **kw)
    assert total.item() == pytest.approx(soft * 6, rel=1e-5)


def test_alpha_one_and_t2_scale_on_a_fixed_case():
    student, teacher, labels = _random_case((2, 4, 5), seed=10)
    soft = ref_divergence(student.numpy(), teacher.numpy(), 4.0, "forward_kl").mean()
    ce = ref_cross_entropy(student.numpy(), labels.numpy()).mean()
    kw = dict(temperature=4.0)
    assert distillation_loss(student, teacher, labels, alpha=1.0, **kw).item() == \
        pytest.approx(16 * soft, rel=1e-5)
    assert distillation_loss(student, teacher, labels, alpha=1.0, t2_scale=False, **kw).item() \
        == pytest.approx(soft, rel=1e-5)
    assert distillation_loss(student, teacher, labels, alpha=0.25, **kw).item() == \
        pytest.approx(0.25 * 16 * soft + 0.75 * ce, rel=1e-5)


def test_hard_term_uses_temperature_one():
    student, teacher, labels = _random_case((2, 4, 5), seed=11)
    for temperature in (0.5, 1.0, 7.0):
        got = distillation_loss(student, teacher, labels, alpha=0.0, temperature=temperature)
        want = ref_cross_entropy(student.numpy(), labels.numpy()).mean()
        assert got.item() == pytest.approx(want, rel=1e-5)


def test_distillation_loss_terms_are_sums():
    student, teacher, labels = _random_case((2, 4, 5), seed=12)
    labels[1, :2] = -100
    soft_sum, hard_sum, count = distillation_loss_terms(student, teacher, labels, temperature=2.0)
    counted = labels.numpy() != -100
    div = ref_divergence(student.numpy(), teacher.numpy(), 2.0, "forward_kl")
    ce = ref_cross_entropy(student.numpy(), labels.numpy())
    assert int(count) == 6
    assert soft_sum.item() == pytest.approx(div[counted].sum(), rel=1e-5)
    assert hard_sum.item() == pytest.approx(ce[counted].sum(), rel=1e-5)
    # micro-batching: the sum of the halves' terms normalised once equals the whole batch's loss
    halves = [distillation_loss(student[i:i + 1], teacher[i:i + 1], labels[i:i + 1],
                                temperature=2.0, reduction="sum") for i in range(2)]
    whole = distillation_loss(student, teacher, labels, temperature=2.0)
    assert (sum(halves) / 6).item() == pytest.approx(whole.item(), rel=1e-5)


# =============================================================================
# 5. Hinton's T^2: the gradient keeps its size as T changes
# =============================================================================
def _student_grad(student, teacher, temperature, t2_scale):
    s = student.clone().requires_grad_()
    distillation_loss(s, teacher, temperature=temperature, t2_scale=t2_scale).backward()
    return s.grad


def _zero_mean_logits(seed, shape=(3, 16), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * scale
    return x - x.mean(-1, keepdim=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_t2_scaling_keeps_the_gradient_size(seed):
    student, teacher = _zero_mean_logits(2 * seed), _zero_mean_logits(2 * seed + 1)
    with_t2 = {T: _student_grad(student, teacher, T, True).norm().item() for T in (2, 5, 10, 20)}
    without = {T: _student_grad(student, teacher, T, False).norm().item() for T in (2, 5, 10, 20)}
    assert max(with_t2.values()) / min(with_t2.values()) < 2.0, with_t2
    # without T^2 the gradient shrinks like 1/T^2
    assert without[10] / without[20] == pytest.approx(4.0, rel=0.15), without
    assert without[5] / without[20] == pytest.approx(16.0, rel=0.3), without
    # and with it the high-temperature limit is (z_s - z_t) / (V * N) for zero-mean logits
    limit = (student - teacher) / student.numel()
    errors = [((_student_grad(student, teacher, T, True) - limit).norm() / limit.norm()).item()
              for T in (20, 100)]
    assert errors[1] < 0.05 and errors[1] < errors[0], errors


# =============================================================================
# 6. no gradient into the teacher
# =============================================================================
@pytest.mark.parametrize("divergence", SIX)
def test_no_gradient_reaches_the_teacher(divergence):
    student, teacher, labels = _random_case((2, 3, 5), seed=13)
    kw = dict(temperature=2.0, alpha=0.7, divergence=divergence, beta=0.3)

    s1 = student.clone().requires_grad_()
    t1 = teacher.clone().requires_grad_()
    loss = distillation_loss(s1, t1, labels, **kw)
    loss.backward()
    assert t1.grad is None or (t1.grad == 0).all()

    s2 = student.clone().requires_grad_()
    distillation_loss(s2, teacher.detach(), labels, **kw).backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=0, atol=0)

    # a teacher "model" in the graph: its parameters get nothing either
    layer = torch.nn.Linear(5, 5)
    s3 = student.clone().requires_grad_()
    distillation_loss(s3, layer(teacher), labels, **kw).backward()
    assert layer.weight.grad is None or (layer.weight.grad == 0).all()
    t4 = teacher.clone().requires_grad_()
    per_token_divergence(student.clone().requires_grad_(), t4, divergence=divergence,
                         beta=0.3).sum().backward()
    assert t4.grad is None or (t4.grad == 0).all()


# =============================================================================
# 7. half precision and autocast
# =============================================================================
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", SIX)
def test_half_precision_inputs_are_upcast(divergence, dtype):
    student, teacher, labels = _random_case((2, 3, 7), seed=14)
    kw = dict(temperature=2.0, alpha=0.5, divergence=divergence, beta=0.3)
    s16 = student.to(dtype).requires_grad_()
    t16 = teacher.to(dtype)
    got = distillation_loss(s16, t16, labels, **kw)
    assert got.dtype == torch.float32
    want = distillation_loss(s16.detach().float(), t16.float(), labels, **kw)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got.backward()
    assert s16.grad.dtype == dtype and torch.isfinite(s16.grad).all()
    per_token = per_token_divergence(s16, t16, **{k: kw[k] for k in ("temperature", "divergence",
                                                                      "beta")})
    assert per_token.dtype == torch.float32
    # extreme logits are representable in both half formats and must stay finite
    ext = (torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0)).sign() * 1e4).to(dtype)
    x = ext.clone().requires_grad_()
    loss = distillation_loss(x, -ext, labels, **kw)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("divergence", SIX)
def test_loss_under_cpu_autocast_is_float32_and_finite(divergence):
    torch.manual_seed(15)
    hidden = torch.randn(2, 4, 8)
    student_head, teacher_head = torch.nn.Linear(8, 11), torch.nn.Linear(8, 11)
    labels = torch.randint(0, 11, (2, 4))
    labels[1, 3] = -100
    kw = dict(temperature=2.0, alpha=0.5, divergence=divergence, beta=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student, teacher = student_head(hidden), teacher_head(hidden)
        loss = distillation_loss(student, teacher, labels, **kw)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student_head.weight.grad).all()
    assert teacher_head.weight.grad is None
    # the autocast region must not push the loss math itself to bf16
    s32, t32 = student.detach().float(), teacher.detach().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = distillation_loss(s32, t32, labels, **kw)
    torch.testing.assert_close(inside, distillation_loss(s32, t32, labels, **kw),
                               rtol=1e-6, atol=1e-7)


# =============================================================================
# 8. all-masked batch and a single counted token
# =============================================================================
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("divergence", SIX)
def test_all_masked_batch_gives_exactly_zero(divergence, alpha, reduction):
    student, teacher, _ = _random_case((2, 3, 5), seed=16)
    labels = torch.full((2, 3), -100)
    s = student.clone().requires_grad_()
    loss = distillation_loss(s, teacher, labels, alpha=alpha, divergence=divergence,
                             temperature=2.0, reduction=reduction)
    assert loss.item() == 0.0  # NaN != 0
    loss.backward()
    assert s.grad is not None and (s.grad == 0).all()
    assert distillation_loss(student, teacher, labels, num_tokens=4, alpha=alpha,
                             divergence=divergence).item() == 0.0
    soft, hard, count = distillation_loss_terms(student, teacher, labels, divergence=divergence)
    assert soft.item() == 0.0 and hard.item() == 0.0 and int(count) == 0


@pytest.mark.parametrize("divergence", SIX)
def test_a_single_counted_token(divergence):
    student, teacher, labels = _random_case((2, 3, 5), seed=17)
    only = labels[1, 2].item()
    labels.fill_(-100)
    labels[1, 2] = only
    kw = dict(temperature=3.0, alpha=0.4, divergence=divergence, beta=0.6)
    got = distillation_loss(student, teacher, labels, **kw)
    div = ref_divergence(student[1, 2].numpy(), teacher[1, 2].numpy(), 3.0, divergence, 0.6)
    ce = ref_cross_entropy(student[1, 2].numpy(), np.array(only))
    assert got.item() == pytest.approx(0.4 * 9 * div + 0.6 * ce, rel=1e-5)
    # and the same token alone, without labels, without a batch dimension
    alone = distillation_loss(student[1, 2], teacher[1, 2], **kw)
    assert alone.item() == pytest.approx(9 * div, rel=1e-5)


# =============================================================================
# 9. temperature softmax and per-token divergence basics
# =============================================================================
@_examples()
@given(logits=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                         elements=st.floats(-30, 30, width=32)),
       temperature=temperatures())
def test_temperature_softmax_is_softmax_of_scaled_logits(logits, temperature):
    z = _t(logits)
    probs = temperature_softmax(z, temperature)
    assert probs.shape == z.shape and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(z.shape[:-1]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs.numpy(), np.exp(ref_log_softmax(logits, temperature)),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(temperature_log_softmax(z, temperature),
                               F.log_softmax(z.double() / temperature, -1).float(),
                               rtol=1e-5, atol=float(4 * EPS32 * (30 / temperature + 1)))


def test_temperature_softmax_limits():
    z = torch.tensor([[3.0, -1.0, 0.5, 2.0, -4.0]])
    uniform = temperature_softmax(z, 1e4)
    torch.testing.assert_close(uniform, torch.full_like(z, 0.2), rtol=0, atol=1e-3)
    one_hot = temperature_softmax(z, 1e-3)
    torch.testing.assert_close(one_hot, F.one_hot(z.argmax(-1), 5).float(), rtol=0, atol=1e-6)
    # monotone: entropy decreases as T decreases
    entropies = [-(p * p.log()).sum().item()
                 for p in (temperature_softmax(z, T) for T in (100.0, 10.0, 1.0, 0.3))]
    assert entropies == sorted(entropies, reverse=True)
    assert temperature_softmax(z.bfloat16(), 2.0).dtype == torch.float32
    torch.testing.assert_close(temperature_softmax(z), torch.softmax(z, -1))


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5), (2, 1, 3, 5)])
@pytest.mark.parametrize("divergence", SIX)
def test_per_token_divergence_shape_sign_and_zero(divergence, shape):
    g = torch.Generator().manual_seed(18)
    student, teacher = torch.randn(*shape, generator=g) * 4, torch.randn(*shape, generator=g) * 4
    d = per_token_divergence(student, teacher, temperature=1.5, divergence=divergence, beta=0.3)
    assert d.shape == shape[:-1]
    assert (d > 0).all()  # different random distributions
    same = per_token_divergence(student, student.clone(), temperature=1.5,
                                divergence=divergence, beta=0.3)
    assert same.shape == shape[:-1]
    torch.testing.assert_close(same, torch.zeros(shape[:-1]), rtol=0, atol=1e-6)


@_examples(0.5)
@given(case=logit_cases(), divergence=st.sampled_from(SIX))
def test_divergence_is_zero_when_teacher_equals_student(case, divergence):
    _, student, _, temperature = case
    d = per_token_divergence(_t(student), _t(student.copy()), temperature=temperature,
                             divergence=divergence, beta=0.3)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d, torch.zeros_like(d), rtol=0, atol=1e-5)


@pytest.mark.parametrize("divergence", SIX)
def test_divergence_from_log_probs_agrees(divergence):
    student, teacher, _ = _random_case((2, 3, 6), seed=19)
    got = divergence_from_log_probs(F.log_softmax(teacher / 2, -1), F.log_softmax(student / 2, -1),
                                    divergence, 0.3)
    want = ref_divergence(student.numpy(), teacher.numpy(), 2.0, divergence, 0.3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_divergence_names_are_exported():
    assert tuple(DIVERGENCES) == SIX
    for name in ("distillation_loss", "per_token_divergence", "temperature_softmax",
                 "temperature_log_softmax", "divergence_from_log_probs",
                 "distillation_loss_terms", "DIVERGENCES"):
        assert hasattr(distilkit, name)


# =============================================================================
# 10. errors name the argument and the expectation
# =============================================================================
VOCAB = 5


def _call(student=None, teacher=None, labels="default", **kw):
    g = torch.Generator().manual_seed(20)
    student = torch.randn(2, 3, VOCAB, generator=g) if student is None else student
    teacher = torch.randn(2, 3, VOCAB, generator=g) if teacher is None else teacher
    if isinstance(labels, str) and labels == "default":
        labels = torch.randint(0, VOCAB, (2, 3), generator=g)
    return distillation_loss(student, teacher, labels, **kw)


def _with_nan(shape=(2, 3, VOCAB)):
    x = torch.randn(*shape)
    x.view(-1)[-2] = float("nan")
    return x


SIX_NAMES = [re.escape(name) for name in SIX]
ERROR_CASES = [
    # (id, kwargs for _call, exception type, patterns that must all occur in the message)
    ("vocab-mismatch", dict(student=torch.randn(2, 3, 11), teacher=torch.randn(2, 3, 13)),
     ValueError, ["vocab", r"\b11\b", r"\b13\b"]),
    ("shape-mismatch-seq", dict(student=torch.randn(2, 3, VOCAB), teacher=torch.randn(2, 4, VOCAB)),
     ValueError, ["student_logits", "teacher_logits", r"2,\s*3,\s*5", r"2,\s*4,\s*5"]),
    ("shape-mismatch-rank", dict(student=torch.randn(2, 3, VOCAB), teacher=torch.randn(6, VOCAB)),
     ValueError, ["student_logits", "teacher_logits", "shape"]),
    ("temperature-zero", dict(temperature=0.0), ValueError, ["temperature", r"> ?0|positive"]),
    ("temperature-negative", dict(temperature=-1.0), ValueError, ["temperature", r"> ?0|positive"]),
    ("temperature-nan", dict(temperature=float("nan")), ValueError, ["temperature", "finite"]),
    ("temperature-inf", dict(temperature=INF), ValueError, ["temperature", "finite"]),
    ("alpha-negative", dict(alpha=-0.1), ValueError, ["alpha", r"\[0, ?1\]"]),
    ("alpha-above-one", dict(alpha=1.5), ValueError, ["alpha", r"\[0, ?1\]"]),
    ("alpha-nan", dict(alpha=float("nan")), ValueError, ["alpha", r"\[0, ?1\]"]),
    ("jsd-beta-zero", dict(divergence="jsd", beta=0.0), ValueError, ["beta", r"\(0, ?1\)"]),
    ("jsd-beta-one", dict(divergence="jsd", beta=1.0), ValueError, ["beta", r"\(0, ?1\)"]),
    ("skew-fwd-beta-one", dict(divergence="skew_forward_kl", beta=1.0), ValueError,
     ["beta", r"\[0, ?1\)"]),
    ("skew-rev-beta-one", dict(divergence="skew_reverse_kl", beta=1.0), ValueError,
     ["beta", r"\[0, ?1\)"]),
    ("skew-beta-negative", dict(divergence="skew_forward_kl", beta=-0.1), ValueError,
     ["beta", r"\[0, ?1\)"]),
    ("unknown-divergence", dict(divergence="kl"), ValueError, ["divergence", *SIX_NAMES]),
    ("unknown-divergence-dash", dict(divergence="forward-kl"), ValueError,
     ["divergence", *SIX_NAMES]),
    ("labels-float", dict(labels=torch.zeros(2, 3)), TypeError, ["labels", "int|long"]),
    ("labels-shape-seq", dict(labels=torch.zeros(2, 4, dtype=torch.long)), ValueError,
     ["labels", "shape", r"2,\s*3\b"]),
    ("labels-shape-extra-dim", dict(labels=torch.zeros(2, 3, 1, dtype=torch.long)), ValueError,
     ["labels", "shape"]),
    ("labels-id-too-large", dict(labels=torch.tensor([[0, 1, 7], [2, 3, 4]])), ValueError,
     ["labels", rf"\b{VOCAB}\b"]),
    ("labels-id-negative", dict(labels=torch.tensor([[0, 1, -1], [2, 3, 4]])), ValueError,
     ["labels", rf"\b{VOCAB}\b"]),
    ("nan-student", dict(student=_with_nan()), ValueError, ["NaN", "student_logits"]),
    ("nan-teacher", dict(teacher=_with_nan()), ValueError, ["NaN", "teacher_logits"]),
    ("student-not-tensor", dict(student=[[0.0] * VOCAB]), TypeError, ["student_logits", "Tensor"]),
    ("teacher-not-tensor", dict(teacher=np.zeros((2, 3, VOCAB), np.float32)), TypeError,
     ["teacher_logits", "Tensor"]),
    ("labels-not-tensor", dict(labels=[[0, 1, 2], [0, 1, 2]]), TypeError, ["labels", "Tensor"]),
    ("student-integer-dtype", dict(student=torch.zeros(2, 3, VOCAB, dtype=torch.long)), TypeError,
     ["student_logits", "float"]),
]


@pytest.mark.parametrize("kwargs, exc, patterns", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_invalid_input_raises_a_clear_error(kwargs, exc, patterns):
    with pytest.raises(exc) as info:
        _call(**kwargs)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in error message {message!r}"


@pytest.mark.parametrize("temperature", [0.0, -2.0, float("nan"), INF])
def test_temperature_errors_in_the_helpers(temperature):
    z = torch.randn(2, VOCAB)
    for fn in (temperature_softmax, temperature_log_softmax):
        with pytest.raises(ValueError, match="temperature"):
            fn(z, temperature)
    with pytest.raises(ValueError, match="temperature"):
        per_token_divergence(z, z, temperature=temperature)


def test_per_token_divergence_validates_its_inputs():
    z = torch.randn(2, VOCAB)
    with pytest.raises(ValueError) as info:
        per_token_divergence(z, torch.randn(2, VOCAB + 2))
    assert str(VOCAB) in str(info.value) and str(VOCAB + 2) in str(info.value)
    with pytest.raises(ValueError, match="NaN"):
        per_token_divergence(_with_nan((2, VOCAB)), z)
    with pytest.raises(ValueError) as info:
        per_token_divergence(z, z, divergence="kld")
    assert all(name in str(info.value) for name in SIX)
    with pytest.raises(ValueError, match="beta"):
        per_token_divergence(z, z, divergence="jsd", beta=1.0)
    with pytest.raises(TypeError, match="student_logits"):
        per_token_divergence(z.tolist(), z)


@pytest.mark.parametrize("kwargs", [dict(reduction="none"), dict(num_tokens=0),
                                    dict(num_tokens=-3)])
def test_other_invalid_options(kwargs):
    with pytest.raises(ValueError) as info:
        _call(**kwargs)
    assert next(iter(kwargs)) in str(info.value)
