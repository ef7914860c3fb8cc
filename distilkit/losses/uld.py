"""Losses between the next-token distributions of models with *different vocabularies*
(cross-tokenizer distillation; the positions come from :mod:`distilkit.tokenalign`).

* :func:`uld_distance` -- the Universal Logit Distillation distance (Boizard et al., 2024):
  the optimal-transport (Wasserstein-1) distance between the two distributions when every
  token of one vocabulary is equally far from every token of the other reduces, in one
  dimension, to comparing the *sorted* probability vectors: both are sorted in decreasing
  order, the shorter is padded with zeros to the longer's length, and the distance is the sum
  of the absolute differences. It ignores *which* token has which probability -- only the
  shape of the distribution (how confident, how spread) is transferred.
* :func:`aligned_divergence` -- where the two models predict the same text after the same
  text, the teacher's distribution moved onto the student's vocabulary
  (:class:`distilkit.tokenalign.VocabMap`) compared with the student's by an ordinary
  divergence (``forward_kl`` by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_temperature
from .divergences import divergence_from_log_probs

__all__ = ["uld_distance", "aligned_divergence"]


def uld_distance(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Per-position ULD distance ``sum_k |sort(q)_k - sort(p)_k|``: student_probs (..., V_s),
    teacher_probs (..., V_t), both sorted in decreasing order and zero-padded to
    ``max(V_s, V_t)``; returns (...,), in [0, 2]. Gradients reach ``student_probs``."""
    if student_probs.shape[:-1] != teacher_probs.shape[:-1]:
        raise ValueError(f"student and teacher distributions need the same leading shape, got "
                         f"{tuple(student_probs.shape)} and {tuple(teacher_probs.shape)}")
    # Only the k = min(V_s, V_t) largest entries of each meet non-zero partners: beyond them the
    # longer vector is compared with padding zeros, which adds its remaining mass. So the top-k
    # of each (no full sort of the larger vocabulary) plus the mass outside it is the same sum.
    p = teacher_probs.detach()
    k = min(student_probs.shape[-1], p.shape[-1])
    q_top = torch.topk(student_probs, k, dim=-1, sorted=True).values
    p_top = torch.topk(p, k, dim=-1, sorted=True).values
    rest = (student_probs.sum(-1) - q_top.sum(-1)) + (p.sum(-1) - p_top.sum(-1))
    return (q_top - p_top).abs().sum(-1) + rest


def aligned_divergence(student_logits: torch.Tensor, target_probs: torch.Tensor, *, temperature: float = 1.0,
                       divergence: str = "forward_kl", beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence between ``target_probs`` (..., V_s) -- the teacher's distribution
    at temperature T already moved onto the student's vocabulary -- and softmax(student / T);
    returns (...,) (no T^2: the caller scales). A target entry of 0 is ``log 0 = -inf``."""
    temperature = check_temperature(temperature)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = target_probs.detach().float().log()
    return divergence_from_log_probs(log_p, log_q, divergence=divergence, beta=beta)
