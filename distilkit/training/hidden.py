"""Hidden-state KD: :class:`HiddenStateTargets` -- word-level KD plus the distance between
mapped student and teacher layers, through a learned projection where the widths differ."""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..adapters import ModelAdapter
from ..losses import hidden_state_loss
from ..vocab import VocabAlignment
from .config import KDConfig
from .targets import TeacherLogits, kd_loss

__all__ = ["HiddenStateTargets", "HiddenTeacher", "default_layer_map"]


class HiddenTeacher(NamedTuple):
    """What :class:`HiddenStateTargets` hands the loss: the teacher's logits and the outputs of
    its mapped layers (one per ``layer_map`` pair)."""

    logits: torch.Tensor
    hidden: List[torch.Tensor]


def default_layer_map(student_layers: int, teacher_layers: int) -> List[Tuple[int, int]]:
    """Student layer ``i`` of ``S`` -> teacher layer ``floor((i + 1) * T / S + 1/2) - 1`` of ``T``:
    evenly spaced, the last student layer on the last teacher layer (0-based)."""
    return [(i, min(teacher_layers, max(1, math.floor((i + 1) * teacher_layers / student_layers + 0.5))) - 1)
            for i in range(student_layers)]


class HiddenStateTargets(TeacherLogits):
    """Word-level KD (the teacher's logits, as :class:`~distilkit.training.TeacherLogits`) plus
    ``kd.hidden_weight`` times the hidden-state loss (``kd.hidden_loss``) between student and
    teacher layers (``kd.layer_map``; see :class:`~distilkit.training.KDConfig`), averaged over
    the mapped pairs, summed over the positions whose label counts.

    Both models must say how many layers they have and how wide they are
    (:attr:`ModelAdapter.num_layers`, :attr:`ModelAdapter.hidden_size`) and expose their layer
    outputs (:meth:`ModelAdapter.logits_and_hidden_states`): distilkit's ``TransformerLM`` and
    Hugging Face decoder-only models. Where the widths differ, each pair gets a learned
    ``nn.Linear(student width, teacher width)``; the projections are this object's ``learned``
    module: the loop trains them with the student, and they are not part of the student (not
    saved with it). Made before the first step (:meth:`check`), from torch's global RNG, which
    ``dk.train`` seeds with ``TrainConfig.seed`` first.
    """

    def __init__(self, teacher: Union[nn.Module, ModelAdapter], kd: Optional[KDConfig] = None, *,
                 student_tokenizer=None, teacher_tokenizer=None):
        super().__init__(teacher, kd, student_tokenizer=student_tokenizer, teacher_tokenizer=teacher_tokenizer)
        if not self.kd.hidden_weight > 0:
            raise ValueError("HiddenStateTargets needs KDConfig.hidden_weight > 0 (0 is plain TeacherLogits)")
        self.pairs: Optional[List[Tuple[int, int]]] = None

    def check(self, student: ModelAdapter) -> Optional[VocabAlignment]:
        """The vocabulary check of word-level KD, then the layer map against both models' layer
        counts, and the projections (made once, kept across calls with the same shapes)."""
        alignment = super().check(student)
        sizes = {"student": (student.num_layers, student.hidden_size),
                 "teacher": (self.adapter.num_layers, self.adapter.hidden_size)}
        for who, (n, d) in sizes.items():
            if not n or not d:
                raise TypeError(f"hidden-state KD: the {who} ({type(student.model if who == 'student' else self.teacher).__name__}) "
                                "does not say how many layers it has and how wide they are (a distilkit "
                                "TransformerLM or a Hugging Face decoder-only model does)")
        (s_layers, s_width), (t_layers, t_width) = sizes["student"], sizes["teacher"]
        pairs = self.kd.layer_map or default_layer_map(s_layers, t_layers)
        for s, t in pairs:
            if s >= s_layers:
                raise ValueError(f"KDConfig.layer_map pair ({s}, {t}): the student has {s_layers} layers "
                                 f"(0 .. {s_layers - 1})")
            if t >= t_layers:
                raise ValueError(f"KDConfig.layer_map pair ({s}, {t}): the teacher has {t_layers} layers "
                                 f"(0 .. {t_layers - 1})")
        self.pairs = [tuple(p) for p in pairs]
        shape = (len(self.pairs), s_width, t_width)
        if self.learned is None or getattr(self, "_shape", None) != shape:
            self.learned = nn.ModuleList(nn.Linear(s_width, t_width) if s_width != t_width else nn.Identity()
                                         for _ in self.pairs)
            self._shape = shape
        return alignment

    @torch.no_grad()
    def __call__(self, batch, student):
        self.teacher.eval()
        logits, hidden = self.adapter.logits_and_hidden_states(batch)
        return batch, HiddenTeacher(logits, [hidden[t] for _, t in self._pairs()])

    def _pairs(self) -> Sequence[Tuple[int, int]]:
        if self.pairs is None:
            raise RuntimeError("HiddenStateTargets.check(student) must run before the first step")
        return self.pairs

    def student_output(self, student: ModelAdapter, batch, teacher_out):
        """``(logits, [student layer s for each pair])`` from one forward pass."""
        logits, hidden = student.logits_and_hidden_states(batch)
        return logits, [hidden[s] for s, _ in self._pairs()]

    def hidden_loss_sum(self, student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                        labels: torch.Tensor) -> torch.Tensor:
        """The hidden-state term alone (summed over counted positions, averaged over the pairs,
        not yet weighted)."""
        terms = [hidden_state_loss(proj(s), t, labels, self.kd.hidden_loss)
                 for proj, s, t in zip(self.learned, student_hidden, teacher_hidden)]
        return torch.stack(terms).sum() / len(terms)

    def loss_sum(self, student_out, teacher_out, labels, check_values=False, alignment=None):
        logits, student_hidden = student_out
        base = kd_loss(logits, teacher_out.logits, labels, self.kd, check_values=check_values, alignment=alignment)
        return base + self.kd.hidden_weight * self.hidden_loss_sum(student_hidden, teacher_out.hidden, labels)
