"""Adapters for Hugging Face ``transformers`` models (the optional ``hf`` extra).

* :class:`HFCausalAdapter` -- decoder-only models (GPT-2, Llama, Qwen, ...): ``model(input_ids=,
  attention_mask=)`` returns ``.logits``. The causal shift is done by the collate
  (``input_ids = x[:-1]``, ``labels = x[1:]``), never again by the model: the batch carries no
  ``labels`` into the model, so the model's own shifted loss is never computed.
* :class:`HFSeq2SeqAdapter` -- encoder-decoder models (T5, BART, ...): ``model(input_ids=,
  attention_mask=, decoder_input_ids=)``, with ``decoder_input_ids = decoder start + target[:-1]``
  built by the collate from ``config.decoder_start_token_id``.

Decoding keeps the model's KV cache (``past_key_values``) between steps. Prompts of different
lengths for a decoder-only model are left-padded for the first pass, with the attention mask
and explicit position ids, so each row sees exactly its own prompt.

This module does not import ``transformers`` itself: it only talks to model objects the user
built, so ``import distilkit`` never needs the extra.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .data import collate_lm, collate_seq2seq
from .protocol import ModelAdapter, check_batch_ids, lm_examples_as_ids, seq2seq_examples_as_ids, token_ids

__all__ = ["HFCausalAdapter", "HFSeq2SeqAdapter", "hf_config_dict"]

# config entries that say where or with what a model was saved, not what it is
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash")


def _first_id(value) -> Optional[int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def hf_config_dict(model: nn.Module) -> dict:
    """``model.config`` as plain JSON data (what a JSON round trip gives back), without the
    entries that only record the saving library's version or the path it was loaded from."""
    d = model.config.to_dict()
    for key in _VOLATILE_CONFIG_KEYS:
        d.pop(key, None)
    d = json.loads(json.dumps(d, sort_keys=True, default=str))
    return {"class": type(model).__name__, "hf_config": d}


def _prompts(inputs: Sequence[Sequence[int]], what: str) -> list:
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise ValueError(f"inputs must be a non-empty list of {what}")
    out = [token_ids(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
    for i, x in enumerate(out):
        if not x:
            raise ValueError(f"inputs[{i}] is empty; every {what[:-1]} needs at least one token")
    return out


def peft_base(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside a ``peft`` wrapper (a LoRA student), else ``model``. peft
    puts its adapters into the base model's own layers, so calling the base model runs them."""
    peft = sys.modules.get("peft")  # a peft model exists only if peft was imported
    if peft is not None and isinstance(model, peft.PeftModel):
        return model.get_base_model()
    return model


class _HFAdapter(ModelAdapter):
    """``model``: what training updates and what is exported (a ``transformers`` model, or a
    ``peft`` wrapper around one: its adapters are then what is trained and saved); ``core``:
    the ``transformers`` model itself (config, layers, output layer)."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.core = core = peft_base(model)
        cfg = core.config
        head = core.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(cfg.vocab_size)
        self.eos_id = _first_id(getattr(cfg, "eos_token_id", None))
        self.max_len = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.num_layers = getattr(cfg, "num_hidden_layers", None)
        self.hidden_size = getattr(cfg, "hidden_size", None)
        self._head_checked = False
        params = inspect.signature(core.forward).parameters
        self._takes_positions = "position_ids" in params
        # the KV-cache keyword: ``cache`` in recent transformers, ``past_key_values`` before
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _check_tokens(self, inputs: list) -> None:
        for i, x in enumerate(inputs):
            bad = [t for t in x if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"inputs[{i}] holds token id {bad[0]}, outside the model's vocabulary "
                                 f"[0, {self.vocab_size})")

    def _head(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        head = self.core.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise NotImplementedError(f"{type(self.model).__name__} has no output layer to compute logits from")
        return head.weight, getattr(head, "bias", None)

    def _verify_head(self, batch, hidden, weight, bias) -> None:
        """Once per adapter: ``hidden @ weight.T + bias`` must reproduce the model's logits (on
        one row, two positions); a model that scales or caps its logits is refused."""
        if self._head_checked:
            return
        with torch.no_grad():
            full = self.logits(_first_positions(batch, 2))[0, :2].float()
            mine = hidden[0, :2].detach().float() @ weight.detach().float().T
            if bias is not None:
                mine = mine + bias.detach().float()
        if not torch.allclose(full, mine, atol=1e-4, rtol=1e-3):
            raise NotImplementedError(
                f"{type(self.model).__name__} transforms its final hidden states before the output layer "
                "(e.g. logit scaling or soft-capping), so logits cannot be recomputed from "
                "hidden @ weight.T; use the plain loss (no memory-bounded loss) for this model")
        self._head_checked = True

    def layers(self) -> nn.ModuleList:
        """The decoder's stack of layers: the ``nn.ModuleList`` of ``num_layers`` modules in the
        base model (``transformer.h`` for GPT-2, ``model.layers`` for Llama-style models)."""
        found = [m for m in self.model.base_model.modules()
                 if isinstance(m, nn.ModuleList) and len(m) == self.num_layers]
        if len(found) != 1:
            raise NotImplementedError(f"cannot tell which module list of {type(self.model).__name__} holds its "
                                      f"{self.num_layers} layers ({len(found)} candidates)")
        return found[0]

    def config_dict(self) -> dict:
        return hf_config_dict(self.model)

    def save(self, path: Union[str, Path], tokenizer: Optional[Any] = None, extra: Optional[dict] = None) -> None:
        """``save_pretrained`` into the folder ``path`` (safetensors weights + config.json), the
        tokenizer's own ``save_pretrained`` when it has one, and ``extra`` as ``distilkit.json``.

        The folder is written beside ``path`` under a temporary name and renamed into place, so
        a crash leaves the previous export (or nothing), never a half-written folder."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"path {path} exists and is not a folder; save_pretrained writes a folder")
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is not None and not hasattr(tok, "save_pretrained"):
            raise TypeError(f"tokenizer must have save_pretrained (a transformers tokenizer), "
                            f"got {type(tok).__name__}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        try:
            self.model.save_pretrained(str(tmp))
            if tok is not None:
                tok.save_pretrained(str(tmp))
            if extra is not None:
                (tmp / "distilkit.json").write_text(json.dumps(extra) + "\n")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
        finally:
            for leftover in (tmp, old):
                if leftover.exists():
                    shutil.rmtree(leftover)


def _first_positions(batch, n: int):
    """The first row of ``batch``, cut to its first ``n`` label positions (for a cheap check)."""
    from .data import LMBatch, Seq2SeqBatch

    if isinstance(batch, LMBatch):
        mask = None if batch.attention_mask is None else batch.attention_mask[:1, :n]
        return LMBatch(batch.input_ids[:1, :n], batch.labels[:1, :n], None, mask)
    assert isinstance(batch, Seq2SeqBatch)
    return Seq2SeqBatch(batch.src[:1], batch.src_lengths[:1], batch.decoder_input[:1, :n],
                        batch.labels[:1, :n], None, batch.attention_mask[:1])


# ============================================================================ decoder-only
class HFCausalAdapter(_HFAdapter):
    """A ``transformers`` decoder-only model. ``pad_id`` defaults to the config's
    ``pad_token_id``, else its ``eos_token_id``, else 0 (padding is masked, so any id works)."""

    kind = "lm"

    def __init__(self, model: nn.Module, pad_id: Optional[int] = None):
        super().__init__(model)
        cfg = model.config
        self.bos_id = _first_id(getattr(cfg, "bos_token_id", None))
        if pad_id is not None and not 0 <= pad_id < self.vocab_size:
            raise ValueError(f"pad_id must lie in [0, {self.vocab_size}), got {pad_id}")
        # padding is masked, so any id in the vocabulary works (GPT-2 configs often name none)
        candidates = (pad_id, _first_id(getattr(cfg, "pad_token_id", None)), self.eos_id, 0)
        self.pad_id = next(c for c in candidates if c is not None and 0 <= c < self.vocab_size)

    def collate(self, examples):
        batch = collate_lm(lm_examples_as_ids(examples), pad_id=self.pad_id)
        check_batch_ids(batch, self.vocab_size)
        return batch

    def logits(self, batch):
        out = self.forward_module(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  use_cache=False)
        return out.logits

    def logits_and_hidden_states(self, batch):
        """The logits and every layer's output (``output_hidden_states``, without the embeddings
        at index 0; the last one is what the model reports, e.g. after GPT-2's final layer norm)."""
        out = self.forward_module(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  use_cache=False, output_hidden_states=True)
        return out.logits, list(out.hidden_states[1:])

    def hidden_and_head(self, batch):
        out = self.core.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    use_cache=False)
        hidden = out.last_hidden_state
        weight, bias = self._head()
        self._verify_head(batch, hidden, weight, bias)
        return hidden, weight, bias

    def start(self, inputs):
        prompts = _prompts(inputs, "prompts")
        self._check_tokens(prompts)
        device = self.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's last token is a real one
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        kwargs = {}
        if self._takes_positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        elif len({len(p) for p in prompts}) > 1:
            raise ValueError(f"{type(self.model).__name__} takes no position_ids, so prompts of different "
                             "lengths cannot be decoded in one call; generate them separately")
        out = self.core(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
        state = {"cache": _cache_of(out), "mask": mask, "next_pos": mask.sum(-1)}
        return out.logits[:, -1], state

    def step(self, state, tokens):
        mask = torch.cat([state["mask"], state["mask"].new_ones(state["mask"].shape[0], 1)], dim=1)
        kwargs = {"position_ids": state["next_pos"][:, None]} if self._takes_positions else {}
        kwargs[self._cache_arg] = state["cache"]
        out = self.core(input_ids=tokens[:, None], attention_mask=mask, use_cache=True, **kwargs)
        return out.logits[:, -1], {"cache": _cache_of(out), "mask": mask, "next_pos": state["next_pos"] + 1}

    def reorder_state(self, state, index):
        return {"cache": _reorder_cache(state["cache"], index), "mask": state["mask"][index],
                "next_pos": state["next_pos"][index]}


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _reorder_cache(cache, index: torch.Tensor):
    if hasattr(cache, "reorder_cache"):  # transformers Cache objects reorder in place
        cache.reorder_cache(index)
        return cache
    return tuple(tuple(t[index] for t in layer) for layer in cache)  # legacy tuples


# ============================================================================ encoder-decoder
class HFSeq2SeqAdapter(_HFAdapter):
    """A ``transformers`` encoder-decoder model (T5, BART, ...). Targets should end with the
    model's ``<eos>``; the decoder starts from ``config.decoder_start_token_id``."""

    kind = "seq2seq"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        cfg = model.config
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is None:
            raise ValueError(f"{type(model).__name__}.config.decoder_start_token_id is not set; "
                             "the decoder needs a start token")
        self.bos_id = _first_id(start)
        pad = getattr(cfg, "pad_token_id", None)
        self.pad_id = _first_id(pad) if pad is not None else 0

    def collate(self, examples):
        batch = collate_seq2seq(seq2seq_examples_as_ids(examples), pad_id=self.pad_id, bos_id=self.bos_id)
        check_batch_ids(batch, self.vocab_size)
        return batch

    def logits(self, batch):
        out = self.forward_module(input_ids=batch.src, attention_mask=batch.attention_mask,
                                  decoder_input_ids=batch.decoder_input, use_cache=False)
        return out.logits

    def hidden_and_head(self, batch):
        enc = self.core.get_encoder()(input_ids=batch.src, attention_mask=batch.attention_mask)
        dec = self.core.get_decoder()(input_ids=batch.decoder_input, encoder_hidden_states=enc.last_hidden_state,
                                       encoder_attention_mask=batch.attention_mask, use_cache=False)
        hidden = dec.last_hidden_state
        if getattr(self.core.config, "scale_decoder_outputs", False):  # T5 with tied embeddings
            hidden = hidden * (self.core.config.d_model ** -0.5)
        weight, bias = self._head()
        extra = getattr(self.model, "final_logits_bias", None)  # BART-style models add this buffer
        if isinstance(extra, torch.Tensor):
            bias = extra.reshape(-1) if bias is None else bias + extra.reshape(-1)
        self._verify_head(batch, hidden, weight, bias)
        return hidden, weight, bias

    def start(self, inputs):
        sources = _prompts(inputs, "sources")
        self._check_tokens(sources)
        device = self.device
        width = max(len(s) for s in sources)
        src = torch.full((len(sources), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sources), width), dtype=torch.long)
        for i, s in enumerate(sources):
            src[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        src, mask = src.to(device), mask.to(device)
        enc = self.core.get_encoder()(input_ids=src, attention_mask=mask)
        state = {"encoder": enc, "mask": mask, "cache": None}
        first = torch.full((len(sources),), self.bos_id, dtype=torch.long, device=device)
        return self.step(state, first)

    def step(self, state, tokens):
        out = self.core(encoder_outputs=state["encoder"], attention_mask=state["mask"],
                         decoder_input_ids=tokens[:, None], use_cache=True, **{self._cache_arg: state["cache"]})
        return out.logits[:, -1], {**state, "cache": _cache_of(out)}

    def reorder_state(self, state, index):
        enc = state["encoder"]
        enc = type(enc)(last_hidden_state=enc.last_hidden_state[index])
        cache = None if state["cache"] is None else _reorder_cache(state["cache"], index)
        return {"encoder": enc, "mask": state["mask"][index], "cache": cache}
