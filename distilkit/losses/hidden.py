"""Hidden-state distillation: the distance between a student layer's output (projected to the
teacher's width) and a teacher layer's output, position by position (TinyBERT, Jiao et al. 2020;
DistilBERT's cosine loss, Sanh et al. 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["HIDDEN_LOSSES", "hidden_state_loss"]

#: Accepted ``KDConfig.hidden_loss`` values.
HIDDEN_LOSSES = ("mse", "cosine")


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, labels: torch.Tensor,
                      loss: str = "mse", ignore_index: int = -100) -> torch.Tensor:
    """The *summed* per-position distance over positions whose label is not ``ignore_index``.

    student_hidden, teacher_hidden: (batch, seq, d) -- the student's already projected to the
    teacher's width; labels: (batch, seq). Per position: ``"mse"`` the mean over the ``d``
    features of the squared difference (so the scale does not grow with the width);
    ``"cosine"`` ``1 - cos(student, teacher)``. The teacher side gets no gradient.
    """
    if loss not in HIDDEN_LOSSES:
        raise ValueError(f"hidden_loss must be one of {', '.join(HIDDEN_LOSSES)}; got {loss!r}")
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"student hidden states {tuple(student_hidden.shape)} and teacher hidden states "
                         f"{tuple(teacher_hidden.shape)} differ in shape (project the student's first)")
    if labels.shape != student_hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the hidden states' positions "
                         f"{tuple(student_hidden.shape[:-1])}")
    s, t = student_hidden.float(), teacher_hidden.detach().float()
    if loss == "mse":
        per = (s - t).pow(2).mean(-1)
    else:
        per = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    return per.masked_fill(labels == ignore_index, 0.0).sum()
