"""The distillation loss against a top-k teacher (a cache of its k largest log-probabilities).

How the tail enters the divergence (the "rest bucket")
------------------------------------------------------
Let ``S`` be the teacher's top-k token set at a position, ``p = softmax(teacher / T)`` and
``q = softmax(student / T)``. Both distributions are coarsened onto ``k + 1`` outcomes: the
``k`` tokens of ``S`` and one bucket ``R`` for everything else::

    p~ = (p_s for s in S, p_R = 1 - sum_{s in S} p_s)
    q~ = (q_s for s in S, q_R = 1 - sum_{s in S} q_s)

and every divergence of :func:`~distilkit.losses.divergence_from_log_probs` is taken between
``p~`` and ``q~``; for forward KL::

    KL(p~ || q~) = sum_{s in S} p_s log(p_s / q_s) + p_R log(p_R / q_R).

The student's tail mass ``q_R`` is computed exactly as a log-sum-exp of its log-probabilities
outside ``S`` (never as ``1 - sum``), and the teacher's ``log p_R`` is stored the same way.
By the data-processing inequality the coarsened divergence never exceeds the full one, and the
two are equal when ``S`` is the whole vocabulary (``k = vocab``: ``p_R = q_R = 0`` and the
bucket contributes ``0 log 0 = 0``). Unlike renormalising over ``S``, this keeps the gradient
that pushes the student's mass *off* tokens the teacher considers unlikely. The hard term is
the student's ordinary cross-entropy against the labels, as in
:func:`distilkit.losses.distillation_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_divergence, check_unit, upcast
from .divergences import divergence_from_log_probs

__all__ = ["TopKTeacher", "topk_divergence", "topk_distillation_loss"]


@dataclass
class TopKTeacher:
    """The teacher's side of a batch, read from a cache.

    log_probs: (batch, seq, k) float32 -- ``log p_s`` at temperature T for the top-k tokens;
    indices: (batch, seq, k) long -- their token ids;
    tail: (batch, seq) float32 -- ``log p_R``, the log mass outside the top k (``-inf`` if none).
    Values at positions whose label is the ignore index (-100) are meaningless.
    """

    log_probs: torch.Tensor
    indices: torch.Tensor
    tail: torch.Tensor
    temperature: float

    def to(self, device) -> "TopKTeacher":
        return TopKTeacher(self.log_probs.to(device), self.indices.to(device), self.tail.to(device),
                           self.temperature)


def _coarsen(student_log_q: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N, V) student log-probs -> (N, k + 1): the top-k entries and the exact log tail mass."""
    top = student_log_q.gather(-1, indices)
    rest = student_log_q.scatter(-1, indices, float("-inf"))
    return torch.cat([top, torch.logsumexp(rest, dim=-1, keepdim=True)], dim=-1)


def _teacher_buckets(log_probs: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """(N, k), (N,) -> (N, k + 1), renormalised so the buckets sum to one in float32
    (a float16 cache rounds the stored values)."""
    log_p = torch.cat([upcast(log_probs), upcast(tail).to(upcast(log_probs).dtype).unsqueeze(-1)],
                      dim=-1)
    return log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)


def topk_divergence(
    student_logits: torch.Tensor,
    teacher: TopKTeacher,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence between the coarsened teacher and student distributions.

    student_logits: (N, vocab); teacher fields flattened to (N, k), (N, k), (N,).
    Returns (N,). See the module docstring for the math.
    """
    beta = check_divergence(divergence, beta)
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_q = F.log_softmax(upcast(student_logits) / teacher.temperature, dim=-1)
        log_q = _coarsen(log_q, teacher.indices.long())
        log_p = _teacher_buckets(teacher.log_probs, teacher.tail).to(log_q.dtype)
        return divergence_from_log_probs(log_p, log_q, divergence, beta)


def topk_distillation_loss(
    student_logits: torch.Tensor,
    teacher: TopKTeacher,
    labels: torch.Tensor,
    *,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    t2_scale: bool = True,
    reduction: str = "sum",
    ignore_index: int = -100,
) -> torch.Tensor:
    """``alpha * T^2 * D(p~ || q~) + (1 - alpha) * CE(labels, q)`` from a top-k teacher.

    student_logits: (batch, seq, vocab); teacher: a :class:`TopKTeacher` with (batch, seq, k)
    fields; labels: (batch, seq) with ``ignore_index`` at positions that do not count.
    ``reduction="sum"`` sums over counted positions, ``"mean"`` divides by their number. With
    ``k = vocab`` this equals :func:`distilkit.losses.distillation_loss` on the full logits.
    """
    alpha = check_unit("alpha", alpha, False, False)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if student_logits.shape[:-1] != labels.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and labels "
                         f"{tuple(labels.shape)} must agree on (batch, seq)")
    if teacher.indices.shape[:-1] != labels.shape:
        raise ValueError(f"cached teacher rows {tuple(teacher.indices.shape)} do not line up with "
                         f"labels {tuple(labels.shape)}")
    mask = labels != ignore_index
    flat = TopKTeacher(teacher.log_probs[mask], teacher.indices[mask], teacher.tail[mask],
                       teacher.temperature)
    soft = topk_divergence(student_logits[mask], flat, divergence=divergence, beta=beta).sum()
    if t2_scale:
        soft = soft * teacher.temperature ** 2
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        hard = F.cross_entropy(upcast(student_logits).reshape(-1, student_logits.shape[-1]),
                               labels.reshape(-1).long(), ignore_index=ignore_index, reduction="sum")
    total = alpha * soft + (1.0 - alpha) * hard
    return total if reduction == "sum" else total / mask.sum().clamp(min=1)


