"""Temperature softmax and the divergences between teacher and student distributions.

The per-token maths -- values *and* derivatives -- lives in one place, :func:`_divergence_block`;
every loss of the package calls it through :func:`token_losses`."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .checks import (
    DIVERGENCES,
    check_divergence,
    check_logit_pair,
    check_temperature,
    nonfinite_flags,
    raise_on_flags,
    upcast,
)

#: Elements of one (rows x vocab) float32 work tensor of the divergence code, which works through
#: its inputs this many elements at a time: 2**22 is 16 MiB.
BLOCK_ELEMENTS = 2**22

__all__ = ["DIVERGENCES", "temperature_softmax", "temperature_log_softmax", "divergence_from_log_probs",
           "per_token_divergence"]


# ----------------------------------------------------------------------------- softmax
def temperature_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)`` over the last dimension, in at least float32.

    logits: (..., vocab). Returns a tensor of the same shape.
    """
    temperature = check_temperature(temperature)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point torch.Tensor")
    return F.log_softmax(upcast(logits) / temperature, dim=-1)


def temperature_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` over the last dimension (Hinton et al., 2015).

    T = 1 is the model's own distribution; T > 1 softens it towards uniform, T < 1 sharpens it
    towards the arg-max. logits: (..., vocab). Returns probabilities of the same shape.
    """
    return temperature_log_softmax(logits, temperature).exp()


# ----------------------------------------------------------------------------- divergences
#
# Speed: on a CPU a boolean mask costs more than the arithmetic it guards (``a == 0`` and
# ``masked_fill_`` take about as long as five elementwise passes, ``isfinite`` four more), and
# ``logaddexp`` about four. So the terms ``a (log a - log m)`` are formed without masks, where an
# absent entry (a = 0) gives NaN, and one in-place ``nan_to_num_`` turns those NaNs into the 0 of
# 0 log 0 = 0 (infinities are kept: a one-sided -inf makes reverse_kl infinite, its true value).
# JSD's mixture is formed in linear space (see :func:`_log_mixture`). NaN inputs would be hidden
# by ``nan_to_num_``, so a row whose inputs hold a NaN gets a NaN value (from two row sums).
def _finite(x: torch.Tensor) -> torch.Tensor:
    """NaN -> 0 in place (0 log 0 = 0 at absent entries); +-inf kept."""
    return x.nan_to_num_(0.0, math.inf, -math.inf)


def _nan_rows(values: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """``values`` (rows,) with NaN where a row of any input holds a NaN."""
    bad = None
    for x in inputs:
        b = torch.isnan(x.sum(-1))
        bad = b if bad is None else bad.logical_or_(b)
    return values.masked_fill_(bad, math.nan)


def _scaled(g: torch.Tensor, c, scale: Optional[torch.Tensor], out: Optional[torch.Tensor]):
    """``g * c * scale`` (scale: (rows, 1) or None) into ``out`` (or in place), NaN -> 0."""
    factor = c if scale is None else scale * c
    if out is None:
        return _finite(g.mul_(factor))
    return _finite(torch.mul(g, factor, out=out))


def _log_mixture(log_a, log_b, w: float, a=None, b=None) -> torch.Tensor:
    """``log(w a + (1 - w) b)``. With both weights >= 1e-6 and ``a``, ``b`` given, in linear space
    (``lerp``, then ``log``: a third of the time of ``logaddexp``), the mixture floored at the
    smallest normal float (where it is below, ``a`` and ``b`` are below 1e-32 and the entry adds
    below 1e-29); otherwise in log space, where ``w a`` cannot underflow."""
    if a is None or b is None or min(w, 1.0 - w) < 1e-6:
        return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))
    return torch.lerp(b, a, w).clamp_min_(torch.finfo(a.dtype).tiny).log_()


def _kl_to_mixture(log_a, log_b, w: float, need_a: bool, need_b: bool, need_value: bool = True,
                   scale=None, out_a=None, out_b=None):
    """``KL(a || m)`` per row with ``m = w a + (1 - w) b`` (0 <= w < 1; w = 0 is ``KL(a || b)``),
    and its derivatives with respect to ``log a`` and ``log b``.

    log_a, log_b: (rows, vocab). Entries with ``a = 0`` add nothing (0 log 0 = 0), to the value
    or to either derivative::

        d/d log a_v = a_v (log a_v - log m_v + 1) - w a_v^2 / m_v
        d/d log b_v = -(1 - w) a_v b_v / m_v

    The derivatives are multiplied by ``scale`` ((rows, 1), optional) and written to ``out_a`` /
    ``out_b`` when given. Returns ``(values (rows,) or None, d/dlog_a or None, d/dlog_b or None)``.
    """
    values = grad_a = grad_b = None
    if w == 0 and need_b and not (need_a or need_value):  # d/dlog b = -a: 0 where a is
        a = log_a.exp() if out_b is None else torch.exp(log_a, out=out_b)
        return None, None, _scaled(a, -1.0, scale, a)
    a = log_a.exp()
    log_m = log_b if w == 0 else _log_mixture(log_a, log_b, w)
    terms = (log_a - log_m).mul_(a)  # NaN where a = 0
    if need_value:
        values = _nan_rows(_finite(terms.clone() if need_a else terms).sum(-1), log_a, log_b)
    if need_a:
        grad_a = terms.add_(a)
        if w > 0:  # w a^2 / m = a exp(log a - log m + log w); w a / m <= 1: no overflow
            grad_a.sub_((log_a - log_m).add_(math.log(w)).exp_().mul_(a))
        grad_a = _scaled(grad_a, 1.0, scale, out_a)
    if need_b:
        if w > 0:  # (1 - w) a b / m
            a.mul_((log_b - log_m).add_(math.log1p(-w)).exp_())
        grad_b = _scaled(a, -1.0, scale, out_b)
    return values, grad_a, grad_b


def _jsd(log_p, log_q, beta: float, need_p: bool, need_q: bool, need_value: bool, scale=None,
         out_p=None, out_q=None):
    """``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``, per row, and
    its derivatives. The derivatives through ``m`` cancel, so the per-entry terms of the value
    are the derivatives themselves::

        d/d log p_v = beta p_v (log p_v - log m_v),  d/d log q_v = (1 - beta) q_v (log q_v - log m_v)
    """
    p, q = log_p.exp(), log_q.exp()
    log_m = _log_mixture(log_p, log_q, beta, p, q)
    tp = (log_p - log_m).mul_(p) if (need_value or need_p) else None  # NaN where p = 0
    tq = (log_q - log_m).mul_(q) if (need_value or need_q) else None
    values = grad_p = grad_q = None
    if need_value:
        sp = _finite(tp.clone() if need_p else tp).sum(-1)
        sq = _finite(tq.clone() if need_q else tq).sum(-1)
        values = _nan_rows(sp.mul_(beta).add_(sq, alpha=1.0 - beta), log_p, log_q)
    if need_p:
        grad_p = _scaled(tp, beta, scale, out_p)
    if need_q:
        grad_q = _scaled(tq, 1.0 - beta, scale, out_q)
    return values, grad_p, grad_q


def _divergence_block(log_p: torch.Tensor, log_q: torch.Tensor, divergence: str, beta: float,
                      need_p: bool = False, need_q: bool = False, need_value: bool = True,
                      scale: Optional[torch.Tensor] = None, out_p=None, out_q=None):
    """The divergence math, in one place: per-row values of ``divergence`` between ``p`` (the
    teacher) and ``q`` (the student) and, when asked, the derivatives with respect to
    ``log p`` and ``log q``. log_p, log_q: (rows, vocab). Returns ``(values, d/dlog_p, d/dlog_q)``,
    each None when not asked for. The derivatives are multiplied by ``scale`` ((rows, 1), e.g. the
    incoming gradient) and written to ``out_p`` / ``out_q`` when given.
    """
    v = need_value
    if divergence == "forward_kl":
        return _kl_to_mixture(log_p, log_q, 0.0, need_p, need_q, v, scale, out_p, out_q)
    if divergence == "reverse_kl":
        values, grad_q, grad_p = _kl_to_mixture(log_q, log_p, 0.0, need_q, need_p, v, scale, out_q, out_p)
        return values, grad_p, grad_q
    if divergence == "skew_forward_kl":
        return _kl_to_mixture(log_p, log_q, beta, need_p, need_q, v, scale, out_p, out_q)
    if divergence == "skew_reverse_kl":
        values, grad_q, grad_p = _kl_to_mixture(log_q, log_p, beta, need_q, need_p, v, scale, out_q, out_p)
        return values, grad_p, grad_q
    if divergence == "jsd":
        return _jsd(log_p, log_q, beta, need_p, need_q, v, scale, out_p, out_q)
    # tvd: 1/2 sum |p - q|; d/dlog q_v = -1/2 q_v sign(p_v - q_v), d/dlog p_v = 1/2 p_v sign(p_v - q_v)
    p, q = log_p.exp(), log_q.exp()
    diff = p - q
    values = 0.5 * diff.abs().sum(-1) if v else None
    sign = diff.sign_() if (need_p or need_q) else None
    grad_p = _scaled(p.mul_(sign), 0.5, scale, out_p) if need_p else None
    grad_q = _scaled(q.mul_(sign), -0.5, scale, out_q) if need_q else None
    return values, grad_p, grad_q


def _block_rows(vocab: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(vocab, 1))


class _TokenLosses(torch.autograd.Function):
    """Per-row soft divergence and hard negative log-likelihood from log-probabilities.

    Inputs: log_p, log_q (rows, vocab); keep (rows,) bool or None -- rows that count;
    labels (rows,) long or None -- token ids (any value at rows that do not count).
    Outputs: soft (rows,) -- the divergence, 0 at rows that do not count; hard (rows,) --
    ``-log_q[label]``, 0 at rows that do not count or without labels.

    The work goes :data:`BLOCK_ELEMENTS` at a time, so besides the inputs and the gradient it
    returns it holds no (rows x vocab) tensor. The gradient is the derivative of
    :func:`_divergence_block` (exact; checked with ``gradcheck`` in the tests). A row that does
    not count gets the incoming gradient 0, and whatever it holds (-inf, inf, NaN) becomes an
    exact 0 in the final ``nan_to_num_`` of the block, without a full-size mask.
    """

    @staticmethod
    def forward(ctx, log_p, log_q, keep, labels, divergence, beta):
        rows, vocab = log_q.shape
        step = _block_rows(vocab)
        if step >= rows:
            soft = _divergence_block(log_p, log_q, divergence, beta)[0]
        else:
            soft = torch.empty(rows, dtype=log_q.dtype, device=log_q.device)
            for i in range(0, rows, step):
                soft[i : i + step] = _divergence_block(log_p[i : i + step], log_q[i : i + step],
                                                       divergence, beta)[0]
        if labels is None:
            hard = torch.zeros_like(soft)
        else:
            hard = log_q.gather(-1, labels.unsqueeze(-1)).squeeze(-1).neg_()
        if keep is not None:  # whatever a row that does not count holds, it adds nothing
            soft.masked_fill_(~keep, 0.0)
            hard.masked_fill_(~keep, 0.0)
        ctx.save_for_backward(log_p, log_q, keep, labels)
        ctx.divergence, ctx.beta = divergence, beta
        return soft, hard

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_soft, grad_hard):
        log_p, log_q, keep, labels = ctx.saved_tensors
        need_p, need_q = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_p or need_q):
            return None, None, None, None, None, None
        rows, vocab = log_q.shape
        if keep is not None:  # rows that do not count: incoming gradient 0 (row-sized work)
            grad_soft = grad_soft.masked_fill(~keep, 0.0)
            grad_hard = grad_hard.masked_fill(~keep, 0.0)
        scale = grad_soft.to(log_q.dtype).unsqueeze(-1)
        step = _block_rows(vocab)
        if step >= rows:
            _, grad_p, grad_q = _divergence_block(log_p, log_q, ctx.divergence, ctx.beta, need_p,
                                                  need_q, need_value=False, scale=scale)
        else:
            grad_p = torch.empty_like(log_p) if need_p else None
            grad_q = torch.empty_like(log_q) if need_q else None
            for i in range(0, rows, step):
                sl = slice(i, i + step)
                _divergence_block(log_p[sl], log_q[sl], ctx.divergence, ctx.beta, need_p, need_q,
                                  need_value=False, scale=scale[sl],
                                  out_p=None if grad_p is None else grad_p[sl],
                                  out_q=None if grad_q is None else grad_q[sl])
        if need_q and labels is not None:  # d(-log_q[label]) / dlog_q = -onehot(label)
            grad_q.scatter_add_(-1, labels.unsqueeze(-1), grad_hard.neg().unsqueeze(-1).to(grad_q.dtype))
        return grad_p, grad_q, None, None, None, None


def token_losses(log_p, log_q, keep=None, labels=None, divergence="forward_kl", beta=0.5):
    """(..., vocab) log-probabilities -> per-position ``(soft, hard)``, each of shape (...)."""
    if log_p.dtype != log_q.dtype:
        dtype = torch.promote_types(log_p.dtype, log_q.dtype)
        log_p, log_q = log_p.to(dtype), log_q.to(dtype)
    lead, vocab = log_q.shape[:-1], log_q.shape[-1]
    flat = lambda x: None if x is None else x.reshape(-1)  # noqa: E731
    soft, hard = _TokenLosses.apply(log_p.reshape(-1, vocab), log_q.reshape(-1, vocab), flat(keep),
                                    flat(labels), divergence, beta)
    return soft.reshape(lead), hard.reshape(lead)


def divergence_from_log_probs(
    teacher_log_probs: torch.Tensor,
    student_log_probs: torch.Tensor,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence between two distributions given as log-probabilities.

    teacher_log_probs, student_log_probs: (..., vocab) -- ``log p`` and ``log q``.
    Returns (...,). With ``m_beta(a, b) = beta * a + (1 - beta) * b``:

    * ``forward_kl``      KL(p || q) = sum p (log p - log q)          (mode covering; Hinton)
    * ``reverse_kl``      KL(q || p) = sum q (log q - log p)          (mode seeking; MiniLLM)
    * ``jsd``             beta KL(p || m) + (1 - beta) KL(q || m), m = m_beta(p, q), 0 < beta < 1 (GKD)
    * ``tvd``             1/2 sum |p - q|
    * ``skew_forward_kl`` KL(p || m_beta(p, q)), 0 <= beta < 1 (DistiLLM)
    * ``skew_reverse_kl`` KL(q || m_beta(q, p)), 0 <= beta < 1 (DistiLLM)

    Entries that are ``-inf`` in both inputs (a vocabulary both models mask) contribute 0 to
    the value and to the gradient. An entry that only the teacher masks makes ``reverse_kl``
    infinite, which is the true value of that divergence. Gradients reach both inputs; they are
    computed in closed form from the same code as the values (no host synchronisation).
    """
    beta = check_divergence(divergence, beta)
    if teacher_log_probs.shape != student_log_probs.shape:  # broadcast, as elementwise math would
        teacher_log_probs, student_log_probs = torch.broadcast_tensors(teacher_log_probs, student_log_probs)
    return token_losses(teacher_log_probs, student_log_probs, divergence=divergence, beta=beta)[0]


def log_probs_at(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in at least float32, without a copy for ``/ T`` at T = 1."""
    logits = upcast(logits)
    return F.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def loss_sums(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               labels: Optional[torch.Tensor], *, temperature: float, divergence: str, beta: float,
               ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(soft_sum, hard_sum, keep)`` over the counted positions of (..., vocab) logits.

    Shared by :func:`distillation_loss_terms` and the chunks of :func:`linear_distillation_loss`.
    No host synchronisation and no boolean indexing: positions that do not count are zeroed per
    row, so whatever their logits hold reaches neither the value nor the gradient. At T = 1 the
    hard term reuses the student's log-probabilities instead of a second log-softmax.
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_q = log_probs_at(student_logits, temperature)
        log_p = log_probs_at(teacher_logits.detach(), temperature)
        keep = safe = None
        if labels is not None:
            keep = labels != ignore_index
            safe = labels.masked_fill(~keep, 0).long()
        if labels is None or temperature == 1.0:
            soft, hard = token_losses(log_p, log_q, keep, safe, divergence, beta)
            hard_sum = hard.sum()
        else:  # the hard term is the cross-entropy at T = 1
            soft, _ = token_losses(log_p, log_q, keep, None, divergence, beta)
            hard_sum = F.cross_entropy(upcast(student_logits).reshape(-1, student_logits.shape[-1]),
                                       labels.reshape(-1).long(), ignore_index=ignore_index,
                                       reduction="sum")
    soft_sum = soft.sum()
    return soft_sum, hard_sum.to(soft_sum.dtype), keep


def per_token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    check_values: bool = True,
) -> torch.Tensor:
    """Divergence between ``p = softmax(teacher_logits / T)`` and ``q = softmax(student_logits / T)``
    at every position.

    student_logits, teacher_logits: (..., vocab), same shape. Returns (...,) in float32 (float64
    if the inputs are float64). No gradient flows into ``teacher_logits``; the temperature
    factor T^2 is *not* applied here (see :func:`distillation_loss`). ``check_values=False``
    skips the NaN / +inf checks and with them every host synchronisation.
    """
    check_logit_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    beta = check_divergence(divergence, beta)
    if check_values:
        raise_on_flags(nonfinite_flags(student_logits) + nonfinite_flags(teacher_logits),
                        ("student_logits", "teacher_logits"))
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_q = log_probs_at(student_logits, temperature)
        log_p = log_probs_at(teacher_logits.detach(), temperature)
        return token_losses(log_p, log_q, divergence=divergence, beta=beta)[0]

