"""Decoding: greedy search, beam search and sampling (temperature, top-k, top-p).

Works for any model :func:`distilkit.adapters.adapt` accepts (distilkit's models, Hugging Face
causal and encoder-decoder models), through the adapter's ``start`` / ``step`` /
``reorder_state``; the Transformers keep a KV cache in their state, so each step costs one
token's worth of compute.
"""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence

import torch

from .adapters import ModelAdapter, adapt

__all__ = ["generate", "greedy", "beam_search", "sample"]


def _eos(adapter: ModelAdapter) -> int:
    return -1 if adapter.eos_id is None else adapter.eos_id  # -1: no row ever stops early


def _check_common(model, inputs, max_new_tokens) -> ModelAdapter:
    try:
        adapter = adapt(model)
    except TypeError as exc:
        raise TypeError(f"model cannot be decoded (no start/step/reorder_state adapter): {exc}") from None
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise ValueError("inputs must be a non-empty list of token-id lists")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    vocab = adapter.vocab_size
    if vocab is not None:
        for i, row in enumerate(inputs):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
                raise ValueError(f"inputs[{i}] must be a list of token ids, got {type(row).__name__}")
            for j, tok in enumerate(row):
                if isinstance(tok, bool) or not isinstance(tok, numbers.Integral):
                    raise TypeError(f"inputs[{i}][{j}] must be an int token id, got {type(tok).__name__}")
                if not 0 <= tok < vocab:
                    raise ValueError(f"inputs[{i}][{j}] = {tok} is outside the model's vocabulary "
                                     f"[0, {vocab}); encode inputs with the model's tokenizer")
    max_len = adapter.max_len
    if max_len is not None:
        longest = max(len(p) for p in inputs)
        if longest + max_new_tokens > max_len:
            raise ValueError(
                f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds the model's "
                f"max_len {max_len}; shorten the prompt or ask for fewer tokens"
            )
    return adapter


@torch.no_grad()
def greedy(model, inputs: Sequence[Sequence[int]], max_new_tokens: int = 60,
           stop_at_eos: bool = True) -> List[List[int]]:
    """Arg-max decoding. Returns one id list per input, without the final ``<eos>``.

    With ``stop_at_eos=False`` every row decodes exactly ``max_new_tokens`` tokens (for timing).
    """
    adapter = _check_common(model, inputs, max_new_tokens)
    model = adapter.model
    was_training = model.training
    model.eval()
    try:
        logits, state = adapter.start(inputs)
        eos = _eos(adapter) if stop_at_eos else -1
        out = torch.empty(len(inputs), 0, dtype=torch.long, device=logits.device)
        done = torch.zeros(len(inputs), dtype=torch.bool, device=logits.device)
        for i in range(max_new_tokens):
            tok = logits.argmax(-1)
            tok = torch.where(done, torch.full_like(tok, eos), tok)
            out = torch.cat([out, tok[:, None]], dim=1)
            done |= tok == eos
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            logits, state = adapter.step(state, tok)
    finally:
        model.train(was_training)
    return [_cut(row, eos) for row in out.tolist()]


def _cut(ids: List[int], eos: int) -> List[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


@torch.no_grad()
def sample(
    model,
    inputs: Sequence[Sequence[int]],
    max_new_tokens: int = 60,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> List[List[int]]:
    """Ancestral sampling from ``softmax(logits / temperature)``, optionally restricted to the
    ``top_k`` most likely tokens and/or the smallest set whose probability reaches ``top_p``."""
    adapter = _check_common(model, inputs, max_new_tokens)
    model = adapter.model
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p!r}")
    was_training = model.training
    model.eval()
    try:
        logits, state = adapter.start(inputs)
        eos = _eos(adapter)
        rows = [[] for _ in inputs]
        done = torch.zeros(len(inputs), dtype=torch.bool, device=logits.device)
        for i in range(max_new_tokens):
            scores = logits.float() / temperature
            if top_k is not None and top_k < scores.shape[-1]:
                kth = scores.topk(top_k, dim=-1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if top_p is not None and top_p < 1:
                sorted_scores, order = scores.sort(dim=-1, descending=True)
                cum = sorted_scores.softmax(-1).cumsum(-1)
                drop_sorted = (cum - sorted_scores.softmax(-1)) >= top_p  # keep the first token
                drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
                scores = scores.masked_fill(drop, float("-inf"))
            probs = scores.softmax(-1)
            tok = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)
            tok = torch.where(done, torch.full_like(tok, eos), tok)
            for r, t in enumerate(tok.tolist()):
                if not done[r]:
                    rows[r].append(t)
            done |= tok == eos
            if bool(done.all()) or i == max_new_tokens - 1:
                break
            logits, state = adapter.step(state, tok)
    finally:
        model.train(was_training)
    return [_cut(r, eos) for r in rows]


def beam_search(
    model,
    inputs: Sequence[Sequence[int]],
    max_new_tokens: int = 60,
    beam_size: int = 4,
    length_penalty: float = 1.0,
) -> List[List[int]]:
    """Beam search; finished hypotheses are ranked by ``log p / length ** length_penalty``.

    Returns the best hypothesis per input (without ``<eos>``); :func:`beam_candidates` returns
    all of them.
    """
    ranked = beam_candidates(model, inputs, max_new_tokens, beam_size, length_penalty)
    return [hyps[0] if hyps else [] for hyps in ranked]


@torch.no_grad()
def beam_candidates(
    model,
    inputs: Sequence[Sequence[int]],
    max_new_tokens: int = 60,
    beam_size: int = 4,
    length_penalty: float = 1.0,
) -> List[List[List[int]]]:
    """The finished hypotheses of a beam search (as :func:`beam_search`), per input, best first.

    Each input gets at most ``beam_size`` hypotheses (without ``<eos>``), ranked by
    ``log p / length ** length_penalty``; the first is what :func:`beam_search` returns. Used,
    for example, to pick the candidate closest to a reference (Kim & Rush's Seq-Inter).
    """
    adapter = _check_common(model, inputs, max_new_tokens)
    model = adapter.model
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    was_training = model.training
    model.eval()
    try:
        eos = _eos(adapter)
        n, k = len(inputs), beam_size
        logits, state = adapter.start(inputs)
        device = logits.device
        vocab = logits.shape[-1]
        # expand to n * k rows; only the first beam of each input is live at the start
        index = torch.arange(n, device=device).repeat_interleave(k)
        state = adapter.reorder_state(state, index)
        logp = logits.float().log_softmax(-1)[index]
        scores = torch.full((n, k), float("-inf"), device=device)
        scores[:, 0] = 0.0
        seqs = torch.empty(n * k, 0, dtype=torch.long, device=device)
        finished: List[List[tuple]] = [[] for _ in range(n)]
        for step in range(max_new_tokens):
            cand = (scores.view(n * k, 1) + logp).view(n, k * vocab)
            top, idx = cand.topk(2 * k, dim=-1)  # 2k so that k live beams survive <eos>
            beam_idx, tok_idx = idx // vocab, idx % vocab
            new_scores = torch.full((n, k), float("-inf"), device=device)
            new_rows = torch.zeros(n, k, dtype=torch.long, device=device)
            new_toks = torch.full((n, k), eos, dtype=torch.long, device=device)
            for b in range(n):
                if len(finished[b]) >= k:  # this input is done: its beams stay dead
                    continue
                filled = 0
                for rank, (s, bi, ti) in enumerate(zip(top[b].tolist(), beam_idx[b].tolist(),
                                                       tok_idx[b].tolist())):
                    if s == float("-inf"):
                        break
                    if ti == eos or step == max_new_tokens - 1:
                        if rank >= k:  # only a candidate among the k best may finish
                            continue
                        hyp = seqs[b * k + bi].tolist() + ([] if ti == eos else [ti])
                        length = len(hyp) + 1
                        finished[b].append((s / length**length_penalty, hyp))
                    elif filled < k:
                        new_scores[b, filled], new_rows[b, filled], new_toks[b, filled] = s, b * k + bi, ti
                        filled += 1
                    if filled == k and len(finished[b]) >= k:
                        break
            # stop once every input has k finished hypotheses (or nothing is left alive)
            if all(len(fin) >= k for fin in finished) or bool(torch.isinf(new_scores).all()):
                break
            rows = new_rows.view(-1)
            seqs = torch.cat([seqs[rows], new_toks.view(-1, 1)], dim=1)
            state = adapter.reorder_state(state, rows)
            scores = new_scores
            logits, state = adapter.step(state, new_toks.view(-1))
            logp = logits.float().log_softmax(-1)
    finally:
        model.train(was_training)
    return [[hyp for _, hyp in sorted(fin, key=lambda f: f[0], reverse=True)[:k]] for fin in finished]


def generate(model, inputs: Sequence[Sequence[int]], method: str = "greedy", **kwargs) -> List[List[int]]:
    """Dispatch to :func:`greedy`, :func:`beam_search` or :func:`sample` by ``method``."""
    methods = {"greedy": greedy, "beam": beam_search, "sample": sample}
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}; got {method!r}")
    return methods[method](model, inputs, **kwargs)
