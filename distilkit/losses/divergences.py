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
def _times_present(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a * x``, in place on ``x``, with 0 where ``a == 0`` (0 log 0 = 0: ``x`` may be -inf or
    NaN there). NaN in ``a`` propagates. Two passes (no ``isfinite``, which costs four)."""
    return x.mul_(a).masked_fill_(a == 0, 0.0)


def _kl_to_mixture(log_a: torch.Tensor, log_b: torch.Tensor, w: float, need_a: bool, need_b: bool,
                   need_value: bool = True):
    """``KL(a || m)`` per row with ``m = w a + (1 - w) b`` (0 <= w < 1; w = 0 is ``KL(a || b)``),
    and its derivatives with respect to ``log a`` and ``log b``.

    log_a, log_b: (rows, vocab). Entries with ``a = 0`` add nothing (0 log 0 = 0), to the value
    or to either derivative. With ``log m = logaddexp(log a + log w, log b + log(1 - w))``::

        d/d log a_v = a_v (log a_v - log m_v + 1) - w a_v^2 / m_v
        d/d log b_v = -(1 - w) a_v b_v / m_v

    Returns ``(values (rows,) or None, d/dlog_a or None, d/dlog_b or None)``.
    """
    a = log_a.exp()
    log_m = log_b if w == 0 else torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))
    values = grad_a = grad_b = None
    if need_value or need_a:
        diff = log_a - log_m
        if need_a:
            grad_a = diff + 1.0
            if w > 0:
                grad_a.sub_((diff + math.log(w)).exp_())  # w a / m <= 1: no overflow
            grad_a = _times_present(a, grad_a)
        if need_value:
            values = _times_present(a, diff).sum(-1)
    if need_b:
        if w == 0:  # -a is already 0 where a is
            grad_b = a.neg_()
        else:
            grad_b = _times_present(a, (log_b - log_m).add_(math.log1p(-w)).exp_()).neg_()
    return values, grad_a, grad_b


def _jsd(log_p: torch.Tensor, log_q: torch.Tensor, beta: float, need_p: bool, need_q: bool,
         need_value: bool):
    """``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``, per row, and
    its derivatives. The derivatives through ``m`` cancel, so the per-entry terms of the value
    are the derivatives themselves::

        d/d log p_v = beta p_v (log p_v - log m_v),  d/d log q_v = (1 - beta) q_v (log q_v - log m_v)
    """
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    tp = _times_present(log_p.exp(), log_p - log_m) if (need_value or need_p) else None
    tq = _times_present(log_q.exp(), log_q - log_m) if (need_value or need_q) else None
    values = beta * tp.sum(-1) + (1.0 - beta) * tq.sum(-1) if need_value else None
    return values, tp.mul_(beta) if need_p else None, tq.mul_(1.0 - beta) if need_q else None


def _divergence_block(log_p: torch.Tensor, log_q: torch.Tensor, divergence: str, beta: float,
                      need_p: bool = False, need_q: bool = False, need_value: bool = True):
    """The divergence math, in one place: per-row values of ``divergence`` between ``p`` (the
    teacher) and ``q`` (the student) and, when asked, the derivatives with respect to
    ``log p`` and ``log q``. log_p, log_q: (rows, vocab). Returns ``(values, d/dlog_p, d/dlog_q)``,
    each None when not asked for.
    """
    v = need_value
    if divergence == "forward_kl":
        return _kl_to_mixture(log_p, log_q, 0.0, need_p, need_q, v)
    if divergence == "reverse_kl":
        values, grad_q, grad_p = _kl_to_mixture(log_q, log_p, 0.0, need_q, need_p, v)
        return values, grad_p, grad_q
    if divergence == "skew_forward_kl":
        return _kl_to_mixture(log_p, log_q, beta, need_p, need_q, v)
    if divergence == "skew_reverse_kl":
        values, grad_q, grad_p = _kl_to_mixture(log_q, log_p, beta, need_q, need_p, v)
        return values, grad_p, grad_q
    if divergence == "jsd":
        return _jsd(log_p, log_q, beta, need_p, need_q, v)
    # tvd: 1/2 sum |p - q|; d/dlog q_v = -1/2 q_v sign(p_v - q_v), d/dlog p_v = 1/2 p_v sign(p_v - q_v)
    p, q = log_p.exp(), log_q.exp()
    diff = p - q
    values = 0.5 * diff.abs().sum(-1) if v else None
    sign = diff.sign_() if (need_p or need_q) else None
    grad_p = p.mul_(sign).mul_(0.5) if need_p else None
    grad_q = q.mul_(sign).mul_(-0.5) if need_q else None
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
    :func:`_divergence_block` (exact; checked with ``gradcheck`` in the tests).
    """

    @staticmethod
    def forward(ctx, log_p, log_q, keep, labels, divergence, beta):
        rows, vocab = log_q.shape
        soft = torch.empty(rows, dtype=log_q.dtype, device=log_q.device)
        step = _block_rows(vocab)
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
        grad_p = torch.empty_like(log_p) if need_p else None
        grad_q = torch.empty_like(log_q) if need_q else None
        step = _block_rows(vocab)
        for i in range(0, rows, step):
            _, gp, gq = _divergence_block(log_p[i : i + step], log_q[i : i + step], ctx.divergence,
                                          ctx.beta, need_p, need_q, need_value=False)
            scale = grad_soft[i : i + step].unsqueeze(-1)
            if need_p:
                torch.mul(gp, scale, out=grad_p[i : i + step])
            if need_q:
                torch.mul(gq, scale, out=grad_q[i : i + step])
        if need_q and labels is not None:  # d(-log_q[label]) / dlog_q = -onehot(label)
            grad_q.scatter_add_(-1, labels.unsqueeze(-1), grad_hard.neg().unsqueeze(-1))
        if keep is not None:
            for g in (grad_p, grad_q):
                if g is not None:
                    g.masked_fill_(~keep.unsqueeze(-1), 0.0)
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

