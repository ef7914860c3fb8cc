"""Two tokenizers, one text: token spans, the position alignment and the vocabulary map that
cross-tokenizer distillation (``KDConfig(cross_tokenizer=...)``) needs.

Every token covers a *span* of characters ``[start, end)`` of the text it came from. The
student and the teacher each tokenize their own copy of the text; the spans say which
student token and which teacher token cover the same characters.

Positions (decoder-only models): position ``t`` of a model predicts its token ``t + 1`` (the
causal shift of :func:`distilkit.data.collate_lm`). A student position and a teacher position
can be compared when they predict *the same text after the same text*: their next tokens
cover the same span. :func:`align_positions` sorts every student position into

* ``ALIGNED`` -- its next token has exactly the span of one teacher token (the same characters,
  so the same text), and that student token is not ``<unk>``. Both models then predict the
  same characters from the same prefix, and the teacher's next-token distribution can be
  moved onto the student's vocabulary (:class:`VocabMap`);
* ``PAIRED`` -- otherwise (a merge or a split: one model's token covers several of the
  other's, or an unknown character), the teacher position whose next token covers the first
  character of the student's next token: the teacher's prediction made from the longest
  prefix that is not longer than the student's. Only a loss that ignores which token is which
  (ULD, :func:`distilkit.losses.uld_distance`) can use it;
* ``NONE`` -- no teacher token covers that character (the teacher's text is shorter, or a
  tokenizer dropped it): the student learns from the label alone there.

When the student's tokenizer writes no whitespace in any token (a word tokenizer), whitespace
cannot be part of what it predicts, so spans are compared with their leading and trailing
whitespace removed (a teacher token ``" return"`` then matches the student's ``"return"``).
Otherwise spans are compared as they are: removing a space there would compare a prediction
made before the space with one made after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch

__all__ = ["ALIGNED", "PAIRED", "NONE", "encode_with_spans", "token_texts", "writes_whitespace",
           "align_positions", "VocabMap"]

NONE, ALIGNED, PAIRED = 0, 1, 2
Span = Tuple[int, int]


# ============================================================================ spans
def _is_distilkit(tokenizer: Any) -> bool:
    return isinstance(getattr(tokenizer, "itos", None), list) and callable(getattr(tokenizer, "split", None))


def encode_with_spans(tokenizer: Any, text: str) -> Tuple[List[int], List[Span]]:
    """Token ids of ``text`` (no special tokens added) and the character span each covers.

    * a ``transformers`` fast tokenizer: its ``offset_mapping``;
    * a ``tokenizers.Tokenizer``: its ``offsets``;
    * distilkit's :class:`~distilkit.data.CharTokenizer` / :class:`~distilkit.data.WordTokenizer`:
      computed here -- each piece of ``tokenizer.split(text)`` is found in the text after the
      previous one (a word tokenizer lower-cases first, and skips whitespace, which no span then
      covers). A piece outside the vocabulary is ``<unk>`` with the span of its characters.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if _is_distilkit(tokenizer):
        pieces = tokenizer.split(text)
        haystack = text.lower() if getattr(tokenizer, "kind", "") == "word" else text
        if len(haystack) != len(text):
            raise ValueError("lower-casing changed the text's length; character spans cannot be computed")
        spans, pos = [], 0
        for piece in pieces:
            start = haystack.find(piece, pos)
            if start < 0:
                raise ValueError(f"the tokenizer's piece {piece!r} is not in the text after character {pos}")
            spans.append((start, start + len(piece)))
            pos = start + len(piece)
        unk = getattr(tokenizer, "unk_id", 3)
        return [tokenizer.stoi.get(p, unk) for p in pieces], spans
    if callable(getattr(tokenizer, "encode", None)) and hasattr(tokenizer, "get_vocab_size"):  # tokenizers
        enc = tokenizer.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]
    if callable(tokenizer):  # transformers
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            raise TypeError(f"{type(tokenizer).__name__} gives no character offsets: cross-tokenizer "
                            "distillation needs a fast (Rust) tokenizer") from None
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    raise TypeError(f"cannot tokenize with a {type(tokenizer).__name__}: expected a distilkit tokenizer, a "
                    "transformers fast tokenizer or a tokenizers.Tokenizer")


def token_texts(tokenizer: Any) -> List[Optional[str]]:
    """The text of every token id (index = id); ``None`` for special tokens and for tokens that
    are not text on their own (a byte-level piece of a multi-byte character)."""
    if _is_distilkit(tokenizer):
        specials = {"<pad>", "<bos>", "<eos>", "<unk>"}
        return [None if t in specials else t for t in tokenizer.itos]
    if hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        n = tokenizer.get_vocab_size(with_added_tokens=True)
        special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        decode = lambda i: tokenizer.decode([i], skip_special_tokens=False)  # noqa: E731
    else:
        n = len(tokenizer)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        decode = lambda i: tokenizer.decode([i], skip_special_tokens=False,  # noqa: E731
                                            clean_up_tokenization_spaces=False)
    out: List[Optional[str]] = []
    for i in range(n):
        t = None if i in special else decode(i)
        out.append(None if not t or "\ufffd" in t else t)
    return out


def writes_whitespace(texts: Sequence[Optional[str]]) -> bool:
    """Does any token of this vocabulary contain whitespace? (A word tokenizer's does not.)"""
    return any(t is not None and re.search(r"\s", t) for t in texts)


# ============================================================================ positions
def _trim(span: Span, text: str) -> Span:
    s, e = span
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return (s, e) if s < e else span


def align_positions(student_spans: Sequence[Span], teacher_spans: Sequence[Span], *,
                    text: Optional[str] = None, trim_whitespace: bool = False,
                    student_unknown: Optional[Sequence[bool]] = None) -> List[Tuple[int, int]]:
    """For every student position ``t`` (predicting student token ``t + 1``; there are
    ``len(student_spans) - 1``), ``(kind, teacher_position)``: ``(ALIGNED, u)``, ``(PAIRED, u)``
    or ``(NONE, -1)`` (see the module docstring). ``student_unknown[i]``: student token ``i`` is
    ``<unk>`` (never ``ALIGNED``). ``trim_whitespace`` (needs ``text``) compares spans without
    their surrounding whitespace."""
    if trim_whitespace:
        if text is None:
            raise ValueError("trim_whitespace needs the text")
        student_spans = [_trim(s, text) for s in student_spans]
        teacher_spans = [_trim(s, text) for s in teacher_spans]
    exact = {}
    for u in range(1, len(teacher_spans)):  # teacher position u - 1 predicts teacher token u
        exact.setdefault(tuple(teacher_spans[u]), u - 1)
    starts = sorted((s, e, u - 1) for u, (s, e) in enumerate(teacher_spans) if u >= 1)
    out = []
    for t in range(1, len(student_spans)):
        span = tuple(student_spans[t])
        unknown = bool(student_unknown[t]) if student_unknown is not None else False
        if not unknown and span in exact:
            out.append((ALIGNED, exact[span]))
            continue
        c = span[0]
        covering = [u for s, e, u in starts if s <= c < e]
        out.append((PAIRED, covering[0]) if covering else (NONE, -1))
    return out


# ============================================================================ vocabularies
@dataclass
class VocabMap:
    """Teacher token id -> student token id, by text, for moving teacher probability mass onto
    the student's vocabulary at ``ALIGNED`` positions (:meth:`move`).

    A teacher token goes to the student token with *the same text*; a teacher token whose text
    no student token has goes to the *longest student token its text begins with* (for a
    character-level student: its first character -- summing the teacher's probabilities of all
    tokens that begin with a character gives exactly the teacher's probability of that next
    character; for other students an approximation); failing that, the same with the text's
    leading whitespace removed (for a student that writes no whitespace). A teacher token with
    no such student token (a special token, a character the student does not know) has *no
    counterpart*: its mass is dropped and the rest renormalised, so the target is the
    teacher's distribution given that the next token is one the student can write.
    ``dropped_mass`` of :meth:`move` reports how much was dropped.
    """

    index: torch.Tensor  # (teacher_vocab,) student id, or -1 for no counterpart
    student_vocab: int
    exact: int  # teacher tokens matched by their whole text
    by_prefix: int  # ... by the student token they begin with
    unmatched: int

    @classmethod
    def build(cls, student_texts: Sequence[Optional[str]], teacher_texts: Sequence[Optional[str]],
              student_vocab: Optional[int] = None, teacher_vocab: Optional[int] = None) -> "VocabMap":
        by_text = {}
        for i, t in enumerate(student_texts):
            if t is not None:
                by_text.setdefault(t, i)
        longest = max((len(t) for t in by_text), default=0)
        n = teacher_vocab if teacher_vocab is not None else len(teacher_texts)
        index = torch.full((n,), -1, dtype=torch.long)
        exact = prefix = 0
        for j, t in enumerate(teacher_texts[:n]):
            if t is None:
                continue
            if t in by_text:
                index[j] = by_text[t]
                exact += 1
                continue
            for cand in (t, t.lstrip()):
                hit = next((by_text[cand[:k]] for k in range(min(len(cand), longest), 0, -1)
                            if cand[:k] in by_text), None)
                if hit is not None:
                    index[j] = hit
                    prefix += 1
                    break
        sv = student_vocab if student_vocab is not None else len(student_texts)
        return cls(index, sv, exact, prefix, int((index < 0).sum()))

    def _matrix(self, like: torch.Tensor) -> torch.Tensor:
        """The map as a (teacher_vocab, student_vocab) 0/1 matrix, on ``like``'s device and dtype."""
        cached = getattr(self, "_dense", None)
        if cached is None or cached.device != like.device or cached.dtype != like.dtype:
            keep = self.index >= 0
            m = torch.zeros((self.index.numel(), self.student_vocab), dtype=like.dtype)
            m[torch.arange(self.index.numel())[keep], self.index[keep]] = 1.0
            cached = self._dense = m.to(like.device)
        return cached

    def move(self, teacher_probs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """teacher_probs (..., teacher_vocab) -> ``(target, dropped_mass)``: the probabilities on
        the student's vocabulary (..., student_vocab), renormalised, and the mass (...,) that
        had no counterpart. A row whose whole mass is dropped gives an all-zero target."""
        index = self.index.to(teacher_probs.device)
        if teacher_probs.shape[-1] != index.numel():
            raise ValueError(f"the teacher's distribution has {teacher_probs.shape[-1]} entries but the "
                             f"vocabulary map was built for {index.numel()}")
        matrix = self._matrix(teacher_probs)
        out = (teacher_probs.reshape(-1, index.numel()) @ matrix).reshape(*teacher_probs.shape[:-1], -1)
        kept = out.sum(-1, keepdim=True)
        return out / kept.clamp_min(1e-12), 1.0 - kept.squeeze(-1)
