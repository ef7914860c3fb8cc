"""The combined objective: ``alpha * T^2 * divergence + (1 - alpha) * cross-entropy``."""

from __future__ import annotations

from numbers import Real
from typing import Optional, Union

import torch

from .checks import (
    bad_label_flag,
    check_divergence,
    check_labels,
    check_logit_pair,
    check_reduction,
    check_temperature,
    check_unit,
    nonfinite_flags,
    raise_on_flags,
)
from .divergences import loss_sums

__all__ = ["distillation_loss", "distillation_loss_terms"]


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
    check_logit_pair(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    beta = check_divergence(divergence, beta)
    if labels is not None:
        check_labels(labels, student_logits.shape[:-1], student_logits.device)
    if check_values:
        flags = nonfinite_flags(student_logits) + nonfinite_flags(teacher_logits)
        if labels is not None:
            flags.append(bad_label_flag(labels, student_logits.shape[-1], ignore_index))
        raise_on_flags(flags, ("student_logits", "teacher_logits"), labels,
                        student_logits.shape[-1], ignore_index)
    soft_sum, hard_sum, keep = loss_sums(student_logits, teacher_logits, labels,
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
    temperature = check_temperature(temperature)
    alpha = check_unit("alpha", alpha, False, False)
    check_reduction(reduction)
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
    return reduce_total(total, count, reduction, num_tokens, check_values)


def reduce_total(total: torch.Tensor, count: torch.Tensor, reduction: str, num_tokens,
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


