"""Batches: padding, masks and the order examples are drawn in.

:class:`Seq2SeqBatch` and :class:`LMBatch` are what the models read; :func:`collate_seq2seq` and
:func:`collate_lm` pad a list of examples into one; :class:`BatchIterator` shuffles with its own
generator and can be saved and resumed. Re-exported by :mod:`distilkit.data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = ["IGNORE_INDEX", "Completion", "Seq2SeqBatch", "LMBatch", "collate_seq2seq", "collate_lm",
           "BatchIterator"]

#: The label value of a position that does not count (padding, prompts): PyTorch's default.
IGNORE_INDEX = -100


class Completion(NamedTuple):
    """A causal-LM example made of a prompt and its completion: the model reads ``ids`` (the
    prompt's ``prompt_len`` tokens, then the completion's) and only the completion's tokens are
    scored -- by every loss term, since they all count the positions whose label is not
    ``IGNORE_INDEX``. Made from ``(prompt_ids, completion_ids)`` pairs by the adapters."""

    ids: List[int]
    prompt_len: int

@dataclass
class Seq2SeqBatch:
    """src: (batch, src_len) ids, right-padded; src_lengths: (batch,);
    decoder_input: (batch, tgt_len) = <bos> + target[:-1]; labels: (batch, tgt_len) with
    ``IGNORE_INDEX`` at padding; attention_mask: (batch, src_len), 1 at real source tokens
    (derived from ``src_lengths`` when not given)."""

    src: torch.Tensor
    src_lengths: torch.Tensor
    decoder_input: torch.Tensor
    labels: torch.Tensor
    teacher_logits: Optional[torch.Tensor] = None  # (batch, tgt_len, vocab) when cached
    attention_mask: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.attention_mask is None:
            positions = torch.arange(self.src.shape[1], device=self.src.device)
            self.attention_mask = (positions[None, :] < self.src_lengths.to(self.src.device)[:, None]).long()

    def to(self, device, non_blocking: bool = False) -> "Seq2SeqBatch":
        """The batch on ``device``; ``src_lengths`` stays in host memory (packing reads it)."""
        nb = non_blocking
        tl = None if self.teacher_logits is None else self.teacher_logits.to(device, non_blocking=nb)
        return Seq2SeqBatch(self.src.to(device, non_blocking=nb), self.src_lengths,
                            self.decoder_input.to(device, non_blocking=nb),
                            self.labels.to(device, non_blocking=nb), tl,
                            self.attention_mask.to(device, non_blocking=nb))

    def __len__(self) -> int:
        return self.src.shape[0]


@dataclass
class LMBatch:
    """input_ids: (batch, seq); labels: (batch, seq), the inputs shifted by one, padding =
    ``IGNORE_INDEX``; attention_mask: (batch, seq), 1 at real input tokens (``None``: all real)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    teacher_logits: Optional[torch.Tensor] = None  # (batch, seq, vocab) when cached
    attention_mask: Optional[torch.Tensor] = None

    def to(self, device, non_blocking: bool = False) -> "LMBatch":
        nb = non_blocking
        tl = None if self.teacher_logits is None else self.teacher_logits.to(device, non_blocking=nb)
        mask = None if self.attention_mask is None else self.attention_mask.to(device, non_blocking=nb)
        return LMBatch(self.input_ids.to(device, non_blocking=nb), self.labels.to(device, non_blocking=nb), tl,
                       mask)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def _pad_logits(rows: Sequence[torch.Tensor], width: int, offsets: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(batch, width, vocab) zeros with row ``i`` placed from position ``offsets[i]`` (default 0)."""
    out = torch.zeros(len(rows), width, rows[0].shape[-1], dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        start = 0 if offsets is None else offsets[i]
        out[i, start : start + r.shape[0]] = r
    return out


def collate_seq2seq(examples: Sequence[Tuple[Sequence[int], Sequence[int]]], pad_id: int = 0,
                    bos_id: int = 1) -> Seq2SeqBatch:
    """Pad (source ids, target ids ending in <eos>) pairs into a :class:`Seq2SeqBatch`.

    An example may carry a third element, the teacher's logits for its target,
    (tgt_len, vocab) -- see :func:`distilkit.training.precompute_teacher_logits`.
    """
    if len(examples) == 0:
        raise ValueError("examples must not be empty")
    for i, ex in enumerate(examples):
        if not (isinstance(ex, (tuple, list)) and len(ex) in (2, 3)):
            raise TypeError(f"examples[{i}] must be a (source_ids, target_ids[, teacher_logits]) tuple")
        if len(ex[0]) == 0 or len(ex[1]) == 0:
            raise ValueError(f"examples[{i}] has an empty source or target")
    src = [list(ex[0]) for ex in examples]
    tgt = [list(ex[1]) for ex in examples]
    labels = _pad(tgt, IGNORE_INDEX)
    dec_in = _pad([[bos_id] + t[:-1] for t in tgt], pad_id)
    cached = [ex[2] for ex in examples if len(ex) == 3]
    if cached and len(cached) != len(examples):
        raise ValueError("either every example in a batch carries teacher logits or none does")
    tl = _pad_logits(cached, labels.shape[1]) if cached else None
    return Seq2SeqBatch(_pad(src, pad_id), torch.tensor([len(s) for s in src]), dec_in, labels, tl)


def collate_lm(examples: Sequence, pad_id: int = 0) -> LMBatch:
    """Pad windows of ``n + 1`` token ids into an :class:`LMBatch` (input = [:-1], label = [1:]).

    An example is a window (every position scored), a :class:`Completion` (only the completion
    scored: the labels of the prompt are ``IGNORE_INDEX``), or either of them paired with its
    teacher logits ``(example, logits)``, logits (n_scored, vocab) for the scored positions.
    """
    if len(examples) == 0:
        raise ValueError("examples must not be empty")
    cached = [ex[1] for ex in examples if isinstance(ex, tuple) and not isinstance(ex, Completion)
              and len(ex) == 2 and isinstance(ex[1], torch.Tensor)]
    if cached and len(cached) != len(examples):
        raise ValueError("either every example in a batch carries teacher logits or none does")
    items = [ex[0] for ex in examples] if cached else list(examples)
    windows = [list(ex.ids) if isinstance(ex, Completion) else list(ex) for ex in items]
    first = [ex.prompt_len - 1 if isinstance(ex, Completion) else 0 for ex in items]
    for i, ex in enumerate(windows):
        if len(ex) < 2:
            raise ValueError(f"examples[{i}] needs at least 2 tokens (an input and a target)")
        if not 0 <= first[i] < len(ex) - 1:
            raise ValueError(f"examples[{i}] needs a prompt of at least 1 token and a completion of at "
                             "least 1 token")
    inputs = _pad([e[:-1] for e in windows], pad_id)
    labels = _pad([e[1:] for e in windows], IGNORE_INDEX)
    for i, n in enumerate(first):
        labels[i, :n] = IGNORE_INDEX  # the prompt is context: only the completion is scored
    mask = _pad([[1] * (len(e) - 1) for e in windows], 0)
    logits = _pad_logits(cached, labels.shape[1], first) if cached else None
    return LMBatch(inputs, labels, logits, mask)


class BatchIterator:
    """Endless, seeded, resumable batches: shuffles ``examples`` once per epoch with a
    generator seeded by ``(seed, epoch)``; ``state_dict()`` / ``load_state_dict()`` record the
    position so a resumed run sees exactly the batches the interrupted one would have seen."""

    def __init__(self, examples: Sequence, batch_size: int, collate, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(examples) == 0:
            raise ValueError("examples must not be empty: there is nothing to train on")
        self.examples, self.batch_size, self.collate = examples, batch_size, collate
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.position = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> List[int]:
        if not self.shuffle:
            return list(range(len(self.examples)))
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        n = len(self.examples)
        end = self.position + self.batch_size
        if self.position >= n or (self.drop_last and end > n):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._make_order()
            end = self.batch_size
        idx = self._order[self.position : min(end, n)]
        self.position = min(end, n)
        return self.collate([self.examples[i] for i in idx])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._make_order()
