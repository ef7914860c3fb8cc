"""One seam for model kinds: :func:`adapt` turns a model into a :class:`ModelAdapter`.

The training loop, the decoders, the metrics, the checkpoints and the command line speak only
this protocol, so a new model family is one adapter, not edits across modules::

    adapter = adapt(model)              # distilkit model, Hugging Face model, or an adapter
    batch = adapter.collate(examples)   # token-id lists of any length -> padded batch
    logits = adapter.logits(batch)      # (batch, seq, vocab), aligned with batch.labels
    logits, state = adapter.start(inputs)          # decoding: first next-token logits
    logits, state = adapter.step(state, tokens)    # one token per row

Two kinds of batches flow through it (both from :mod:`distilkit.data`):

* ``"lm"`` (decoder-only): examples are token-id sequences ``x`` of any lengths >= 2; the
  causal shift happens once, in ``collate``: ``input_ids = x[:-1]``, ``labels = x[1:]``, so
  ``logits[:, t]`` scores ``labels[:, t]``. -> :class:`~distilkit.data.LMBatch`.
* ``"seq2seq"`` (encoder-decoder): examples are ``(source_ids, target_ids)`` pairs, the target
  ending in ``<eos>``; ``decoder_input = <decoder start> + target[:-1]``, ``labels = target``.
  -> :class:`~distilkit.data.Seq2SeqBatch`.

Padding is on the right; labels hold ``IGNORE_INDEX`` (-100) at padding, so no loss term
sees it, and ``attention_mask`` marks the real input tokens. Sequences may be lists of ints
or 1-D integer tensors. An example may carry a teacher payload after its token ids (cached
teacher logits, ``(tokens, vocab)``: ``(ids, logits)`` for "lm", ``(src, tgt, logits)`` for
"seq2seq"); it passes through to ``batch.teacher_logits``.

:func:`adapt` is the only function in the package that looks at a model's type.
``transformers`` is imported only when a Hugging Face model is adapted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

from .checkpoint import save_model
from .data import collate_lm, collate_seq2seq
from .models import Seq2SeqLSTM, TransformerLM, config_to_dict
from .protocol import KINDS, Batch, ModelAdapter, lm_examples_as_ids, seq2seq_examples_as_ids, token_ids

__all__ = ["Batch", "ModelAdapter", "DistilkitLMAdapter", "DistilkitSeq2SeqAdapter", "CollateAdapter",
           "adapt", "save_pretrained", "token_ids"]


# ============================================================================ distilkit models
class _DistilkitAdapter(ModelAdapter):
    """distilkit's model interface (see :mod:`distilkit.models`): ``model(batch) -> logits``
    aligned with ``batch.labels``, a ``kind``, and for decoding ``start`` / ``step`` /
    ``reorder_state``; ids from ``model.config`` (``vocab_size``, ``pad_id``, ``bos_id``,
    ``eos_id``, ``max_len``) where it has them. The models check their own token ids."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.kind = self.kind or getattr(model, "kind", "")
        c = getattr(model, "config", None)
        self.vocab_size = getattr(c, "vocab_size", None)
        self.pad_id = getattr(c, "pad_id", 0)
        self.bos_id = getattr(c, "bos_id", 1 if self.kind == "seq2seq" else None)
        self.eos_id = getattr(c, "eos_id", None)
        self.max_len = getattr(c, "max_len", None)
        self.num_layers = getattr(c, "n_layers", None)
        self.hidden_size = getattr(c, "d_model", None)

    def collate(self, examples):
        raise TypeError(f"{type(self.model).__name__} has no kind ('lm' or 'seq2seq'): pass collate=")

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.forward_module(batch)

    def _decoder(self):
        if not all(hasattr(self.model, a) for a in ("start", "step", "reorder_state")):
            raise TypeError(f"{type(self.model).__name__} has no start/step/reorder_state: it cannot decode")
        return self.model

    def start(self, inputs):
        return self._decoder().start(inputs)

    def step(self, state, tokens):
        return self._decoder().step(state, tokens)

    def reorder_state(self, state, index):
        return self._decoder().reorder_state(state, index)

    def hidden_and_head(self, batch):
        fn = getattr(self.model, "hidden_and_head", None)
        if fn is None:
            return super().hidden_and_head(batch)
        return fn(batch)

    def logits_and_hidden_states(self, batch):
        if not hasattr(self.model, "blocks"):
            return super().logits_and_hidden_states(batch)
        return self.forward_module(batch, output_hidden_states=True)

    def layers(self):
        blocks = getattr(self.model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            return super().layers()
        return blocks

    def config_dict(self) -> Optional[dict]:
        return config_to_dict(self.model.config) if hasattr(self.model, "config") else None

    def save(self, path, tokenizer=None, extra=None) -> None:
        save_model(self.model, path, tokenizer, extra=extra)


class DistilkitLMAdapter(_DistilkitAdapter):
    """:class:`~distilkit.models.TransformerLM`: batches from :func:`~distilkit.data.collate_lm`."""

    kind = "lm"

    def collate(self, examples):
        return collate_lm(lm_examples_as_ids(examples), pad_id=self.pad_id)


class DistilkitSeq2SeqAdapter(_DistilkitAdapter):
    """:class:`~distilkit.models.Seq2SeqLSTM`: batches from :func:`~distilkit.data.collate_seq2seq`."""

    kind = "seq2seq"

    def collate(self, examples):
        return collate_seq2seq(seq2seq_examples_as_ids(examples), pad_id=self.pad_id, bos_id=self.bos_id)


class CollateAdapter(ModelAdapter):
    """Any module with ``model(batch) -> logits`` and a user-supplied ``collate`` (the loop's
    ``collate=`` argument): training and evaluation work; decoding needs a model adapter."""

    def __init__(self, model: nn.Module, collate: Callable, base: Optional[ModelAdapter] = None):
        super().__init__(model)
        if not callable(collate):
            raise TypeError(f"collate must be callable, got {type(collate).__name__}")
        self._collate, self._base = collate, base
        for name in ("kind", "vocab_size", "pad_id", "bos_id", "eos_id", "max_len", "num_layers", "hidden_size"):
            setattr(self, name, getattr(base, name, None) if base is not None else
                    getattr(getattr(model, "config", None), name, getattr(type(self), name, None)))
        self.kind = self.kind or getattr(model, "kind", "")

    def collate(self, examples):
        return self._collate(examples)

    def logits(self, batch):
        if self._base is not None:
            return self._base.logits(batch)
        return self.forward_module(batch)

    def _need_base(self, what: str) -> ModelAdapter:
        if self._base is None:
            raise TypeError(f"{what} needs a distilkit or Hugging Face model, got {type(self.model).__name__} "
                            "with a custom collate")
        return self._base

    def start(self, inputs):
        return self._need_base("decoding").start(inputs)

    def step(self, state, tokens):
        return self._need_base("decoding").step(state, tokens)

    def reorder_state(self, state, index):
        return self._need_base("decoding").reorder_state(state, index)

    def hidden_and_head(self, batch):
        return self._need_base("hidden_and_head").hidden_and_head(batch)

    def logits_and_hidden_states(self, batch):
        return self._need_base("hidden-state KD").logits_and_hidden_states(batch)

    def layers(self):
        return self._need_base("layers").layers()

    def config_dict(self):
        if self._base is not None:
            return self._base.config_dict()
        return None

    def save(self, path, tokenizer=None, extra=None):
        self._need_base("export").save(path, tokenizer, extra)


# ============================================================================ dispatch
def _is_hf_model(model: nn.Module) -> bool:
    """A ``transformers`` model, or a ``peft`` wrapper (LoRA) around one."""
    transformers = sys.modules.get("transformers")  # a model of it exists only if it was imported
    peft = sys.modules.get("peft")
    if peft is not None and isinstance(model, peft.PeftModel):
        model = model.get_base_model()
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def adapt(model: Union[nn.Module, ModelAdapter], *, collate: Optional[Callable] = None) -> ModelAdapter:
    """The :class:`ModelAdapter` for ``model``; an adapter is returned as it is (idempotent).

    Accepted: distilkit's :class:`~distilkit.models.TransformerLM` and
    :class:`~distilkit.models.Seq2SeqLSTM`; ``transformers`` models -- decoder-only (any
    ``PreTrainedModel`` whose ``forward(input_ids=, attention_mask=)`` returns ``.logits``) and
    encoder-decoder ones (``config.is_encoder_decoder``: T5, BART, ...); any other module with
    distilkit's model interface (a ``kind`` of "lm" or "seq2seq" and ``model(batch) -> logits``,
    and/or ``start`` / ``step`` / ``reorder_state`` with a ``config``); a
    ``DistributedDataParallel`` wrapper around any of these (training calls the wrapper).
    ``collate``: a custom examples -> batch function (the loop's ``collate=``); the model is
    then called as ``model(batch)``.
    """
    if isinstance(model, ModelAdapter):
        if collate is not None:
            return CollateAdapter(model.model, collate, base=model)
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a ModelAdapter, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        inner = adapt(model.module, collate=collate)
        inner.forward_module = model
        return inner
    if isinstance(model, TransformerLM):
        base: Optional[ModelAdapter] = DistilkitLMAdapter(model)
    elif isinstance(model, Seq2SeqLSTM):
        base = DistilkitSeq2SeqAdapter(model)
    elif _is_hf_model(model):
        from . import hf

        is_enc_dec = bool(getattr(hf.peft_base(model).config, "is_encoder_decoder", False))
        base = hf.HFSeq2SeqAdapter(model) if is_enc_dec else hf.HFCausalAdapter(model)
    elif getattr(model, "kind", None) in KINDS or (
            hasattr(model, "config") and all(hasattr(model, a) for a in ("start", "step", "reorder_state"))):
        # another module with distilkit's model interface (a kind, and/or the decoding methods)
        kinds = {"lm": DistilkitLMAdapter, "seq2seq": DistilkitSeq2SeqAdapter}
        base = kinds.get(getattr(model, "kind", None), _DistilkitAdapter)(model)
    else:
        base = None
    if collate is not None:
        return CollateAdapter(model, collate, base=base)
    if base is None:
        raise TypeError(
            f"distilkit cannot use a {type(model).__name__} directly: expected a distilkit TransformerLM "
            "or Seq2SeqLSTM, a transformers PreTrainedModel (causal or encoder-decoder), or pass "
            "collate= for a module called as model(batch)")
    return base


def save_pretrained(model: Union[nn.Module, ModelAdapter], path: Union[str, Path], tokenizer: Any = None,
                    extra: Optional[dict] = None) -> None:
    """Export a trained model (e.g. a distilled student) in its own family's format, with
    ``extra`` JSON metadata (e.g. the training history) when given.

    * a Hugging Face model: ``model.save_pretrained(path)`` -- a folder with ``config.json`` and
      safetensors weights that ``AutoModel*.from_pretrained(path)`` reloads -- plus the
      tokenizer's ``save_pretrained`` when one is given (or carried as ``model.tokenizer``), and
      ``extra`` as ``distilkit.json``; written under a temporary name and renamed into place;
    * a distilkit model: :func:`distilkit.checkpoint.save_model` -- one safetensors file with
      the JSON config (and the distilkit tokenizer), reloaded by
      :func:`distilkit.checkpoint.load_model`; written atomically.
    """
    adapt(model).save(path, tokenizer, extra)
