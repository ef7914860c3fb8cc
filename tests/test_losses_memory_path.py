"""Tests for the memory-bounded loss (:func:`distilkit.linear_distillation_loss`, and
``chunked_distillation_loss`` on top of it) and for the host-synchronisation contract of every
loss entry point.

1. value and gradients (w.r.t. hidden states, output weight, bias) equal those of
   ``distillation_loss`` on the materialised logits, for every divergence, temperature, alpha,
   reduction, mask, with and without bias, with the teacher as logits or as a hidden triple;
2. ``gradcheck`` in float64: the gradients computed chunk by chunk in the forward pass and scaled
   in the backward pass are exact, also for a non-unit incoming gradient and a reused output;
3. clear errors for bad arguments, naming the argument;
4. ``check_values=False`` makes no host synchronisation (counted at the dispatcher), and
   ``check_values=True`` makes one and still raises the clear errors.
"""

from __future__ import annotations

import contextlib
import itertools
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import distilkit as dk
from distilkit import (
    DIVERGENCES,
    chunked_distillation_loss,
    distillation_loss,
    distillation_loss_terms,
    linear_distillation_loss,
    per_token_divergence,
)

F64 = torch.float64


def _case(tokens=11, hidden=4, vocab=7, t_hidden=5, seed=0, mask=True, lead=None):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(tokens, hidden, generator=g, dtype=F64)
    w = torch.randn(vocab, hidden, generator=g, dtype=F64)
    b = torch.randn(vocab, generator=g, dtype=F64)
    th = torch.randn(tokens, t_hidden, generator=g, dtype=F64)
    tw = torch.randn(vocab, t_hidden, generator=g, dtype=F64)
    tb = torch.randn(vocab, generator=g, dtype=F64)
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    if mask:
        labels[[1, 4, 5]] = -100
    if lead is not None:
        hs, th, labels = hs.reshape(*lead, hidden), th.reshape(*lead, t_hidden), labels.reshape(lead)
    return hs, w, b, th, tw, tb, labels


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


# =============================================================================
# 1. equal to distillation_loss on the materialised logits
# =============================================================================
SETTINGS = [dict(temperature=1.0, alpha=0.5), dict(temperature=2.5, alpha=0.3),
            dict(temperature=0.7, alpha=1.0), dict(temperature=1.0, alpha=0.0)]


@pytest.mark.parametrize("teacher_as", ["logits", "triple"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_equals_the_plain_loss_in_value_and_gradients(divergence, reduction, with_bias, teacher_as):
    hs, w, b, th, tw, tb, labels = _case(seed=DIVERGENCES.index(divergence))
    b = b if with_bias else None
    tb = tb if with_bias else None
    teacher_logits = th @ tw.T + (0 if tb is None else tb)
    teacher = teacher_logits if teacher_as == "logits" else (th, tw, tb)
    for opts, lab, chunk in itertools.product(SETTINGS, [labels, None], [1, 4]):
        kw = dict(opts, divergence=divergence, beta=0.3, reduction=reduction)
        params = [x.clone().requires_grad_() for x in (hs, w)] + [None if b is None else b.clone().requires_grad_()]
        h1, w1, b1 = params
        logits = h1 @ w1.T + (0 if b1 is None else b1)
        want = distillation_loss(logits, teacher_logits, lab, **kw)
        got = linear_distillation_loss(h1, w1, b1, teacher, lab, chunk_size=chunk, **kw)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
        for g_got, g_want in zip(_grads(got, params), _grads(want, params)):
            torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-13)


def test_batch_seq_shapes_and_custom_ignore_index():
    hs, w, b, th, tw, tb, labels = _case(tokens=12, lead=(3, 4), seed=3)
    labels = labels.masked_fill(labels == -100, 5)  # 5 is now an ordinary id...
    labels[0, :2] = -1  # ...and -1 marks the positions that do not count
    h1, w1 = hs.clone().requires_grad_(), w.clone().requires_grad_()
    teacher_logits = th @ tw.T + tb
    assert teacher_logits.shape == (3, 4, 7)
    kw = dict(temperature=2.0, alpha=0.4, ignore_index=-1, divergence="jsd", beta=0.6)
    want = distillation_loss(h1 @ w1.T, teacher_logits, labels, **kw)
    grads_want = _grads(want, [h1, w1])
    for teacher in (teacher_logits, (th, tw, tb)):
        got = linear_distillation_loss(h1, w1, None, teacher, labels, chunk_size=5, **kw)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
        for g_got, g_want in zip(_grads(got, [h1, w1]), grads_want):
            assert g_got.shape == g_want.shape
            torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-13)


def test_hf_style_lm_head_without_bias():
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(6, 9, bias=False).double()
    teacher_head = torch.nn.Linear(8, 9, bias=False).double()
    hidden = torch.randn(2, 5, 6, dtype=F64, requires_grad=True)
    t_hidden = torch.randn(2, 5, 8, dtype=F64)
    labels = torch.randint(0, 9, (2, 5))
    want = distillation_loss(lm_head(hidden), teacher_head(t_hidden), labels, temperature=2.0)
    want.backward()
    g_want = (hidden.grad.clone(), lm_head.weight.grad.clone())
    hidden.grad = lm_head.weight.grad = None
    got = linear_distillation_loss(hidden, lm_head.weight, lm_head.bias,
                                   (t_hidden, teacher_head.weight, teacher_head.bias), labels,
                                   temperature=2.0, chunk_size=3)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(hidden.grad, g_want[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(lm_head.weight.grad, g_want[1], rtol=1e-10, atol=1e-13)
    assert teacher_head.weight.grad is None


def test_num_tokens_and_all_padding():
    hs, w, b, th, tw, tb, labels = _case(seed=5)
    h1 = hs.clone().requires_grad_()
    want = distillation_loss(h1 @ w.T + b, th @ tw.T, labels, num_tokens=20)
    got = linear_distillation_loss(h1, w, b, (th, tw), labels, num_tokens=torch.tensor(20))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    padding = torch.full_like(labels, -100)
    for divergence in DIVERGENCES:
        loss = linear_distillation_loss(h1, w, b, (th, tw), padding, divergence=divergence)
        (g,) = torch.autograd.grad(loss, h1)
        assert loss.item() == 0.0 and (g == 0).all()


def test_default_chunk_is_smaller_than_the_batch_and_exact():
    assert dk.losses.default_chunk_size(32000) < 4096
    hs, w, b, th, tw, tb, labels = _case(tokens=300, hidden=3, vocab=20000, t_hidden=3, seed=6,
                                         mask=False)
    assert dk.losses.default_chunk_size(20000) < 300  # several chunks with the default
    h1 = hs.clone().requires_grad_()
    want = distillation_loss(h1 @ w.T, th @ tw.T, labels)
    got = linear_distillation_loss(h1, w, None, (th, tw, None), labels)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(*[torch.autograd.grad(x, h1)[0] for x in (got, want)], rtol=1e-10,
                               atol=1e-13)


def test_half_precision_hidden_states():
    hs, w, b, th, tw, tb, labels = _case(seed=7)
    h16, w16 = hs.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()
    got = linear_distillation_loss(h16, w16, None, (th.bfloat16(), tw.bfloat16()), labels, chunk_size=4)
    assert got.dtype == torch.float32
    want = distillation_loss(h16 @ w16.T, th.bfloat16() @ tw.bfloat16().T, labels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g_got, g_want in zip(_grads(got, [h16, w16]), _grads(want, [h16, w16])):
        assert g_got.dtype == torch.bfloat16
        torch.testing.assert_close(g_got.float(), g_want.float(), rtol=2e-2, atol=2e-3)


def test_chunked_distillation_loss_keeps_its_signature():
    hs, w, b, th, tw, tb, labels = _case(seed=8)
    h1 = hs.clone().requires_grad_()
    want = distillation_loss(h1 @ w.T, th @ tw.T, labels, divergence="tvd", temperature=3.0)
    got = chunked_distillation_loss(h1, w, th, tw, labels, chunk_size=2, divergence="tvd",
                                    temperature=3.0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(*[torch.autograd.grad(x, h1)[0] for x in (got, want)], rtol=1e-10,
                               atol=1e-13)


# =============================================================================
# 2. autograd semantics: gradcheck, scaled and reused outputs, no_grad
# =============================================================================
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradcheck(divergence):
    hs, w, b, th, tw, tb, labels = _case(tokens=7, hidden=3, vocab=5, t_hidden=4, seed=9)
    inputs = tuple(x.clone().requires_grad_() for x in (hs, w, b))
    kw = dict(temperature=2.0, alpha=0.3, divergence=divergence, beta=0.3, chunk_size=3)

    def fn(h, weight, bias):
        return linear_distillation_loss(h, weight, bias, (th, tw, tb), labels, **kw)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    # through a non-linear use of the output and a second use of it in the same graph
    assert torch.autograd.gradcheck(lambda *x: fn(*x).exp() * 3.0 + fn(*x) ** 2, inputs, eps=1e-6,
                                    atol=1e-7, rtol=1e-5)


def test_retained_graph_accumulates_like_autograd():
    hs, w, b, th, tw, tb, labels = _case(seed=10)
    h1 = hs.clone().requires_grad_()
    loss = linear_distillation_loss(h1, w, b, (th, tw, tb), labels, chunk_size=4)
    (2.0 * loss).backward(retain_graph=True)
    first = h1.grad.clone()
    (-0.5 * loss).backward()
    torch.testing.assert_close(h1.grad, first * 0.75, rtol=1e-12, atol=1e-14)


def test_only_the_inputs_that_need_it_get_a_gradient_and_no_grad_gives_the_value():
    hs, w, b, th, tw, tb, labels = _case(seed=11)
    th1, tw1 = th.clone().requires_grad_(), tw.clone().requires_grad_()
    w1 = w.clone().requires_grad_()
    loss = linear_distillation_loss(hs, w1, b, (th1, tw1, None), labels, chunk_size=4)
    loss.backward()
    assert w1.grad is not None and th1.grad is None and tw1.grad is None
    with torch.no_grad():
        value = linear_distillation_loss(hs, w1, b, (th1, tw1, None), labels, chunk_size=4)
    assert not value.requires_grad
    torch.testing.assert_close(value, loss.detach(), rtol=0, atol=0)


# =============================================================================
# 3. errors name the argument
# =============================================================================
def _bad(**change):
    hs, w, b, th, tw, tb, labels = _case(seed=12)
    kw = dict(student_hidden=hs, weight=w, bias=b, teacher_logits=(th, tw, tb), labels=labels)
    kw.update(change)
    return linear_distillation_loss(**kw)


BAD = [
    ("chunk-zero", dict(chunk_size=0), ValueError, ["chunk_size", "positive"]),
    ("chunk-negative", dict(chunk_size=-4), ValueError, ["chunk_size", "-4"]),
    ("chunk-float", dict(chunk_size=2.5), ValueError, ["chunk_size", "2.5"]),
    ("hidden-size", dict(weight=torch.randn(7, 3, dtype=F64)), ValueError,
     ["student_hidden", "hidden size 4", "weight", r"\(7, 3\)"]),
    ("weight-1d", dict(weight=torch.randn(7, dtype=F64)), ValueError, ["weight", "2-D"]),
    ("bias-shape", dict(bias=torch.randn(6, dtype=F64)), ValueError, ["bias", r"\(7,\)", r"\(6,\)"]),
    ("teacher-logits-positions", dict(teacher_logits=torch.randn(10, 7, dtype=F64)), ValueError,
     ["teacher_logits", r"\(10, 7\)", "11"]),
    ("teacher-logits-vocab", dict(teacher_logits=torch.randn(11, 8, dtype=F64)), ValueError,
     ["vocab", r"\b7\b", r"\b8\b"]),
    ("teacher-weight-vocab", dict(teacher_logits=(torch.randn(11, 5), torch.randn(9, 5), None)),
     ValueError, ["teacher vocab", r"\b9\b", "teacher_weight"]),
    ("teacher-hidden-size", dict(teacher_logits=(torch.randn(11, 4), torch.randn(7, 5), None)),
     ValueError, ["teacher_hidden", "teacher_weight", r"\b4\b", r"\b5\b"]),
    ("teacher-positions", dict(teacher_logits=(torch.randn(12, 5), torch.randn(7, 5), None)),
     ValueError, ["teacher_hidden", "12", "student_hidden", "11"]),
    ("teacher-type", dict(teacher_logits="logits"), TypeError, ["teacher_logits", "triple"]),
    ("labels-shape", dict(labels=torch.zeros(10, dtype=torch.long)), ValueError,
     ["labels shape", r"\(10,\)", "student_hidden", r"\(11,\)"]),
    ("labels-float", dict(labels=torch.zeros(11)), TypeError, ["labels", "integer"]),
    ("label-out-of-vocab", dict(labels=torch.full((11,), 7)), ValueError, ["labels", r"\[0, 7\)"]),
    ("hidden-int", dict(student_hidden=torch.zeros(11, 4, dtype=torch.long)), TypeError,
     ["student_hidden", "floating-point"]),
    ("nan-hidden", dict(student_hidden=torch.full((11, 4), float("nan"), dtype=F64)), ValueError,
     ["student logits", "NaN"]),
    ("inf-teacher", dict(teacher_logits=torch.full((11, 7), float("inf"), dtype=F64)), ValueError,
     ["teacher_logits", r"\+inf"]),
    ("alpha", dict(alpha=2.0), ValueError, ["alpha", r"\[0, 1\]"]),
    ("reduction", dict(reduction="none"), ValueError, ["reduction", "'mean'", "'sum'"]),
]


@pytest.mark.parametrize("change, exc, patterns", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_arguments_raise_clear_errors(change, exc, patterns):
    with pytest.raises(exc) as info:
        _bad(**change)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))


# =============================================================================
# 4. host synchronisations
# =============================================================================
# Operations that make the host wait for the device (what CUDA's sync debug mode reports): reading
# a value (item, bool, int, float -> _local_scalar_dense), data-dependent output shapes (nonzero,
# boolean-mask indexing, masked_select, unique) and value comparisons returning a Python bool.
_SYNC_OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select",
             "aten::equal", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim",
             "aten::repeat_interleave"}


class _SyncCounter(TorchDispatchMode):
    """Counts host synchronisations at the dispatcher (forward and backward), plus ``tolist`` /
    ``numpy``, which read CPU memory without dispatching."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))
        if name in _SYNC_OPS or bool_index:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_syncs():
    counter = _SyncCounter()
    originals = {n: getattr(torch.Tensor, n) for n in ("tolist", "numpy")}

    def wrap(n):
        def reader(self, *a, **k):
            counter.ops.append(f"Tensor.{n}")
            return originals[n](self, *a, **k)
        return reader

    try:
        for n in originals:
            setattr(torch.Tensor, n, wrap(n))
        with counter:
            yield counter.ops
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)


def test_the_counter_sees_every_kind_of_sync():
    x = torch.randn(5, 3)
    probes = [lambda: x.sum().item(), lambda: bool(torch.isfinite(x).all()), lambda: x[x > 0],
              lambda: int(x.argmax()), lambda: (x > 0).nonzero(), lambda: x.max().tolist(),
              lambda: float(x.sum()), lambda: torch.equal(x, x), lambda: x.masked_select(x > 0),
              lambda: x.__setitem__(x > 0, 0.0)]
    for probe in probes:
        with count_syncs() as ops:
            probe()
        assert ops, probe


def _loss_calls(check_values):
    g = torch.Generator().manual_seed(13)
    s = torch.randn(2, 3, 6, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 6, generator=g)
    labels = torch.randint(0, 6, (2, 3), generator=g)
    labels[0, 0] = -100
    h = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    w = torch.randn(6, 4, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    th, tw = torch.randn(2, 3, 5, generator=g), torch.randn(6, 5, generator=g)
    kw = dict(check_values=check_values)
    for divergence, temperature in itertools.product(DIVERGENCES, (1.0, 2.0)):
        opts = dict(kw, divergence=divergence, temperature=temperature)
        yield f"distillation_loss {divergence} T={temperature}", lambda o=opts: distillation_loss(s, t, labels, **o)
        yield f"linear {divergence} T={temperature}", lambda o=opts: linear_distillation_loss(
            h, w, None, t, labels, chunk_size=4, **o)
        yield f"linear-triple {divergence} T={temperature}", lambda o=opts: linear_distillation_loss(
            h, w, b, (th, tw, None), labels, chunk_size=4, **o)
    yield "no labels", lambda: distillation_loss(s, t, **kw)
    yield "sum", lambda: distillation_loss(s, t, labels, reduction="sum", **kw)
    yield "num_tokens tensor", lambda: distillation_loss(s, t, labels, num_tokens=torch.tensor(9), **kw)
    yield "terms", lambda: sum(distillation_loss_terms(s, t, labels, **kw)[:2])
    yield "per token", lambda: per_token_divergence(s, t, **kw).sum()
    yield "chunked", lambda: chunked_distillation_loss(h.reshape(6, 4), w, th.reshape(6, 5), tw,
                                                       labels.reshape(6), chunk_size=4, **kw)


@pytest.mark.parametrize("check_values", [False, True])
def test_host_synchronisations_per_call(check_values):
    for name, call in _loss_calls(check_values):
        with count_syncs() as ops:
            loss = call()
            loss.backward()
        if check_values:  # one read of all value checks (+1: labels before the chunks, num_tokens)
            limit = 2 if name.startswith(("linear", "chunked", "num_tokens")) else 1
            assert 1 <= len(ops) <= limit, (name, ops)
        else:
            assert ops == [], (name, ops)


def test_value_checks_are_skipped_only_on_request():
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    s[0, 1] = float("nan")
    bad_labels = torch.tensor([1, 9])
    with pytest.raises(ValueError, match="student_logits contains NaN"):
        distillation_loss(s, t)
    with pytest.raises(ValueError, match=r"labels must be token ids in \[0, 5\)"):
        distillation_loss(t, t, bad_labels)
    assert torch.isnan(distillation_loss(s, t, check_values=False))  # garbage in, no check
    assert torch.isfinite(distillation_loss(t, t, torch.tensor([1, 4]), check_values=False))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_closed_form_divergence_gradients_reach_both_inputs_exactly(divergence):
    """The per-token block gives values and derivatives from one piece of code; gradcheck both
    derivatives (teacher and student log-probabilities, broadcast teacher) in float64."""
    g = torch.Generator().manual_seed(14)
    log_p = torch.log_softmax(torch.randn(6, generator=g, dtype=F64), -1).requires_grad_()
    log_q = torch.log_softmax(torch.randn(4, 6, generator=g, dtype=F64), -1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: dk.divergence_from_log_probs(a, b, divergence, 0.3), (log_p, log_q),
        eps=1e-6, atol=1e-8, rtol=1e-6)
