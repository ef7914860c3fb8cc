"""Vocabulary checks for word-level KD: one tokenizer, one set of output columns.

Word-level KD compares the teacher's and the student's next-token distributions column by
column, so column ``i`` must mean the same token in both. :func:`check_vocab` runs before any
training step and

* refuses two tokenizers that differ (when both are known: carried by the models as
  ``model.tokenizer`` or passed by the user). What is compared: the tokenizer class and the
  complete token -> id mapping, special and added tokens included. Vocabulary *sizes* alone
  prove nothing: two different tokenizers can have the same size.
* refuses output layers of different widths, unless the user asks for an alignment
  (``KDConfig(vocab_alignment=...)``) -- meant for one tokenizer whose embedding matrix was
  padded to a round size in one model (Qwen2: 151,936 vs 152,064 columns):

  - ``"slice"``: both logits are cut to the narrower width ``V = min(V_student, V_teacher)``;
    the extra columns belong to no token. The student's softmax (and its cross-entropy) then
    runs over the ``V`` real columns.
  - ``"pad"``: the teacher's logits are widened to the student's width with ``-inf`` columns
    (teacher probability 0 for ids it cannot emit); the student keeps its whole softmax, as
    at inference. Only for a teacher narrower than the student, and not with ``reverse_kl``
    (the student's mass on a teacher-impossible id makes KL(q || p) infinite).

  With an alignment, a known tokenizer must fit inside the narrower width (else the sliced
  columns would be real tokens). When no tokenizer is known at all, the ids are assumed to
  mean the same tokens and a warning says that nothing could be checked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

__all__ = ["VOCAB_ALIGNMENTS", "VocabAlignment", "check_vocab", "check_teacher", "tokenizer_vocab", "tokenizer_difference"]

#: Values accepted by ``KDConfig.vocab_alignment`` (besides ``None``: widths must match).
VOCAB_ALIGNMENTS = ("slice", "pad")


def tokenizer_vocab(tokenizer: Any) -> Dict[str, int]:
    """The token -> id mapping of a distilkit tokenizer, a ``transformers`` tokenizer or a
    ``tokenizers.Tokenizer`` (special and added tokens included)."""
    itos = getattr(tokenizer, "itos", None)
    if isinstance(itos, list):  # distilkit's WordTokenizer / CharTokenizer
        return {tok: i for i, tok in enumerate(itos)}
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        return dict(get_vocab())
    raise TypeError(f"cannot read the vocabulary of a {type(tokenizer).__name__}: expected a distilkit "
                    "tokenizer, a transformers tokenizer or a tokenizers.Tokenizer")


def tokenizer_difference(a: Any, b: Any) -> Optional[str]:
    """``None`` if tokenizers ``a`` and ``b`` are the same (class and token -> id mapping),
    else a short description of the first difference found."""
    if type(a).__name__ != type(b).__name__:
        return f"{type(a).__name__} vs {type(b).__name__}"
    va, vb = tokenizer_vocab(a), tokenizer_vocab(b)
    if len(va) != len(vb):
        return f"{len(va)} vs {len(vb)} tokens"
    for tok, i in sorted(va.items(), key=lambda kv: kv[1]):
        j = vb.get(tok)
        if j != i:
            where = "is missing from the second" if j is None else f"has id {j} in the second"
            return f"token {tok!r} has id {i} in the first tokenizer and {where}"
    return None


@dataclass(frozen=True)
class VocabAlignment:
    """How teacher and student logits are brought to one width (see the module docstring)."""

    mode: str
    student_vocab: int
    teacher_vocab: int

    @property
    def width(self) -> int:
        """The width the loss sees."""
        return min(self.student_vocab, self.teacher_vocab) if self.mode == "slice" else self.student_vocab

    def apply(self, student_logits: torch.Tensor,
              teacher_logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """student_logits (..., V_student), teacher_logits (..., V_teacher) -> both (..., width)."""
        student = student_logits[..., : self.width] if self.mode == "slice" else student_logits
        return student, self.teacher(teacher_logits)

    def teacher(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """teacher_logits (..., V_teacher) -> (..., width): cut, or widened with ``-inf``."""
        if self.mode == "slice":
            return teacher_logits[..., : self.width]
        extra = self.student_vocab - teacher_logits.shape[-1]
        pad = teacher_logits.new_full((*teacher_logits.shape[:-1], extra), float("-inf"))
        return torch.cat([teacher_logits, pad], dim=-1)

    def student_head(self, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The student's output layer (V_student, d) restricted to the columns the loss sees."""
        if self.mode == "slice":
            return weight[: self.width], None if bias is None else bias[: self.width]
        return weight, bias


def check_vocab(
    student_vocab: int,
    teacher_vocab: int,
    alignment: Optional[str] = None,
    *,
    student_tokenizer: Any = None,
    teacher_tokenizer: Any = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> Optional[VocabAlignment]:
    """Check that a student and a teacher can be distilled word by word; returns the
    :class:`VocabAlignment` to apply to their logits, or ``None`` when the widths match.

    Raises ``ValueError`` for different tokenizers, for different widths without
    ``alignment``, and for an alignment that cannot work (see the module docstring).
    """
    if alignment is not None and alignment not in VOCAB_ALIGNMENTS:
        raise ValueError(f"vocab_alignment must be None, 'slice' or 'pad'; got {alignment!r}")
    if student_tokenizer is not None and teacher_tokenizer is not None:
        diff = tokenizer_difference(student_tokenizer, teacher_tokenizer)
        if diff is not None:
            raise ValueError(
                f"the student and the teacher use different tokenizers ({diff}): word-level KD compares "
                "distributions over one vocabulary, so both models must share one tokenizer; use "
                "sequence-level KD (train the student on the teacher's decoded text) instead")
    if student_vocab == teacher_vocab:
        return None
    if alignment is None:
        raise ValueError(
            f"student vocab size ({student_vocab}) differs from teacher vocab size ({teacher_vocab}): "
            "word-level KD needs one shared tokenizer. If both models use the same tokenizer and one "
            "embedding matrix was only padded (e.g. 151936 vs 152064), pass "
            "KDConfig(vocab_alignment='slice') or 'pad'")
    if alignment == "pad":
        if student_vocab < teacher_vocab:
            raise ValueError(
                f"vocab_alignment='pad' widens the teacher to the student's width, but the teacher is the "
                f"wider ({teacher_vocab} > {student_vocab}); use vocab_alignment='slice'")
        if divergence == "reverse_kl" or (divergence == "skew_reverse_kl" and beta == 0):
            raise ValueError(
                f"vocab_alignment='pad' gives the teacher probability 0 on the student's extra ids, where "
                f"{divergence} is infinite; use vocab_alignment='slice'")
    narrow = min(student_vocab, teacher_vocab)
    known = [t for t in (student_tokenizer, teacher_tokenizer) if t is not None]
    for tok in known:
        n = len(tokenizer_vocab(tok))
        if n > narrow:
            raise ValueError(
                f"vocab_alignment={alignment!r}: the tokenizer has {n} tokens but the narrower output layer "
                f"has only {narrow} columns, so the models do not share that tokenizer (a padded embedding "
                "only adds columns beyond the tokenizer's ids)")
    if not known:
        warnings.warn(
            f"vocab_alignment={alignment!r} with no tokenizer to compare: assuming ids [0, {narrow}) mean "
            "the same tokens in the student and the teacher. Pass student_tokenizer= and "
            "teacher_tokenizer= (or set model.tokenizer) to have that checked", UserWarning, stacklevel=3)
    return VocabAlignment(alignment, student_vocab, teacher_vocab)


def check_teacher(student: Any, teacher: Any, alignment: Optional[str] = None, *,
                  student_tokenizer: Any = None, teacher_tokenizer: Any = None,
                  divergence: str = "forward_kl", beta: float = 0.5) -> Optional[VocabAlignment]:
    """Can ``teacher`` score the ``student``'s batches position by position? Both are
    :class:`~distilkit.adapters.ModelAdapter` s (or models). Checks, before any step: one kind
    of model, one decoder start token (encoder-decoders share the student's decoder inputs),
    and the vocabulary (:func:`check_vocab`; tokenizers default to those the models carry).
    Returns the :class:`VocabAlignment` to apply, or ``None``."""
    from .adapters import adapt

    s, t = adapt(student), adapt(teacher)
    if s.model is t.model:
        raise ValueError("teacher and student must be different models (got the same object)")
    if not (s.kind and t.kind and s.vocab_size and t.vocab_size):
        return None  # a custom module says neither: the loss checks the logits' widths at the first step
    names = {"lm": "a decoder-only", "seq2seq": "an encoder-decoder"}
    if s.kind != t.kind:
        raise ValueError(f"the student is {names.get(s.kind, s.kind)} model and the teacher "
                         f"{names.get(t.kind, t.kind)} one: the teacher scores the student's batches, so "
                         "both must be decoder-only or both encoder-decoder")
    if s.kind == "seq2seq" and s.bos_id != t.bos_id:
        raise ValueError(f"the student's decoder starts from token id {s.bos_id} and the teacher's from "
                         f"{t.bos_id}: the teacher reads the student's decoder inputs, so both need one "
                         "decoder start token (one tokenizer)")
    return check_vocab(s.vocab_size, t.vocab_size, alignment,
                       student_tokenizer=student_tokenizer if student_tokenizer is not None else s.tokenizer,
                       teacher_tokenizer=teacher_tokenizer if teacher_tokenizer is not None else t.tokenizer,
                       divergence=divergence, beta=beta)
