"""The model protocol: what the package needs from a model family (:class:`ModelAdapter`),
and the examples -> token-id helpers every adapter's ``collate`` uses.

An adapter is made by :func:`distilkit.adapters.adapt`, the one place that looks at a model's
type; see :mod:`distilkit.adapters` for the batches and the conventions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .data import IGNORE_INDEX, LMBatch, Seq2SeqBatch

__all__ = ["Batch", "KINDS", "ModelAdapter", "token_ids", "lm_examples_as_ids", "seq2seq_examples_as_ids",
           "check_batch_ids"]

#: The batch types the adapters produce.
Batch = Union[LMBatch, Seq2SeqBatch]

#: Model kinds: decoder-only ("lm") and encoder-decoder ("seq2seq").
KINDS = ("lm", "seq2seq")


# ============================================================================ examples
def token_ids(seq: Any, name: str) -> List[int]:
    """``seq`` (a list/tuple of ints or a 1-D integer tensor) as a list of ints; ``name`` is
    used in the error message (e.g. ``"examples[3]"``)."""
    if isinstance(seq, torch.Tensor):
        if seq.dim() != 1 or seq.is_floating_point() or seq.is_complex() or seq.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor of token ids, got a "
                            f"{seq.dim()}-D {seq.dtype} tensor")
        return seq.tolist()
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
        raise TypeError(f"{name} must be a list of int token ids or a 1-D integer tensor, "
                        f"got {type(seq).__name__}")
    out = []
    for t in seq:
        if isinstance(t, torch.Tensor) and t.dim() == 0 and not t.is_floating_point():
            t = int(t)
        if isinstance(t, bool) or not (isinstance(t, int) or hasattr(t, "__index__")):
            raise TypeError(f"{name} must hold int token ids, found {t!r}")
        out.append(t if isinstance(t, int) else t.__index__())
    return out


def _is_payload(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() >= 1


def lm_examples_as_ids(examples: Sequence) -> list:
    """Normalise "lm" examples: each a token-id sequence or ``(sequence, payload)``."""
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence) or len(examples) == 0:
        raise ValueError("examples must be a non-empty list of token-id sequences")
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, tuple) and len(ex) == 2 and _is_payload(ex[1]):
            out.append((token_ids(ex[0], f"examples[{i}][0]"), ex[1]))
        else:
            ids = token_ids(ex, f"examples[{i}]")
            if len(ids) < 2:
                raise ValueError(f"examples[{i}] has {len(ids)} token(s); a language-model example needs "
                                 "at least 2 (an input and the token it predicts)")
            out.append(ids)
    return out


def seq2seq_examples_as_ids(examples: Sequence) -> list:
    """Normalise "seq2seq" examples: ``(source, target)`` or ``(source, target, payload)``."""
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence) or len(examples) == 0:
        raise ValueError("examples must be a non-empty list of (source_ids, target_ids) pairs")
    out = []
    for i, ex in enumerate(examples):
        if not (isinstance(ex, (tuple, list)) and (len(ex) == 2 or len(ex) == 3 and _is_payload(ex[2]))):
            raise TypeError(f"examples[{i}] must be a (source_ids, target_ids) pair for an encoder-decoder "
                            f"model, got {type(ex).__name__}")
        pair = (token_ids(ex[0], f"examples[{i}][0] (source)"), token_ids(ex[1], f"examples[{i}][1] (target)"))
        out.append(pair + tuple(ex[2:]))
    return out


def check_batch_ids(batch: Batch, vocab_size: int) -> None:
    """Token ids must index the model's vocabulary; checked on the host batch (before it moves
    to a device), for models that do not check their own ids (an embedding lookup would fail
    deep inside them)."""
    if isinstance(batch, LMBatch):
        fields = [(batch.input_ids, "examples"), (batch.labels, "examples")]
    else:
        fields = [(batch.src, "source ids"), (batch.decoder_input, "target ids"), (batch.labels, "target ids")]
    for t, what in fields:
        t = t[t != IGNORE_INDEX] if t is batch.labels else t
        if t.numel():
            low, high = (int(v) for v in torch.aminmax(t))
            if low < 0 or high >= vocab_size:
                bad = low if low < 0 else high
                raise ValueError(f"{what} hold token id {bad}, outside the model's vocabulary [0, {vocab_size})")


# ============================================================================ the protocol
class ModelAdapter:
    """What the package needs from a model family. Subclasses set the attributes and
    implement the methods; :func:`adapt` picks the subclass.

    Attributes:
        model: the wrapped ``nn.Module`` (its parameters are what training updates).
        forward_module: the module called for training logits; ``model`` itself, or a wrapper
            around it such as ``DistributedDataParallel``.
        kind: ``"lm"`` (decoder-only) or ``"seq2seq"`` (encoder-decoder).
        vocab_size: width of the output layer (the logits' last dimension).
        pad_id, bos_id, eos_id: padding id; first decoder input (``None`` for "lm"); end id.
        max_len: the longest sequence the model can see, or ``None`` for no limit.
        tokenizer: a tokenizer the model carries (``model.tokenizer``), else ``None``.
        num_layers, hidden_size: the number of layers whose outputs :meth:`hidden_states` returns
            and their width (``None`` where the family does not say); for hidden-state KD.
    """

    kind: str = ""
    model: nn.Module
    forward_module: nn.Module
    vocab_size: int
    pad_id: int = 0
    bos_id: Optional[int] = None
    eos_id: Optional[int] = None
    max_len: Optional[int] = None
    tokenizer: Optional[Any] = None
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.forward_module = model
        self.tokenizer = getattr(model, "tokenizer", None)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, kind={self.kind!r}, "
                f"vocab_size={self.vocab_size})")

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    # -- batches and logits
    def collate(self, examples: Sequence) -> Batch:
        """Examples of any lengths -> a right-padded batch (see the module docstring)."""
        raise NotImplementedError

    def logits(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced logits (batch, seq, vocab), position t scoring ``batch.labels[:, t]``."""
        raise NotImplementedError

    def hidden_and_head(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(hidden, weight, bias)`` with hidden (batch, seq, d), weight (vocab, d), bias (vocab,) or
        None, such that ``logits(batch) == hidden @ weight.T + bias``: the input of a loss that
        never holds the (tokens x vocab) logits."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its final hidden states")

    def logits_and_hidden_states(self, batch: Batch) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``(logits, hidden)`` from one forward pass: the logits of :meth:`logits` and the output
        of every layer, ``hidden[i]`` of shape (batch, seq, hidden_size) for layer ``i`` (0-based,
        ``num_layers`` of them; the embeddings are not included), position t aligned with
        ``batch.labels[:, t]``. Called through ``forward_module``, so it trains under DDP."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its intermediate hidden states "
                                  "(hidden-state KD needs a distilkit TransformerLM or a Hugging Face "
                                  "decoder-only model)")

    def hidden_states(self, batch: Batch) -> List[torch.Tensor]:
        """The output of every layer (see :meth:`logits_and_hidden_states`)."""
        return self.logits_and_hidden_states(batch)[1]

    def layers(self) -> nn.ModuleList:
        """The model's stack of ``num_layers`` layers, in order (what
        :func:`distilkit.layerinit.init_from_teacher` copies between models)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its stack of layers")

    # -- decoding
    def start(self, inputs: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, Any]:
        """Prompts ("lm") or sources ("seq2seq") -> (logits (batch, vocab) for the first new
        token, decoding state)."""
        raise NotImplementedError

    def step(self, state: Any, tokens: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        """Feed ``tokens`` (batch,), one per row -> (next logits (batch, vocab), new state)."""
        raise NotImplementedError

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        """Select / repeat rows of the state (beam search); ``index``: (new_batch,)."""
        raise NotImplementedError

    # -- persistence
    def config_dict(self) -> dict:
        """The model's configuration as JSON-able data; equal after a JSON round trip."""
        raise NotImplementedError

    def save(self, path: Union[str, Path], tokenizer: Optional[Any] = None,
             extra: Optional[dict] = None) -> None:
        """Export the model (and a tokenizer, and ``extra`` JSON metadata such as the training
        history) in its family's own format."""
        raise NotImplementedError(f"{type(self).__name__} cannot export its model")
