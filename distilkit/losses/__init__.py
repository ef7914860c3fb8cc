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

from .chunked import chunked_distillation_loss, default_chunk_size, linear_distillation_loss
from .distillation import distillation_loss, distillation_loss_terms
from .divergences import (
    DIVERGENCES,
    divergence_from_log_probs,
    per_token_divergence,
    temperature_log_softmax,
    temperature_softmax,
)
from .hidden import HIDDEN_LOSSES, hidden_state_loss
from .topk import TopKTeacher, topk_distillation_loss, topk_divergence
from .uld import aligned_divergence, uld_distance

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
    "default_chunk_size",
    "TopKTeacher",
    "topk_divergence",
    "topk_distillation_loss",
    "HIDDEN_LOSSES",
    "hidden_state_loss",
    "uld_distance",
    "aligned_divergence",
]
