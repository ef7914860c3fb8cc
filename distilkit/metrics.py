"""Metrics: perplexity, multi-reference corpus BLEU (sacreBLEU), slot error rate for the
data-to-text task, the repeated n-gram rate, teacher-student agreement, and greedy decoding
speed."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .adapters import adapt
from .data import IGNORE_INDEX, extract_slots
from .decoding import greedy
from .losses import per_token_divergence
from .training import evaluate_loss

__all__ = [
    "perplexity",
    "bits_per_character",
    "corpus_bleu",
    "slot_errors",
    "slot_error_rate",
    "repeated_ngram_rate",
    "agreement",
    "decoding_speed",
    "SlotErrors",
]


def perplexity(model: nn.Module, examples: Sequence, collate: Optional[Callable] = None,
               batch_size: int = 256) -> float:
    """``exp`` of the token-mean cross-entropy of ``model`` on ``examples`` (teacher forcing)."""
    return math.exp(evaluate_loss(model, examples, collate, batch_size))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (Papineni et al., 2002) computed by sacreBLEU (Post, 2018).

    hypotheses: one string per input; references: for each input, a list of reference strings
    (any number >= 1; inputs may have different numbers). Returns BLEU in [0, 100].
    """
    import sacrebleu

    if isinstance(hypotheses, str) or len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses ({len(hypotheses)}) and references ({len(references)}) must be lists of equal length"
        )
    if len(hypotheses) == 0:
        raise ValueError("hypotheses must not be empty")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{i}] must be a non-empty list of strings")
    width = max(len(r) for r in references)
    # sacreBLEU takes reference *streams*; None marks a missing reference for an input
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize="13a").score)


def sentence_bleu(hypothesis: str, references: Sequence[str]) -> float:
    """BLEU of one hypothesis against its references (sacreBLEU's sentence BLEU: 13a
    tokenisation, exponential smoothing of zero n-gram counts), in [0, 100]."""
    import sacrebleu

    if not isinstance(hypothesis, str):
        raise TypeError(f"hypothesis must be a string, got {type(hypothesis).__name__}")
    if isinstance(references, str) or len(references) == 0:
        raise ValueError("references must be a non-empty list of strings")
    return float(sacrebleu.sentence_bleu(hypothesis, list(references), tokenize="13a").score)


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU (Zhu et al., 2018, Texygen): each text's sentence BLEU against all the others
    as references, averaged. Higher means the texts resemble one another (less diverse)."""
    if isinstance(texts, str) or len(texts) < 2:
        raise ValueError("texts must be a list of at least 2 strings")
    return sum(sentence_bleu(t, list(texts[:i]) + list(texts[i + 1:])) for i, t in enumerate(texts)) / len(texts)


@dataclass
class SlotErrors:
    """Counts for the slot error rate (Wen et al., 2015): ``(missing + wrong + added) / slots``."""

    slots: int = 0
    missing: int = 0
    wrong: int = 0
    added: int = 0

    @property
    def rate(self) -> float:
        return (self.missing + self.wrong + self.added) / max(self.slots, 1)


def slot_errors(mrs: Sequence[Dict[str, str]], texts: Sequence[str]) -> SlotErrors:
    """Compare each text with its meaning representation: a slot is *missing* if its value is
    not mentioned, *wrong* if another value of that attribute is mentioned instead (or as
    well), and *added* for every attribute the text mentions that the MR does not have."""
    if len(mrs) != len(texts):
        raise ValueError(f"mrs ({len(mrs)}) and texts ({len(texts)}) must have equal length")
    e = SlotErrors()
    for mr, text in zip(mrs, texts):
        found = extract_slots(text)
        for attribute, value in mr.items():
            e.slots += 1
            values = found.get(attribute, set())
            if value not in values:
                if values:
                    e.wrong += 1
                else:
                    e.missing += 1
            elif len(values) > 1:
                e.wrong += 1
        e.added += sum(1 for a in found if a not in mr)
    return e


def slot_error_rate(mrs: Sequence[Dict[str, str]], texts: Sequence[str]) -> float:
    """Slot error rate as a fraction in [0, inf) (added slots can push it above 1)."""
    return slot_errors(mrs, texts).rate


def repeated_ngram_rate(texts: Sequence[str], n: int = 4) -> float:
    """Percentage of ``texts`` in which some word n-gram occurs twice or more (punctuation tokens
    ``.`` and ``,`` skipped): a description that says one clause twice ("it is in the riverside .
    it is in the riverside .") counts. BLEU barely notices such a repeat; this rate does.

    On the task's own references it is 0.4% at ``n = 4`` (two phrasings can share four words),
    so a model near that rate does not repeat itself."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of str")
    if not texts:
        raise ValueError("texts is empty: a rate over no texts is undefined")
    repeated = 0
    for text in texts:
        words = [w for w in text.split() if w not in (".", ",")]
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        repeated += len(grams) != len(set(grams))
    return 100.0 * repeated / len(texts)


@torch.no_grad()
def agreement(student: nn.Module, teacher: nn.Module, examples: Sequence,
              collate: Optional[Callable] = None, batch_size: int = 256,
              temperature: float = 1.0) -> Dict[str, float]:
    """How closely the student imitates the teacher on held-out ``examples`` (teacher forcing):
    ``top1``: fraction of target positions where both arg-maxes agree; ``kl``: mean
    KL(teacher || student) per position, in nats. The teacher scores the student's batches
    (see :func:`distilkit.adapters.adapt`)."""
    s_ad, t_ad = adapt(student, collate=collate), adapt(teacher)
    student, teacher = s_ad.model, t_ad.model
    device = s_ad.device
    s_was, t_was = student.training, teacher.training
    student.eval()
    teacher.eval()
    agree = kl = count = 0.0
    try:
        for i in range(0, len(examples), batch_size):
            batch = s_ad.collate(examples[i : i + batch_size]).to(device)
            s, t = s_ad.logits(batch).float(), t_ad.logits(batch).float()
            mask = batch.labels != IGNORE_INDEX
            agree += ((s.argmax(-1) == t.argmax(-1)) & mask).sum().item()
            kl += per_token_divergence(s, t, temperature=temperature)[mask].sum().item()
            count += mask.sum().item()
    finally:
        student.train(s_was)
        teacher.train(t_was)
    return {"top1": agree / max(count, 1), "kl": kl / max(count, 1)}


@torch.no_grad()
def decoding_speed(model: nn.Module, inputs: Sequence[Sequence[int]], new_tokens: int = 30,
                   repeats: int = 1) -> float:
    """Greedy tokens per second at batch size 1, decoding exactly ``new_tokens`` tokens per
    input (``<eos>`` is ignored so that every model does the same work)."""
    if len(inputs) == 0:
        raise ValueError("inputs must not be empty")
    adapt(model).model.eval()

    greedy(model, [list(inputs[0])], max_new_tokens=min(new_tokens, 3), stop_at_eos=False)  # warm-up
    n = 0
    start = time.perf_counter()
    for _ in range(repeats):
        for x in inputs:
            out = greedy(model, [list(x)], max_new_tokens=new_tokens, stop_at_eos=False)
            n += len(out[0])
    return n / (time.perf_counter() - start)


def bleu_and_ser(model: nn.Module, data, split: str = "test", max_new_tokens: int = 80,
                 batch_size: int = 200, method: str = "greedy", **kwargs) -> Dict[str, object]:
    """Decode a data-to-text split and score it: BLEU against all references and the slot
    error rate. Returns ``{"bleu", "slot_error_rate", "outputs"}``."""
    from .decoding import generate

    items = getattr(data, split)
    mrs = [mr for mr, _ in items]
    refs = [r if isinstance(r, list) else [r] for _, r in items]
    inputs = data.encode_inputs(mrs)
    outs: List[str] = []
    for i in range(0, len(inputs), batch_size):
        ids = generate(model, inputs[i : i + batch_size], method=method, max_new_tokens=max_new_tokens, **kwargs)
        outs.extend(data.tokenizer.decode(x) for x in ids)
    return {"bleu": corpus_bleu(outs, refs), "slot_error_rate": slot_error_rate(mrs, outs), "outputs": outs}


@torch.no_grad()
def bits_per_character(model: nn.Module, tokenizer, texts: Sequence, batch_size: int = 64) -> float:
    """Total negative log-likelihood of the texts in bits, divided by the number of characters
    it covers -- comparable between models with different tokenizers (a model that cuts the
    text into fewer, longer tokens pays more bits per token, over fewer tokens).

    ``texts``: strings, or ``(prompt, continuation)`` pairs of which only the continuation is
    scored. A decoder-only model predicts every token but the first from the ones before it; a
    text's scored characters run from the first scored token's first character to the last
    token's last (for a pair: the tokens that start at or after the prompt's end).
    """
    from .tokenalign import encode_with_spans
    from .training.cross import text_of

    adapter = adapt(model)
    was = adapter.model.training
    adapter.model.eval()
    bits, chars = 0.0, 0
    try:
        for i in range(0, len(texts), batch_size):
            rows, counted = [], []
            for k, ex in enumerate(texts[i: i + batch_size]):
                text, prompt = text_of(ex, i + k)
                ids, spans = encode_with_spans(tokenizer, text)
                keep = [spans[t][0] >= prompt for t in range(1, len(ids))]
                if len(ids) < 2 or not any(keep):
                    continue
                if adapter.max_len is not None and len(ids) - 1 > adapter.max_len:
                    raise ValueError(f"texts[{i + k}] is {len(ids)} tokens; the model reads at most "
                                     f"{adapter.max_len} (+1 predicted): use shorter texts")
                first = next(t for t in range(1, len(ids)) if keep[t - 1])
                chars += spans[-1][1] - spans[first][0]
                rows.append(ids)
                counted.append(keep)
            if not rows:
                continue
            batch = adapter.collate(rows).to(adapter.device)
            for r, keep in enumerate(counted):
                batch.labels[r, : len(keep)][~torch.tensor(keep, device=batch.labels.device)] = IGNORE_INDEX
            logits = adapter.logits(batch).float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1),
                                                    ignore_index=IGNORE_INDEX, reduction="sum")
            bits += float(nll) / math.log(2)
    finally:
        adapter.model.train(was)
    if chars == 0:
        raise ValueError("no characters to score: every text is shorter than two tokens (or all prompt)")
    return bits / chars
