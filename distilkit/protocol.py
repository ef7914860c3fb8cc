"""The model protocol: what the package needs from a model family (:class:`ModelAdapter`),
and the examples -> token-id helpers every adapter's ``collate`` uses.

An adapter is made by :func:`distilkit.adapters.adapt`, the one place that looks at a model's
type; see :mod:`distilkit.adapters` for the batches and the conventions.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .batching import IGNORE_INDEX, Completion, LMBatch, Seq2SeqBatch

__all__ = ["Batch", "KINDS", "ModelAdapter", "token_ids", "lm_examples_as_ids", "seq2seq_examples_as_ids",
           "check_batch_ids", "fit_to_context"]

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
    """Teacher logits carried by an example (floating point, one row per scored position)."""
    return isinstance(x, torch.Tensor) and x.dim() >= 1 and x.is_floating_point()


def _is_ids(x: Any) -> bool:
    """A token-id sequence (possibly empty): a list/tuple of ints or a 1-D integer tensor."""
    if isinstance(x, torch.Tensor):
        return x.dim() == 1 and not x.is_floating_point()
    return isinstance(x, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in x)


def _completion(prompt: Any, completion: Any, i: int) -> Completion:
    p, c = token_ids(prompt, f"examples[{i}][0] (prompt)"), token_ids(completion, f"examples[{i}][1] (completion)")
    if not p or not c:
        raise ValueError(f"examples[{i}] has {len(p)} prompt and {len(c)} completion token(s); a "
                         "(prompt, completion) pair needs at least one of each")
    return Completion(p + c, len(p))


def lm_examples_as_ids(examples: Sequence) -> list:
    """Normalise "lm" examples. Each is a token-id sequence (every next token scored), a
    ``(prompt_ids, completion_ids)`` pair (the model reads both; only the completion is scored),
    or either of them followed by its teacher logits (``(sequence, logits)``,
    ``(prompt, completion, logits)``, as :func:`~distilkit.training.precompute_teacher_logits`
    makes them)."""
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence) or len(examples) == 0:
        raise ValueError("examples must be a non-empty list of token-id sequences or (prompt, completion) pairs")
    out = []
    for i, ex in enumerate(examples):
        payload = None
        if isinstance(ex, (tuple, list)) and len(ex) in (2, 3) and _is_payload(ex[-1]):
            ex, payload = (ex[0] if len(ex) == 2 else tuple(ex[:2])), ex[-1]
        if isinstance(ex, Completion):
            item = ex
        elif isinstance(ex, (tuple, list)) and len(ex) == 2 and _is_ids(ex[0]) and _is_ids(ex[1]):
            item = _completion(ex[0], ex[1], i)
        else:
            item = token_ids(ex, f"examples[{i}]")
            if len(item) < 2:
                raise ValueError(f"examples[{i}] has {len(item)} token(s); a language-model example needs "
                                 "at least 2 (an input and the token it predicts)")
        out.append(item if payload is None else (item, payload))
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


def _split_payload(ex: Any) -> Tuple[Any, bool]:
    if isinstance(ex, (tuple, list)) and len(ex) in (2, 3) and _is_payload(ex[-1]):
        return (ex[0] if len(ex) == 2 else tuple(ex[:2])), True
    return ex, False


def _truncate(ex: Any, kind: str, cap: int, i: int) -> Tuple[Any, int]:
    """``(example, positions)`` of one raw example, cut to ``cap`` positions when ``cap`` is set:
    a causal model's prompt from the left (its completion kept), a plain sequence from the right
    (its first ``cap + 1`` tokens), an encoder-decoder's source from the left (its target kept)."""
    if kind == "lm":
        if isinstance(ex, Completion):
            ex = (ex.ids[: ex.prompt_len], ex.ids[ex.prompt_len:])
        if isinstance(ex, (tuple, list)) and len(ex) == 2 and _is_ids(ex[0]) and _is_ids(ex[1]):
            p, c = list(ex[0]), list(ex[1])
            n = len(p) + len(c) - 1
            if cap is None or n <= cap:
                return ex, n
            if len(c) > cap:
                raise ValueError(f"examples[{i}]: its completion alone has {len(c)} tokens, more than "
                                 f"max_length={cap} positions hold with a prompt token before it; the "
                                 "completion is never cut: drop or shorten this example")
            return (p[len(p) - (cap + 1 - len(c)):], c), n
        n = len(ex) - 1
        return (ex if cap is None or n <= cap else list(ex)[: cap + 1]), n
    src, tgt = ex[0], ex[1]
    n = max(len(src), len(tgt))
    if cap is None or n <= cap:
        return ex, n
    if len(tgt) > cap:
        raise ValueError(f"examples[{i}]: its target has {len(tgt)} tokens, more than max_length={cap}; "
                         "the target is never cut: drop or shorten this example")
    return (list(src)[len(src) - cap:], tgt), n


def fit_to_context(adapter: "ModelAdapter", examples: Sequence, max_length: Optional[int] = None) -> Sequence:
    """Check every example against the longest input the model can read (``adapter.max_len``:
    ``max_position_embeddings`` for Hugging Face models, ``config.max_len`` for distilkit's), before
    any step: a longer example is an error naming its index, its length and the limit.

    With ``max_length`` (at most the model's limit) longer examples are cut instead, and a warning
    says how many: a causal model's prompt loses tokens from its left and its completion is kept
    whole; a plain sequence keeps its first ``max_length + 1`` tokens; an encoder-decoder's source
    loses tokens from its left and its target is kept whole. Returns ``examples`` itself when
    nothing was cut. Examples that carry teacher logits are only checked (cut them before
    :func:`~distilkit.training.precompute_teacher_logits`)."""
    limit = adapter.max_len
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length={max_length} is more than the {limit} positions the model can read")
    if adapter.kind not in KINDS or (limit is None and max_length is None):
        return examples
    cap = max_length if max_length is not None else limit
    out, cut = None, 0
    for i in range(len(examples)):
        raw, payload = _split_payload(examples[i])
        fitted, n = _truncate(raw, adapter.kind, None, i)
        if n <= cap:
            continue
        if max_length is None or payload:
            how = ("its teacher logits were computed for the whole example: cut the examples first"
                   if payload else "pass max_length= to cut the input (the completion or target is kept)")
            raise ValueError(f"examples[{i}] has {n} positions but the model reads at most {cap}; {how}")
        if out is None:
            out = list(examples)
        out[i], _ = _truncate(raw, adapter.kind, cap, i)
        cut += 1
    if out is None:
        return examples
    warnings.warn(f"max_length={cap}: {cut} of {len(examples)} examples were cut to fit", stacklevel=3)
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
