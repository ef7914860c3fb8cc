"""Cross-tokenizer KD: :class:`CrossTokenizerTargets` -- a decoder-only teacher whose tokenizer
differs from the student's, trained from *texts* that each model tokenizes itself.

Word-level KD compares two next-token distributions column by column, which needs one
vocabulary. With two tokenizers, the same text becomes two token sequences of different
lengths over two vocabularies, so two things must be decided: which teacher position a
student position is compared with, and how two distributions over different vocabularies are
compared. ``KDConfig.cross_tokenizer`` picks one of two answers:

``"uld"`` -- Universal Logit Distillation (Boizard et al., 2024). Student position ``i`` is
    compared with teacher position ``i`` (matched in order; the longer sequence's extra
    positions get no KD term), by :func:`~distilkit.losses.uld_distance`: the L1 distance
    between the two *sorted* probability vectors (zero-padded to one length). No token is
    matched to a token: the student learns how peaked or spread the teacher's prediction is,
    not which token it prefers -- and position ``i`` of two tokenizations is in general not the
    same place in the text.

``"align"`` -- positions aligned by the characters their tokens cover
    (:func:`~distilkit.tokenalign.align_positions`). Where the student's next token has exactly
    the span of one teacher token (same text after the same text), the teacher's distribution
    is moved onto the student's vocabulary by token text (:class:`~distilkit.tokenalign.VocabMap`:
    same text, else the student token the teacher token begins with; mass with no counterpart
    dropped and the rest renormalised) and compared with the student's by ``kd.divergence``
    (times T^2 when ``kd.t2_scale``). Elsewhere (merges, splits, unknown characters) the
    student position gets the ULD distance to the teacher position whose next token covers the
    first character of its next token; where no teacher token covers it, no KD term.

Either way the loss of a student position is ``(1 - alpha) * cross-entropy + alpha * KD term``,
summed over the student's counted positions (the loop divides by their number). For
``(prompt, completion)`` pairs only the completion's positions count (those whose next token
starts at or after the prompt's last character).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import ModelAdapter, adapt
from ..data import IGNORE_INDEX
from ..losses import aligned_divergence, uld_distance
from ..tokenalign import (
    ALIGNED,
    NONE,
    PAIRED,
    VocabMap,
    align_positions,
    encode_with_spans,
    token_texts,
    writes_whitespace,
)
from ..vocab import VocabAlignment
from .config import KDConfig
from .targets import Targets

__all__ = ["CrossTokenizerTargets", "CrossBatch", "CrossTeacher", "text_of"]


def text_of(example: Any, i: int) -> Tuple[str, int]:
    """An example as ``(text, prompt_length)``: a string (everything counts) or a ``(prompt,
    completion)`` pair of strings (only the completion counts)."""
    if isinstance(example, str):
        return example, 0
    if isinstance(example, (tuple, list)) and len(example) == 2 and all(isinstance(x, str) for x in example):
        return example[0] + example[1], len(example[0])
    raise TypeError(f"examples[{i}] must be a string or a (prompt, completion) pair of strings for "
                    f"cross-tokenizer KD, got {type(example).__name__}")


@dataclass
class _Example:
    student_ids: List[int]
    teacher_ids: List[int]
    kinds: List[int]  # per student position: NONE / ALIGNED / PAIRED
    teacher_pos: List[int]
    counted: List[bool]


@dataclass
class CrossBatch:
    """A student batch, the teacher's batch of the same texts, and per student position the kind
    of comparison and the teacher position it is compared with."""

    student: Any
    teacher: Any
    kinds: torch.Tensor  # (batch, student_seq) long
    teacher_pos: torch.Tensor  # (batch, student_seq) long, 0 where kinds == NONE

    @property
    def labels(self) -> torch.Tensor:
        """The student's labels (what the loop counts; an empty rank slice fills them)."""
        return self.student.labels

    def to(self, device, non_blocking: bool = False):
        return CrossBatch(self.student.to(device), self.teacher.to(device),
                          self.kinds.to(device, non_blocking=non_blocking),
                          self.teacher_pos.to(device, non_blocking=non_blocking))


class CrossTeacher(NamedTuple):
    """What :class:`CrossTokenizerTargets` hands the loss."""

    logits: torch.Tensor  # the teacher's (batch, teacher_seq, teacher_vocab)
    kinds: torch.Tensor
    teacher_pos: torch.Tensor


class CrossTokenizerTargets(Targets):
    """KD from a decoder-only teacher with another tokenizer (see the module docstring for what
    ``"uld"`` and ``"align"`` compare). The training examples are texts (strings, or
    ``(prompt, completion)`` pairs); :meth:`prepare` tokenizes each with both tokenizers.

    ``student_tokenizer`` / ``teacher_tokenizer``: distilkit tokenizers, ``transformers`` fast
    tokenizers or ``tokenizers.Tokenizer`` s; default: the ones the models carry
    (``model.tokenizer``). After :meth:`prepare`, ``position_counts`` says how many counted
    student positions were aligned, paired (ULD) or left without a KD term; the vocabulary map
    (``vocab_map``, "align") says how many teacher tokens matched exactly, by prefix, or not.
    """

    def __init__(self, teacher: Union[nn.Module, ModelAdapter], kd: KDConfig, *, student_tokenizer=None,
                 teacher_tokenizer=None):
        if not isinstance(kd, KDConfig) or kd.cross_tokenizer is None:
            raise ValueError("CrossTokenizerTargets needs a KDConfig with cross_tokenizer='uld' or 'align'")
        self.adapter = adapt(teacher)
        if self.adapter.kind != "lm":
            raise TypeError("cross-tokenizer KD needs a decoder-only teacher (a distilkit TransformerLM or a "
                            f"Hugging Face causal model), got {type(self.adapter.model).__name__}")
        self.teacher_adapter, self.teacher, self.kd = self.adapter, self.adapter.model, kd
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.student: Optional[ModelAdapter] = None
        self.vocab_map: Optional[VocabMap] = None
        self.position_counts = {"aligned": 0, "paired": 0, "none": 0}

    def check(self, student: ModelAdapter) -> Optional[VocabAlignment]:
        """Both models decoder-only, both tokenizers known; builds the vocabulary map ("align")."""
        if self.teacher is student.model:
            raise ValueError("teacher and student must be different models (got the same object)")
        if student.kind != "lm":
            raise TypeError("cross-tokenizer KD needs a decoder-only student (a distilkit TransformerLM or a "
                            f"Hugging Face causal model), got {type(student.model).__name__}")
        self.student_tokenizer = self.student_tokenizer if self.student_tokenizer is not None else student.tokenizer
        self.teacher_tokenizer = (self.teacher_tokenizer if self.teacher_tokenizer is not None
                                  else self.adapter.tokenizer)
        for who, tok in (("student_tokenizer", self.student_tokenizer), ("teacher_tokenizer", self.teacher_tokenizer)):
            if tok is None:
                raise ValueError(f"cross-tokenizer KD: pass {who}= (each model tokenizes its own copy of the texts)")
        self.student = student
        s_texts, t_texts = token_texts(self.student_tokenizer), token_texts(self.teacher_tokenizer)
        self._trim = not writes_whitespace(s_texts)
        if self.kd.cross_tokenizer == "align":
            self.vocab_map = VocabMap.build(s_texts, t_texts, student.vocab_size, self.adapter.vocab_size)
        return None

    def _example(self, ex: Any, i: int) -> _Example:
        text, prompt = text_of(ex, i)
        s_ids, s_spans = encode_with_spans(self.student_tokenizer, text)
        t_ids, t_spans = encode_with_spans(self.teacher_tokenizer, text)
        for who, ids, limit in (("student", s_ids, self.student.max_len), ("teacher", t_ids, self.adapter.max_len)):
            if len(ids) < 2:
                raise ValueError(f"examples[{i}] is {len(ids)} {who} token(s); a language-model example needs 2")
            if limit is not None and len(ids) - 1 > limit:
                raise ValueError(f"examples[{i}] is {len(ids)} {who} tokens; the {who} reads at most {limit} "
                                 "(+1 predicted): use shorter texts")
        n = len(s_ids) - 1
        if self.kd.cross_tokenizer == "uld":
            m = len(t_ids) - 1
            pos = [(PAIRED, t) if t < m else (NONE, -1) for t in range(n)]
        else:
            unk = getattr(self.student_tokenizer, "unk_id", None)
            if unk is None:
                unk = getattr(self.student_tokenizer, "unk_token_id", None)
            pos = align_positions(s_spans, t_spans, text=text, trim_whitespace=self._trim,
                                  student_unknown=[unk is not None and x == unk for x in s_ids])
        counted = [s_spans[t + 1][0] >= prompt for t in range(n)]
        for (kind, _), c in zip(pos, counted):
            if c:
                self.position_counts[{ALIGNED: "aligned", PAIRED: "paired", NONE: "none"}[kind]] += 1
        return _Example(s_ids, t_ids, [k for k, _ in pos], [max(u, 0) for _, u in pos], counted)

    def prepare(self, examples: Sequence, collate: Callable, vocab_size: Optional[int]):
        """Tokenize every text with both tokenizers and align the positions, once."""
        if self.student is None:
            raise RuntimeError("CrossTokenizerTargets.check(student) must run before prepare")
        if isinstance(examples, str) or not isinstance(examples, Sequence) or len(examples) == 0:
            raise ValueError("cross-tokenizer KD needs a non-empty list of texts")
        self.position_counts = {"aligned": 0, "paired": 0, "none": 0}
        prepared = [self._example(ex, i) for i, ex in enumerate(examples)]
        teacher_collate = self.adapter.collate

        def collate_fn(items: List[_Example]) -> CrossBatch:
            student = collate([x.student_ids for x in items])
            teacher = teacher_collate([x.teacher_ids for x in items])
            width = student.labels.shape[1]
            kinds = torch.zeros((len(items), width), dtype=torch.long)
            tpos = torch.zeros((len(items), width), dtype=torch.long)
            for r, x in enumerate(items):
                n = len(x.kinds)
                kinds[r, :n] = torch.tensor(x.kinds)
                tpos[r, :n] = torch.tensor(x.teacher_pos)
                drop = torch.tensor([not c for c in x.counted] + [False] * (width - n))
                student.labels[r, drop] = IGNORE_INDEX
            return CrossBatch(student, teacher, kinds, tpos)

        return prepared, collate_fn

    @torch.no_grad()
    def __call__(self, batch: CrossBatch, student):
        if not isinstance(batch, CrossBatch):
            raise TypeError("CrossTokenizerTargets needs the batches its prepare() makes")
        self.teacher.eval()
        return batch.student, CrossTeacher(self.adapter.logits(batch.teacher), batch.kinds, batch.teacher_pos)

    def loss_sum(self, student_out, teacher_out: CrossTeacher, labels, check_values=False, alignment=None):
        """``(1 - alpha) * CE + alpha * KD term``, summed over counted student positions."""
        if isinstance(student_out, tuple):
            raise ValueError("cross-tokenizer KD needs the student's logits (no memory_bounded)")
        kd = self.kd
        logits = student_out.float()
        keep = labels != IGNORE_INDEX
        hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        rows = torch.arange(labels.shape[0], device=labels.device)[:, None]
        teacher = teacher_out.logits.float()[rows, teacher_out.teacher_pos]  # (batch, student_seq, V_t)
        p_teacher = F.softmax(teacher / kd.temperature, dim=-1)
        soft = logits.new_zeros(())
        paired = keep & (teacher_out.kinds == PAIRED)
        if paired.any():
            q = F.softmax(logits[paired] / kd.temperature, dim=-1)
            soft = soft + uld_distance(q, p_teacher[paired]).sum()
        aligned = keep & (teacher_out.kinds == ALIGNED)
        if aligned.any():
            target, dropped = self.vocab_map.move(p_teacher[aligned])
            ok = dropped < 1.0 - 1e-6  # a row with no teacher mass the student can write: no KD term
            div = aligned_divergence(logits[aligned][ok], target[ok], temperature=kd.temperature,
                                     divergence=kd.divergence, beta=kd.beta)
            soft = soft + div.sum() * (kd.temperature ** 2 if kd.t2_scale else 1.0)
        return (1.0 - kd.alpha) * hard + kd.alpha * soft
