"""Distillation losses: temperature softmax, divergences between teacher and student
next-token distributions, and the combined soft + hard objective.

Notation used throughout the package and the book (chapter 3):

* ``p = softmax(teacher_logits / T)`` -- the teacher's softened distribution,
* ``q = softmax(student_logits / T)`` -- the student's softened distribution,
* ``T`` -- ``temperature``; ``alpha`` weights the soft term, ``1 - alpha`` the hard term.

All divergences are computed from log-probabilities in at least float32, so they stay
finite for logits of +-1e4 and for vocabulary entries that both models mask with ``-inf``.
The per-token math lives in :func:`divergence_from_log_probs`; every other function calls it.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "DIVERGENCES",
    "temperature_softmax",
    "temperature_log_softmax",
    "divergence_from_log_probs",
    "per_token_divergence",
    "distillation_loss",
    "distillation_loss_terms",
    "chunked_distillation_loss",
]

#: Names accepted by ``divergence=``.
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")


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


def _check_logits(name: str, logits, values: bool = True) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary dimension last, got shape {tuple(logits.shape)}")
    if values:
        _check_logit_values(name, logits)


def _check_logit_values(name: str, logits: torch.Tensor) -> None:
    if torch.isnan(logits).any():
        raise ValueError(f"{name} contains NaN: check the model's forward pass and learning rate")
    if torch.isposinf(logits).any():
        raise ValueError(f"{name} contains +inf; only -inf (a masked vocabulary entry) is allowed")


def _check_pair(student_logits, teacher_logits) -> None:
    _check_logits("student_logits", student_logits, values=False)
    _check_logits("teacher_logits", teacher_logits, values=False)
    if student_logits.device != teacher_logits.device:  # before any check that reads values
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
    _check_logit_values("student_logits", student_logits)
    _check_logit_values("teacher_logits", teacher_logits)


def _check_labels(labels, student_logits: torch.Tensor, ignore_index: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of token ids, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"labels must be an integer tensor (torch.long), got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(student_logits.shape[:-1]):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal student_logits shape without the "
            f"vocabulary dimension, {tuple(student_logits.shape[:-1])}"
        )
    if labels.device != student_logits.device:
        raise ValueError(f"labels is on {labels.device} but student_logits is on {student_logits.device}; "
                         "labels must be on the same device as the logits")
    real = labels[labels != ignore_index]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= student_logits.shape[-1]):
        raise ValueError(
            f"labels must be token ids in [0, {student_logits.shape[-1]}) or ignore_index="
            f"{ignore_index}; found values in [{int(real.min())}, {int(real.max())}]"
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
def _kl(log_a: torch.Tensor, log_b: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """sum_v a_v (log a_v - log b_v) over entries with a_v > 0 (0 log 0 = 0)."""
    keep = keep & torch.isfinite(log_a)
    la = torch.where(keep, log_a, torch.zeros_like(log_a))
    lb = torch.where(keep, log_b, torch.zeros_like(log_b))
    terms = torch.where(keep, la.exp() * (la - lb), torch.zeros_like(la))
    return terms.sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), computed in log space."""
    wa = math.log(weight_a) if weight_a > 0 else -math.inf
    wb = math.log1p(-weight_a) if weight_a < 1 else -math.inf
    return torch.logaddexp(log_a + wa, log_b + wb)


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
    infinite, which is the true value of that divergence.
    """
    beta = _check_divergence(divergence, beta)
    log_p, log_q = teacher_log_probs, student_log_probs
    shared = torch.isneginf(log_p) & torch.isneginf(log_q)
    keep = ~shared
    if shared.any():  # make the shared -inf entries inert so no NaN reaches the gradient
        log_p = torch.where(shared, torch.zeros_like(log_p), log_p)
        log_q = torch.where(shared, torch.zeros_like(log_q), log_q)
    if divergence == "forward_kl":
        return _kl(log_p, log_q, keep)
    if divergence == "reverse_kl":
        return _kl(log_q, log_p, keep)
    if divergence == "tvd":
        diff = torch.where(keep, log_p.exp() - log_q.exp(), torch.zeros_like(log_p))
        return 0.5 * diff.abs().sum(-1)
    if divergence == "jsd":
        log_m = _log_mix(log_p, log_q, beta)
        return beta * _kl(log_p, log_m, keep) + (1.0 - beta) * _kl(log_q, log_m, keep)
    if divergence == "skew_forward_kl":
        return _kl(log_p, _log_mix(log_p, log_q, beta), keep)
    # skew_reverse_kl
    return _kl(log_q, _log_mix(log_q, log_p, beta), keep)


def per_token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """Divergence between ``p = softmax(teacher_logits / T)`` and ``q = softmax(student_logits / T)``
    at every position.

    student_logits, teacher_logits: (..., vocab), same shape. Returns (...,) in float32 (float64
    if the inputs are float64). No gradient flows into ``teacher_logits``; the temperature
    factor T^2 is *not* applied here (see :func:`distillation_loss`).
    """
    _check_pair(student_logits, teacher_logits)
    temperature = _check_temperature(temperature)
    _check_divergence(divergence, beta)
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_q = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)
        log_p = F.log_softmax(_upcast(teacher_logits.detach()) / temperature, dim=-1)
        if log_p.dtype != log_q.dtype:
            dtype = torch.promote_types(log_p.dtype, log_q.dtype)
            log_p, log_q = log_p.to(dtype), log_q.to(dtype)
        return divergence_from_log_probs(log_p, log_q, divergence, beta)


def distillation_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The *summed* pieces of the distillation loss: ``(soft_sum, hard_sum, num_tokens)``.

    ``soft_sum`` is the divergence summed over counted positions (no T^2), ``hard_sum`` the
    summed cross-entropy of the student (at T = 1) against ``labels`` (0 when ``labels`` is
    None), ``num_tokens`` the number of counted positions (labels != ignore_index, or all
    positions without labels). Summed terms let a training loop normalise by the token count of
    a whole accumulated batch, so micro-batching does not change the gradient.
    """
    _check_pair(student_logits, teacher_logits)
    if labels is None:
        divs = per_token_divergence(
            student_logits, teacher_logits, temperature=temperature, divergence=divergence, beta=beta
        )
        num_tokens = torch.tensor(divs.numel(), device=divs.device)
        return divs.sum(), torch.zeros((), dtype=divs.dtype, device=divs.device), num_tokens
    _check_labels(labels, student_logits, ignore_index)
    mask = labels != ignore_index
    # only counted positions enter the divergence: whatever the logits hold at padding (even
    # an infinite divergence) can then reach neither the value nor the gradient
    soft_sum = per_token_divergence(
        student_logits[mask], teacher_logits[mask], temperature=temperature, divergence=divergence,
        beta=beta,
    ).sum()
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        hard_sum = F.cross_entropy(
            _upcast(student_logits).reshape(-1, student_logits.shape[-1]),
            labels.reshape(-1).long(),
            ignore_index=ignore_index,
            reduction="sum",
        )
    return soft_sum, hard_sum.to(soft_sum.dtype), mask.sum()


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
    num_tokens: Optional[float] = None,
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

    Returns:
        A scalar tensor. A batch with no counted token gives 0 (with a zero gradient), never NaN.
    """
    temperature = _check_temperature(temperature)
    alpha = _check_unit("alpha", alpha, False, False)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    soft_sum, hard_sum, count = distillation_loss_terms(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        divergence=divergence,
        beta=beta,
        ignore_index=ignore_index,
    )
    if t2_scale:
        soft_sum = soft_sum * temperature**2
    total = soft_sum if labels is None else alpha * soft_sum + (1.0 - alpha) * hard_sum
    if reduction == "sum":
        return total
    if num_tokens is not None:
        if not (isinstance(num_tokens, (Real, torch.Tensor)) and float(num_tokens) > 0):
            raise ValueError(f"num_tokens must be a positive count, got {num_tokens}")
        return total / float(num_tokens)
    return total / count.clamp(min=1).to(total.dtype)


# ----------------------------------------------------------------------------- chunked loss
class _ChunkedKD(torch.autograd.Function):
    """Distillation loss from final hidden states and output-layer weights, a chunk of tokens
    at a time. The gradients w.r.t. the student's hidden states and weights are computed chunk
    by chunk in the forward pass, so no (tokens x vocab) tensor is ever held in full."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, t_hidden, t_weight, labels, opts):
        chunk, count = opts["chunk_size"], opts["num_tokens"]
        g_hidden = torch.zeros_like(s_hidden)
        g_weight = torch.zeros_like(s_weight)
        total = torch.zeros((), dtype=torch.promote_types(s_hidden.dtype, torch.float32),
                            device=s_hidden.device)
        for i in range(0, s_hidden.shape[0], chunk):
            h = s_hidden[i : i + chunk].detach().requires_grad_(True)
            w = s_weight.detach().requires_grad_(True)
            with torch.enable_grad():
                s_logits = h @ w.T
                with torch.no_grad():
                    t_logits = t_hidden[i : i + chunk] @ t_weight.T
                lab = None if labels is None else labels[i : i + chunk]
                soft, hard, _ = distillation_loss_terms(
                    s_logits, t_logits, lab, temperature=opts["temperature"],
                    divergence=opts["divergence"], beta=opts["beta"], ignore_index=opts["ignore_index"])
                scale = opts["temperature"] ** 2 if opts["t2_scale"] else 1.0
                loss = soft * scale if lab is None else opts["alpha"] * soft * scale + (1 - opts["alpha"]) * hard
                loss = loss / count
                gh, gw = torch.autograd.grad(loss, (h, w))
            g_hidden[i : i + chunk] = gh
            g_weight += gw
            total = total + loss.detach()
        ctx.save_for_backward(g_hidden, g_weight)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        g_hidden, g_weight = ctx.saved_tensors
        return g_hidden * grad_out, g_weight * grad_out, None, None, None, None


def chunked_distillation_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    t2_scale: bool = True,
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
    for name, t in [("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden),
                    ("student_weight", student_weight), ("teacher_weight", teacher_weight)]:
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating-point tensor, got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(f"student_hidden has {student_hidden.shape[0]} tokens but teacher_hidden has "
                         f"{teacher_hidden.shape[0]}")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"student vocab size ({student_weight.shape[0]}) differs from teacher vocab "
                         f"size ({teacher_weight.shape[0]})")
    if student_hidden.shape[1] != student_weight.shape[1] or teacher_hidden.shape[1] != teacher_weight.shape[1]:
        raise ValueError("hidden sizes must match the output weights' second dimension")
    devices = {t.device for t in (student_hidden, student_weight, teacher_hidden, teacher_weight)}
    if isinstance(labels, torch.Tensor):
        devices.add(labels.device)
    if len(devices) > 1:
        raise ValueError("student_hidden, student_weight, teacher_hidden, teacher_weight and labels "
                         f"must be on one device, got {sorted(str(d) for d in devices)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    temperature = _check_temperature(temperature)
    alpha = _check_unit("alpha", alpha, False, False)
    beta = _check_divergence(divergence, beta)
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape != student_hidden.shape[:1]:
            raise ValueError(f"labels must be a tensor of shape ({student_hidden.shape[0]},)")
        count = int((labels != ignore_index).sum())
    else:
        count = student_hidden.shape[0]
    if count == 0:
        return (student_hidden.sum() + student_weight.sum()) * 0.0
    opts = dict(chunk_size=chunk_size, temperature=temperature, alpha=alpha, divergence=divergence,
                beta=beta, ignore_index=ignore_index, t2_scale=t2_scale, num_tokens=count)
    return _ChunkedKD.apply(student_hidden, student_weight, teacher_hidden.detach(),
                            teacher_weight.detach(), labels, opts)
