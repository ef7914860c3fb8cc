"""Distillation losses: temperature softmax, divergences between teacher and student
next-token distributions, and the combined soft + hard objective.

Notation used throughout the package and the book (chapter 3):

* ``p = softmax(teacher_logits / T)`` -- the teacher's softened distribution,
* ``q = softmax(student_logits / T)`` -- the student's softened distribution,
* ``T`` -- ``temperature``; ``alpha`` weights the soft term, ``1 - alpha`` the hard term.

All divergences are computed from log-probabilities in at least float32, so they stay
finite for logits of +-1e4 and for vocabulary entries that both models mask with ``-inf``.
The per-token math -- values *and* derivatives -- lives in one place,
:func:`_divergence_block`; :func:`divergence_from_log_probs`, :func:`per_token_divergence`,
:func:`distillation_loss` and :func:`linear_distillation_loss` all call it.

Value checks (NaN or +inf logits, label ids outside the vocabulary) need the host to read
device memory. Every loss entry point takes ``check_values=``: ``True`` (the default) runs
them with a single host synchronisation and raises a clear error; ``False`` skips them, and the
call then performs no host synchronisation at all (what a training loop on a GPU wants).
Shape, type, device and argument checks are free and always run.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "DIVERGENCES",
    "temperature_softmax",
    "temperature_log_softmax",
    "divergence_from_log_probs",
    "per_token_divergence",
    "distillation_loss",
    "distillation_loss_terms",
    "linear_distillation_loss",
    "chunked_distillation_loss",
]

#: Names accepted by ``divergence=``.
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")

#: Elements of one (rows x vocab) float32 work tensor of the divergence code, which works through
#: its inputs this many elements at a time: 2**22 is 16 MiB.
BLOCK_ELEMENTS = 2**22


# ----------------------------------------------------------------------------- checks
def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def _check_unit(name: str, value, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def _check_divergence(divergence: str, beta) -> float:
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"divergence must be one of {', '.join(DIVERGENCES)}; got {divergence!r}"
        )
    if divergence == "jsd":
        return _check_unit("beta (for divergence='jsd')", beta, True, True)
    if divergence.startswith("skew_"):
        return _check_unit(f"beta (for divergence={divergence!r})", beta, False, True)
    return float(beta) if isinstance(beta, Real) else 0.5


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _check_logits(name: str, logits) -> None:
    """Type and shape of a (..., vocab) logits tensor (free: reads no values)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary dimension last, got shape {tuple(logits.shape)}")


def _check_pair(student_logits, teacher_logits) -> None:
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.device != teacher_logits.device:
        raise ValueError(
            f"student_logits is on {student_logits.device} but teacher_logits is on "
            f"{teacher_logits.device}; move both to the same device"
        )
    s, t = student_logits.shape, teacher_logits.shape
    if s[-1] != t[-1]:
        raise ValueError(
            f"student vocab size ({s[-1]}) differs from teacher vocab size ({t[-1]}): "
            "logit-level distillation needs a shared vocabulary (see the FAQ on tokenizer mismatch)"
        )
    if s != t:
        raise ValueError(
            f"student_logits shape {tuple(s)} and teacher_logits shape {tuple(t)} must match"
        )


def _check_labels(labels, leading: tuple, device: torch.device, what: str = "student_logits") -> None:
    """Type, shape and device of ``labels`` (free: reads no values)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of token ids, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"labels must be an integer tensor (torch.long), got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(leading):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal {what} shape without the "
            f"vocabulary dimension, {tuple(leading)}"
        )
    if labels.device != device:
        raise ValueError(f"labels is on {labels.device} but {what} is on {device}; "
                         "labels must be on the same device as the logits")


def _nonfinite_flags(logits: torch.Tensor) -> list[torch.Tensor]:
    """[has NaN, has +inf] as 0-dim bool tensors, from one pass (the maximum propagates NaN) and
    without a host synchronisation."""
    if logits.numel() == 0:
        return [torch.zeros((), dtype=torch.bool, device=logits.device)] * 2
    top = logits.detach().amax()
    return [torch.isnan(top), torch.isposinf(top)]


def _bad_label_flag(labels: torch.Tensor, vocab: int, ignore_index: int) -> torch.Tensor:
    """0-dim bool tensor: some counted label lies outside [0, vocab)."""
    return ((labels != ignore_index) & ((labels < 0) | (labels >= vocab))).any()


def _raise_on_flags(flags: Sequence[torch.Tensor], names: Sequence[str], labels=None, vocab: int = 0,
                    ignore_index: int = -100) -> None:
    """Read all flags with one host synchronisation and raise the first error they show.

    ``flags`` holds [NaN, +inf] per name in ``names``, then optionally the bad-label flag."""
    values = torch.stack(list(flags)).tolist()  # the one host synchronisation
    for i, name in enumerate(names):
        if values[2 * i]:
            raise ValueError(f"{name} contains NaN: check the model's forward pass and learning rate")
        if values[2 * i + 1]:
            raise ValueError(f"{name} contains +inf; only -inf (a masked vocabulary entry) is allowed")
    if labels is not None and values[2 * len(names)]:
        real = labels[labels != ignore_index]
        raise ValueError(
            f"labels must be token ids in [0, {vocab}) or ignore_index={ignore_index}; "
            f"found values in [{int(real.min())}, {int(real.max())}]"
        )


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


# ----------------------------------------------------------------------------- softmax
def temperature_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)`` over the last dimension, in at least float32.

    logits: (..., vocab). Returns a tensor of the same shape.
    """
    temperature = _check_temperature(temperature)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point torch.Tensor")
    return F.log_softmax(_upcast(logits) / temperature, dim=-1)


def temperature_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` over the last dimension (Hinton et al., 2015).

    T = 1 is the model's own distribution; T > 1 softens it towards uniform, T < 1 sharpens it
    towards the arg-max. logits: (..., vocab). Returns probabilities of the same shape.
    """
    return temperature_log_softmax(logits, temperature).exp()


# ----------------------------------------------------------------------------- divergences
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
    absent = ~torch.isfinite(log_a)
    a = log_a.exp()
    log_m = log_b if w == 0 else torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))
    values = grad_a = grad_b = None
    if need_value:
        values = (a * (log_a - log_m)).masked_fill_(absent, 0.0).sum(-1)
    if need_a:
        grad_a = (log_a - log_m).add_(1.0)
        if w > 0:
            grad_a.sub_((log_a - log_m).add_(math.log(w)).exp_())  # w a / m <= 1: no overflow
        grad_a = grad_a.mul_(a).masked_fill_(absent, 0.0)
    if need_b:
        if w == 0:
            grad_b = a.neg_().masked_fill_(absent, 0.0)
        else:
            grad_b = (log_b - log_m).add_(math.log1p(-w)).exp_().mul_(a).neg_().masked_fill_(absent, 0.0)
    return values, grad_a, grad_b


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
    if divergence == "jsd":  # both KLs share m = beta p + (1 - beta) q
        v1, gp1, gq1 = _kl_to_mixture(log_p, log_q, beta, need_p, need_q, v)
        v2, gq2, gp2 = _kl_to_mixture(log_q, log_p, 1.0 - beta, need_q, need_p, v)
        grad_p = gp1.mul_(beta).add_(gp2, alpha=1.0 - beta) if need_p else None
        grad_q = gq1.mul_(beta).add_(gq2, alpha=1.0 - beta) if need_q else None
        return (beta * v1 + (1.0 - beta) * v2) if v else None, grad_p, grad_q
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


def _token_losses(log_p, log_q, keep=None, labels=None, divergence="forward_kl", beta=0.5):
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
    beta = _check_divergence(divergence, beta)
    if teacher_log_probs.shape != student_log_probs.shape:  # broadcast, as elementwise math would
        teacher_log_probs, student_log_probs = torch.broadcast_tensors(teacher_log_probs, student_log_probs)
    return _token_losses(teacher_log_probs, student_log_probs, divergence=divergence, beta=beta)[0]


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in at least float32, without a copy for ``/ T`` at T = 1."""
    logits = _upcast(logits)
    return F.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def _loss_sums(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               labels: Optional[torch.Tensor], *, temperature: float, divergence: str, beta: float,
               ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(soft_sum, hard_sum, keep)`` over the counted positions of (..., vocab) logits.

    Shared by :func:`distillation_loss_terms` and the chunks of :func:`linear_distillation_loss`.
    No host synchronisation and no boolean indexing: positions that do not count are zeroed per
    row, so whatever their logits hold reaches neither the value nor the gradient. At T = 1 the
    hard term reuses the student's log-probabilities instead of a second log-softmax.
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_q = _log_probs(student_logits, temperature)
        log_p = _log_probs(teacher_logits.detach(), temperature)
        keep = safe = None
        if labels is not None:
            keep = labels != ignore_index
            safe = labels.masked_fill(~keep, 0).long()
        if labels is None or temperature == 1.0:
            soft, hard = _token_losses(log_p, log_q, keep, safe, divergence, beta)
            hard_sum = hard.sum()
        else:  # the hard term is the cross-entropy at T = 1
            soft, _ = _token_losses(log_p, log_q, keep, None, divergence, beta)
            hard_sum = F.cross_entropy(_upcast(student_logits).reshape(-1, student_logits.shape[-1]),
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
    _check_pair(student_logits, teacher_logits)
    temperature = _check_temperature(temperature)
    beta = _check_divergence(divergence, beta)
    if check_values:
        _raise_on_flags(_nonfinite_flags(student_logits) + _nonfinite_flags(teacher_logits),
                        ("student_logits", "teacher_logits"))
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_q = _log_probs(student_logits, temperature)
        log_p = _log_probs(teacher_logits.detach(), temperature)
        return _token_losses(log_p, log_q, divergence=divergence, beta=beta)[0]


def distillation_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The *summed* pieces of the distillation loss: ``(soft_sum, hard_sum, num_tokens)``.

    ``soft_sum`` is the divergence summed over counted positions (no T^2), ``hard_sum`` the
    summed cross-entropy of the student (at T = 1) against ``labels`` (0 when ``labels`` is
    None), ``num_tokens`` the number of counted positions (labels != ignore_index, or all
    positions without labels) as a 0-dim tensor. Summed terms let a training loop normalise by
    the token count of a whole accumulated batch, so micro-batching does not change the gradient.
    ``check_values`` as in :func:`distillation_loss`.
    """
    _check_pair(student_logits, teacher_logits)
    temperature = _check_temperature(temperature)
    beta = _check_divergence(divergence, beta)
    if labels is not None:
        _check_labels(labels, student_logits.shape[:-1], student_logits.device)
    if check_values:
        flags = _nonfinite_flags(student_logits) + _nonfinite_flags(teacher_logits)
        if labels is not None:
            flags.append(_bad_label_flag(labels, student_logits.shape[-1], ignore_index))
        _raise_on_flags(flags, ("student_logits", "teacher_logits"), labels,
                        student_logits.shape[-1], ignore_index)
    soft_sum, hard_sum, keep = _loss_sums(student_logits, teacher_logits, labels,
                                          temperature=temperature, divergence=divergence, beta=beta,
                                          ignore_index=ignore_index)
    if keep is None:
        count = torch.full((), student_logits.numel() // student_logits.shape[-1],
                           dtype=torch.int64, device=student_logits.device)
    else:
        count = keep.sum()
    return soft_sum, hard_sum, count


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    t2_scale: bool = True,
    reduction: str = "mean",
    num_tokens: Optional[Union[float, torch.Tensor]] = None,
    check_values: bool = True,
) -> torch.Tensor:
    """Word-level knowledge-distillation loss ``alpha * soft + (1 - alpha) * hard``.

    Args:
        student_logits: (batch, seq, vocab) -- or any (..., vocab) -- raw student scores.
        teacher_logits: same shape as ``student_logits``; treated as constants (detached).
        labels: (batch, seq) integer token ids, ``ignore_index`` at padding. Optional: with
            ``labels=None`` every position counts and the result is the soft term alone.
        temperature: T > 0; both distributions are ``softmax(logits / T)``.
        alpha: weight of the soft (teacher) term, in [0, 1]. alpha = 0 is plain cross-entropy.
        divergence: one of :data:`DIVERGENCES` (see :func:`divergence_from_log_probs`).
        beta: mixture weight of ``jsd`` (0 < beta < 1) and the skew divergences (0 <= beta < 1).
        ignore_index: label value of positions that do not count (padding, prompt tokens).
        t2_scale: multiply the soft term by T^2 so that its gradient keeps its size as T changes.
        reduction: ``"mean"`` -- average over counted tokens (token mean, not batch mean: the
            loss does not grow with sequence length); ``"sum"`` -- the sum over counted tokens.
        num_tokens: with ``reduction="mean"``, divide by this count instead of this batch's own
            (a training loop passes the token count of the whole accumulated batch).
        check_values: raise a clear error for NaN / +inf logits and label ids outside the
            vocabulary (one host synchronisation). ``False`` skips these checks and the call
            then makes no host synchronisation; shape, type and argument checks always run.

    Returns:
        A scalar tensor. A batch with no counted token gives 0 (with a zero gradient), never NaN.

    Memory: besides the two logits tensors it holds about two more of their size (the two
    log-softmaxes) in the forward pass, and one more (the gradient) in the backward pass. For a
    large vocabulary see :func:`linear_distillation_loss`, which never holds them in full.
    """
    temperature = _check_temperature(temperature)
    alpha = _check_unit("alpha", alpha, False, False)
    _check_reduction(reduction)
    soft_sum, hard_sum, count = distillation_loss_terms(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        divergence=divergence,
        beta=beta,
        ignore_index=ignore_index,
        check_values=check_values,
    )
    if t2_scale:
        soft_sum = soft_sum * temperature**2
    total = soft_sum if labels is None else alpha * soft_sum + (1.0 - alpha) * hard_sum
    return _reduce(total, count, reduction, num_tokens, check_values)


def _reduce(total: torch.Tensor, count: torch.Tensor, reduction: str, num_tokens,
            check_values: bool) -> torch.Tensor:
    """``total`` summed (``"sum"``) or divided by ``num_tokens`` / the counted tokens (``"mean"``)."""
    if reduction == "sum":
        return total
    if num_tokens is not None:
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, (Real, torch.Tensor)):
            raise ValueError(f"num_tokens must be a positive count, got {num_tokens!r}")
        if isinstance(num_tokens, torch.Tensor):
            if num_tokens.numel() != 1:
                raise ValueError(f"num_tokens must be a positive count, got a tensor of shape "
                                 f"{tuple(num_tokens.shape)}")
            if check_values and not float(num_tokens) > 0:
                raise ValueError(f"num_tokens must be a positive count, got {float(num_tokens)}")
            return total / num_tokens.reshape(()).to(device=total.device, dtype=total.dtype)
        if not float(num_tokens) > 0:
            raise ValueError(f"num_tokens must be a positive count, got {num_tokens}")
        return total / float(num_tokens)
    return total / count.clamp(min=1).to(total.dtype)


# ----------------------------------------------------------------------------- from hidden states
TeacherInput = Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]


class _LinearKD(torch.autograd.Function):
    """Summed distillation loss of ``hidden @ weight.T + bias`` against a teacher, a chunk of
    rows at a time. The gradients with respect to ``hidden``, ``weight`` and ``bias`` are those
    of the summed loss; they are computed chunk by chunk in the forward pass (autograd through
    :func:`_loss_sums` for the chunk's logits, then the linear layer's chain rule) and stored,
    and ``backward`` scales them by the incoming gradient -- exact, because the loss is a scalar.
    No (rows x vocab) tensor is ever held in full."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, teacher, opts):
        need_h, need_w, need_b = (opts["grad"] and n for n in ctx.needs_input_grad[:3])
        rows, chunk = hidden.shape[0], opts["chunk_size"]
        acc = torch.promote_types(weight.dtype, torch.float32)
        g_hidden = torch.empty_like(hidden) if need_h else None
        g_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        g_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        bad = torch.zeros(4, dtype=torch.bool, device=hidden.device) if opts["check_values"] else None
        for i in range(0, rows, chunk):
            h = hidden[i : i + chunk]
            logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
            t_logits = teacher(i, i + chunk)
            if bad is not None:  # accumulated in place: nothing allocated per chunk outlives it
                bad |= torch.stack(_nonfinite_flags(logits) + _nonfinite_flags(t_logits))
            lab = None if labels is None else labels[i : i + chunk]
            with torch.enable_grad():
                logits.requires_grad_(need_h or need_w or need_b)
                soft, hard, _ = _loss_sums(logits, t_logits, lab, temperature=opts["temperature"],
                                           divergence=opts["divergence"], beta=opts["beta"],
                                           ignore_index=opts["ignore_index"])
                loss = opts["soft_weight"] * soft + opts["hard_weight"] * hard
                if logits.requires_grad:
                    (g_logits,) = torch.autograd.grad(loss, logits)
            total += loss.detach()
            if logits.requires_grad:
                g_logits = g_logits.to(weight.dtype)
                if need_h:
                    torch.mm(g_logits, weight, out=g_hidden[i : i + chunk])
                if need_w:
                    g_weight.addmm_(g_logits.T.to(acc), h.to(acc))
                if need_b:
                    g_bias += g_logits.sum(0).to(acc)
                del g_logits
            del logits, t_logits, soft, hard, loss
        if bad is not None:
            _raise_on_flags(list(bad), ("student logits (student_hidden @ weight.T + bias)",
                                        "teacher_logits"))
        ctx.save_for_backward(g_hidden, None if g_weight is None else g_weight.to(weight.dtype),
                              None if g_bias is None else g_bias.to(bias.dtype))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return tuple(None if g is None else g * grad_out for g in ctx.saved_tensors) + (None,) * 3


def _teacher_rows(teacher: TeacherInput, rows: int, vocab: int, device: torch.device):
    """Validate the teacher argument; return ``f(i, j) -> teacher logits of rows i:j`` (no grad)."""
    if isinstance(teacher, torch.Tensor):
        _check_logits("teacher_logits", teacher)
        if teacher.shape[-1] != vocab:
            raise ValueError(f"student vocab size ({vocab}) differs from teacher vocab size "
                             f"({teacher.shape[-1]}): logit-level distillation needs a shared vocabulary")
        if teacher.numel() // teacher.shape[-1] != rows:
            raise ValueError(f"teacher_logits shape {tuple(teacher.shape)} must have as many positions "
                             f"as student_hidden ({rows})")
        if teacher.device != device:
            raise ValueError(f"teacher_logits is on {teacher.device} but student_hidden is on {device}")
        flat = teacher.detach().reshape(rows, vocab)
        return lambda i, j: flat[i:j]
    if not isinstance(teacher, (tuple, list)) or len(teacher) not in (2, 3):
        raise TypeError("teacher_logits must be a (..., vocab) tensor or a (teacher_hidden, "
                        f"teacher_weight, teacher_bias) triple, got {type(teacher).__name__}")
    t_hidden, t_weight, t_bias = (*teacher, None)[:3]
    _check_matrix("teacher_hidden", t_hidden)
    _check_matrix("teacher_weight", t_weight, dim=2)
    if t_weight.shape[0] != vocab:
        raise ValueError(f"student vocab size ({vocab}) differs from teacher vocab size "
                         f"({t_weight.shape[0]}) (teacher_weight has shape {tuple(t_weight.shape)})")
    if t_hidden.shape[-1] != t_weight.shape[1]:
        raise ValueError(f"teacher_hidden has hidden size {t_hidden.shape[-1]} but teacher_weight "
                         f"expects {t_weight.shape[1]} (shape {tuple(t_weight.shape)})")
    if t_hidden.numel() // t_hidden.shape[-1] != rows:
        raise ValueError(f"teacher_hidden has {t_hidden.numel() // t_hidden.shape[-1]} positions but "
                         f"student_hidden has {rows}")
    _check_bias("teacher_bias", t_bias, vocab)
    for name, t in (("teacher_hidden", t_hidden), ("teacher_weight", t_weight), ("teacher_bias", t_bias)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but student_hidden is on {device}")
    th = t_hidden.detach().reshape(rows, -1)
    tw, tb = t_weight.detach(), None if t_bias is None else t_bias.detach()
    return lambda i, j: th[i:j] @ tw.T if tb is None else torch.addmm(tb, th[i:j], tw.T)


def _check_matrix(name: str, x, dim: Optional[int] = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if (dim is not None and x.dim() != dim) or x.dim() < 2:
        want = f"{dim}-D" if dim else "at least 2-D (..., hidden)"
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")


def _check_bias(name: str, bias, vocab: int) -> None:
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        raise TypeError(f"{name} must be None or a floating-point tensor of shape ({vocab},), got "
                        f"{getattr(bias, 'dtype', type(bias).__name__)}")
    if tuple(bias.shape) != (vocab,):
        raise ValueError(f"{name} must have shape ({vocab},), got {tuple(bias.shape)}")


#: Logits per chunk of :func:`linear_distillation_loss` by default: 2**21 float32 is 8 MiB.
CHUNK_ELEMENTS = 2**21


def default_chunk_size(vocab: int) -> int:
    """Rows per chunk of :func:`linear_distillation_loss` when ``chunk_size=None``: as many as fit
    :data:`CHUNK_ELEMENTS` logits, rounded down to a multiple of 8 (64 at vocab 32k; at least 8).

    Measured on the CPU (``benchmarks/loss_memory.py``, vocab 32k, hidden 512, 4,096 tokens): 64
    rows keep the peak near 0.2 GiB at the time of the plain loss; 32 rows save a few tens of MiB
    and cost about a fifth more time; 256 rows hold 4 times as much per chunk."""
    return max(8, CHUNK_ELEMENTS // max(vocab, 1) // 8 * 8)


def linear_distillation_loss(
    student_hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    teacher_logits: TeacherInput,
    labels: Optional[torch.Tensor] = None,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    t2_scale: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_tokens: Optional[Union[float, torch.Tensor]] = None,
    chunk_size: Optional[int] = None,
    check_values: bool = True,
) -> torch.Tensor:
    """:func:`distillation_loss` of the student logits ``student_hidden @ weight.T + bias``,
    computed from the student's final hidden states and output layer without ever holding the
    (tokens x vocab) logits.

    The value is ``alpha * T^2 * sum_i D(p_i || q_i) + (1 - alpha) * sum_i CE(y_i, q_i^(T=1))``
    over counted positions i (labels != ignore_index), divided by their number for
    ``reduction="mean"`` (or by ``num_tokens``), exactly as in :func:`distillation_loss`; its
    gradients with respect to ``student_hidden``, ``weight`` and ``bias`` are those of
    ``distillation_loss(student_hidden @ weight.T + bias, teacher_logits, labels, ...)``.

    Args:
        student_hidden: (tokens, hidden) or (batch, seq, hidden) -- the student's final hidden
            states (the input of its output layer).
        weight: (vocab, hidden) -- the output layer's weight (an HF ``lm_head.weight``).
        bias: (vocab,) or None (an HF ``lm_head`` has no bias).
        teacher_logits: the teacher's logits, (..., vocab) with the leading shape of
            ``student_hidden``; or a ``(teacher_hidden, teacher_weight, teacher_bias)`` triple,
            shapes (..., d_teacher), (vocab, d_teacher), (vocab,) or None, whose product gives
            them a chunk at a time. The teacher is a constant (no gradient reaches it).
        labels: integer token ids with the leading shape of ``student_hidden``, or None.
        temperature, alpha, divergence, beta, t2_scale, ignore_index, reduction, num_tokens,
            check_values: as in :func:`distillation_loss`.
        chunk_size: positions per chunk; None picks :func:`default_chunk_size` (64 at vocab 32k).

    Memory: a handful of (chunk_size x vocab) float32 tensors, plus one gradient of the size of
    ``weight`` and one of ``student_hidden``. The gradients are computed chunk by chunk during the
    forward pass when autograd will need them (not under ``torch.no_grad()``) and stored; the
    backward pass only scales them. Backward through the result can therefore not be differentiated
    again (no double backward).
    """
    _check_matrix("student_hidden", student_hidden)
    _check_matrix("weight", weight, dim=2)
    vocab, width = weight.shape
    if student_hidden.shape[-1] != width:
        raise ValueError(f"student_hidden has hidden size {student_hidden.shape[-1]} but weight "
                         f"expects {width} (weight has shape {tuple(weight.shape)})")
    _check_bias("bias", bias, vocab)
    device = student_hidden.device
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but student_hidden is on {device}; "
                             "move both to the same device")
    lead = tuple(student_hidden.shape[:-1])
    rows = math.prod(lead)
    teacher = _teacher_rows(teacher_logits, rows, vocab, device)
    if labels is not None:
        _check_labels(labels, lead, device, what="student_hidden")
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (or None for the default), got {chunk_size!r}")
    temperature = _check_temperature(temperature)
    alpha = _check_unit("alpha", alpha, False, False)
    beta = _check_divergence(divergence, beta)
    _check_reduction(reduction)
    if check_values and labels is not None:
        _raise_on_flags([_bad_label_flag(labels, vocab, ignore_index)], (), labels, vocab, ignore_index)
    soft_weight = temperature**2 if t2_scale else 1.0
    if labels is not None:
        soft_weight *= alpha
    opts = dict(chunk_size=chunk_size, temperature=temperature, divergence=divergence, beta=beta,
                ignore_index=ignore_index, soft_weight=soft_weight,
                hard_weight=0.0 if labels is None else 1.0 - alpha, check_values=check_values,
                grad=torch.is_grad_enabled())
    flat_labels = None if labels is None else labels.reshape(rows)
    total = _LinearKD.apply(student_hidden.reshape(rows, width), weight, bias, flat_labels, teacher, opts)
    if labels is None:
        count = torch.full((), rows, dtype=torch.int64, device=device)
    else:
        count = (flat_labels != ignore_index).sum()
    return _reduce(total, count, reduction, num_tokens, check_values)


def chunked_distillation_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    chunk_size: Optional[int] = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    t2_scale: bool = True,
    check_values: bool = True,
) -> torch.Tensor:
    """:func:`distillation_loss` (``reduction="mean"``) computed from final hidden states and
    output-embedding matrices, ``chunk_size`` tokens at a time: peak memory grows with
    ``chunk_size x vocab`` instead of ``tokens x vocab``.

    Args:
        student_hidden: (tokens, d_student) -- flatten (batch, seq) first.
        student_weight: (vocab, d_student) -- the student's output layer; logits = h @ W.T.
        teacher_hidden: (tokens, d_teacher); teacher_weight: (vocab, d_teacher) (no gradient).
        labels: (tokens,) or None.

    The value and the gradients equal those of ``distillation_loss`` on the full logits.
    """
    return linear_distillation_loss(
        student_hidden, student_weight, None, (teacher_hidden, teacher_weight, None), labels,
        temperature=temperature, alpha=alpha, divergence=divergence, beta=beta, t2_scale=t2_scale,
        ignore_index=ignore_index, chunk_size=chunk_size, check_values=check_values)
