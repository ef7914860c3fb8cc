"""What the student learns from: the :class:`Targets` contract, every kind of target, and the one
mapping from KD settings to the loss (:func:`kd_loss`).

The training loop (:mod:`distilkit.training.loop`) knows nothing of teachers: it calls a
:class:`Targets` object at four fixed points, and every way of distilling is one subclass:

========================== ===============================================================
:class:`HardLabels`        the labels alone (a teacher, or a baseline student)
:class:`TeacherLogits`     word-level KD from a live, frozen teacher
:class:`CachedTeacherLogits` word-level KD from logits stored with the examples
:class:`CacheTargets`      word-level KD from a top-k teacher cache on disk
:class:`OnPolicyTargets`   on-policy KD: the student's own samples, scored by the teacher
:class:`TeacherSamples`    sequence-level KD on the fly: the teacher's samples, at every step
``HiddenStateTargets``     word-level KD plus intermediate layers (:mod:`.hidden`)
``CrossTokenizerTargets``  a teacher with another tokenizer, from texts (:mod:`.cross`)
========================== ===============================================================

Sequence-level KD changes the data instead (:func:`sequence_level_data`: the teacher's own
outputs become the labels) and trains with :class:`HardLabels` or any of the above. A new KD
method is one new subclass here, plus, if it needs one, one loss in :mod:`distilkit.losses`.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..adapters import ModelAdapter, adapt
from ..cache import CachedBatch, IndexedExamples, TeacherCache
from ..data import IGNORE_INDEX
from ..decoding import beam_search, greedy, sample
from ..losses import TopKTeacher, distillation_loss, linear_distillation_loss, topk_distillation_loss
from ..losses.checks import check_unit
from ..protocol import fit_to_context
from ..vocab import VocabAlignment, check_teacher
from .config import KDConfig

__all__ = [
    "Targets",
    "HardLabels",
    "TeacherLogits",
    "CachedTeacherLogits",
    "CacheTargets",
    "OnPolicyTargets",
    "TeacherSamples",
    "kd_loss",
    "student_output",
    "precompute_teacher_logits",
    "sequence_level_data",
]


def _kd_or_default(kd: Optional[KDConfig], **defaults) -> KDConfig:
    """``kd``, or the default settings of a kind of target (the one place they are made)."""
    if kd is not None and not isinstance(kd, KDConfig):
        raise TypeError(f"kd must be a distilkit KDConfig or None, got {type(kd).__name__}")
    return kd if kd is not None else KDConfig(**defaults)


# ============================================================================ the loss
def student_output(adapter: ModelAdapter, batch, teacher_out, kd: Optional[KDConfig]):
    """The student's logits (batch, seq, vocab) -- or, for ``kd.memory_bounded`` distillation,
    its ``(hidden, weight, bias)`` (:meth:`ModelAdapter.hidden_and_head`)."""
    if teacher_out is not None and kd is not None and kd.memory_bounded:
        if adapter.forward_module is not adapter.model:
            raise ValueError(
                "KDConfig.memory_bounded is not supported under DistributedDataParallel: the hidden states "
                "are computed outside the wrapper's forward, so the ranks' gradients would not be "
                "synchronised; use memory_bounded=False with torchrun")
        return adapter.hidden_and_head(batch)
    return adapter.logits(batch)


def kd_loss(student_out, teacher_out, labels: torch.Tensor, kd: Optional[KDConfig], *,
            check_values: bool = False, alignment: Optional[VocabAlignment] = None) -> torch.Tensor:
    """The *summed* (not averaged) loss of one micro-batch -- the one place where the settings of
    a :class:`KDConfig` meet the loss functions.

    ``student_out``: logits (batch, seq, vocab), or a ``(hidden, weight, bias)`` triple from
    :func:`student_output`. ``teacher_out``: what the targets returned -- ``None`` (cross-entropy
    on the labels), teacher logits (batch, seq, vocab_t), or a :class:`~distilkit.losses.TopKTeacher`
    read from a cache. labels: (batch, seq). ``alignment`` brings student and teacher columns to
    one width. ``check_values=False`` skips the loss's value checks, which read tensors back to
    the host (the hot path); the loop turns them on only to explain a non-finite loss.
    """
    if teacher_out is None:
        logits = student_out
        if isinstance(logits, tuple):
            hidden, weight, bias = logits
            logits = hidden @ weight.T + (bias if bias is not None else 0)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    settings = dict(alpha=kd.alpha, divergence=kd.divergence, beta=kd.beta, t2_scale=kd.t2_scale,
                    reduction="sum")
    if isinstance(teacher_out, TopKTeacher):
        if alignment is not None:
            raise ValueError("a teacher cache holds the teacher's own vocabulary; vocab_alignment "
                             "does not apply to it")
        if isinstance(student_out, tuple):  # kd.memory_bounded: (hidden, weight, bias)
            hidden, weight, bias = student_out
            student_out = hidden @ weight.T + (bias if bias is not None else 0)
        return topk_distillation_loss(student_out, teacher_out, labels, **settings)
    if isinstance(student_out, tuple):
        hidden, weight, bias = student_out
        if alignment is not None:
            weight, bias = alignment.student_head(weight, bias)
            teacher_out = alignment.teacher(teacher_out)
        return linear_distillation_loss(hidden, weight, bias, teacher_out, labels, temperature=kd.temperature,
                                        chunk_size=kd.chunk_size, check_values=check_values, **settings)
    if alignment is not None:
        student_out, teacher_out = alignment.apply(student_out, teacher_out)
    return distillation_loss(student_out, teacher_out, labels, temperature=kd.temperature,
                             check_values=check_values, **settings)


# ============================================================================ the contract
class Targets:
    """The loop's one hook: what the student learns from at each step.

    :func:`~distilkit.training.train` calls, in this order:

    1. :meth:`check` (student adapter) -> vocabulary alignment or ``None`` -- once, before anything
       moves: can the teacher score the student's batches?
    2. :meth:`prepare` (examples, collate, vocab size) -> (examples, collate) -- once;
    3. ``targets(batch, student)`` -> ``(batch, teacher_out)`` -- every micro-batch, on the device,
       under autocast; may replace the batch (on-policy samples);
    4. :meth:`student_output` (student adapter, batch, teacher_out) -> what the student produced
       (its logits by default);
    5. :meth:`loss_sum` (student output, teacher_out, labels, ...) -> the summed loss.

    Attributes the loop reads: ``teacher`` (a module or ``None``; moved to the device and kept in
    eval mode), ``kd`` (a :class:`KDConfig` or ``None``; ``kd.memory_bounded`` makes the loop
    hand :meth:`loss_sum` the student's hidden states and output layer instead of its logits) and
    ``learned`` (a module or ``None``: parts of the loss trained with the student, such as the
    projection of hidden-state KD; the loop moves it to the device, adds :meth:`parameters` to
    the optimizer and saves it in training checkpoints; it is never exported with the student).
    Subclasses implement ``__call__``; the other methods have working defaults.
    """

    teacher: Optional[nn.Module] = None
    kd: Optional[KDConfig] = None
    #: the teacher's adapter, and the tokenizers to compare before training (None: unknown)
    teacher_adapter: Optional[ModelAdapter] = None
    student_tokenizer = None
    teacher_tokenizer = None
    learned: Optional[nn.Module] = None

    def __call__(self, batch, student: nn.Module):  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(batch, student)")

    def check(self, student: ModelAdapter) -> Optional[VocabAlignment]:
        """Before any step: can the teacher score the student's batches? Returns the vocabulary
        alignment to apply to their logits (``None`` when the widths match or there is no teacher)."""
        if self.teacher is None:
            return None
        if self.teacher is student.model:
            raise ValueError("teacher and student must be different models (got the same object)")
        if student.vocab_size is None:  # a custom module trained with collate=: nothing to compare
            return None
        kd = self.kd if self.kd is not None else _kd_or_default(None)
        return check_teacher(student, self.teacher_adapter or self.teacher, kd.vocab_alignment,
                             divergence=kd.divergence, beta=kd.beta,
                             student_tokenizer=self.student_tokenizer, teacher_tokenizer=self.teacher_tokenizer)

    def prepare(self, examples: Sequence, collate: Callable, vocab_size: Optional[int]):
        """Called once before the first step with the training examples, the student's collate
        and its vocabulary size; returns the ``(examples, collate)`` to train on. A teacher
        cache checks itself against them here and indexes the examples to find its rows."""
        return examples, collate

    def parameters(self) -> List[nn.Parameter]:
        """The trainable parameters of ``learned`` (none by default), optimised with the student's."""
        return [p for p in self.learned.parameters() if p.requires_grad] if self.learned is not None else []

    def student_output(self, student: ModelAdapter, batch, teacher_out):
        """What the loss needs from the student (:func:`student_output`: its logits, or its final
        hidden states and output layer for ``kd.memory_bounded``)."""
        return student_output(student, batch, teacher_out, self.kd)

    def loss_sum(self, student_out, teacher_out, labels: torch.Tensor, check_values: bool = False,
                 alignment: Optional[VocabAlignment] = None) -> torch.Tensor:
        """The micro-batch's loss *summed* over counted tokens (:func:`kd_loss` with ``self.kd``)."""
        return kd_loss(student_out, teacher_out, labels, self.kd, check_values=check_values, alignment=alignment)


# ============================================================================ the kinds
class HardLabels(Targets):
    """Plain maximum likelihood on the batch's labels (how a teacher or a baseline is trained)."""

    def __call__(self, batch, student):
        return batch, None


class TeacherLogits(Targets):
    """Word-level KD: the frozen teacher's logits at every target position.

    The teacher is put in eval mode and run under ``torch.no_grad()``; its parameters are
    never updated, whatever their ``requires_grad`` flag says. It scores the student's batches
    through its adapter (:func:`distilkit.adapters.adapt`), so any model of the student's kind
    and tokenizer works: distilkit's or Hugging Face's. ``student_tokenizer`` and
    ``teacher_tokenizer`` (optional) are compared before training (:mod:`distilkit.vocab`).
    """

    def __init__(self, teacher: Union[nn.Module, ModelAdapter], kd: Optional[KDConfig] = None, *,
                 student_tokenizer=None, teacher_tokenizer=None):
        if not isinstance(teacher, (nn.Module, ModelAdapter)):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        try:
            self.adapter = adapt(teacher)
        except TypeError:  # any module called as teacher(batch) on the student's batches
            self.adapter = adapt(teacher, collate=_no_collate)
        self.teacher_adapter = self.adapter
        self.teacher = self.adapter.model
        self.kd = _kd_or_default(kd)
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        if type(self) is TeacherLogits and (self.kd.hidden_weight > 0 or self.kd.cross_tokenizer):
            what = "hidden_weight > 0" if self.kd.hidden_weight > 0 else "cross_tokenizer"
            other = "HiddenStateTargets" if self.kd.hidden_weight > 0 else "CrossTokenizerTargets"
            raise ValueError(f"KDConfig.{what} needs {other} (dk.distill picks it); TeacherLogits compares "
                             "logits only")

    @torch.no_grad()
    def __call__(self, batch, student):
        self.teacher.eval()
        return batch, self.adapter.logits(batch)


def _no_collate(examples):
    raise TypeError("this teacher has no collate of its own: it scores the student's batches")


class OnPolicyTargets(Targets):
    """On-policy KD (GKD, Agarwal et al. 2024): with probability ``lam`` a batch's targets are
    replaced by sequences *sampled from the student itself*, and the teacher scores every
    sampled position; otherwise the batch keeps its own targets. The student thus learns to
    recover from its own mistakes (exposure bias).

    * Encoder-decoder pairs: the student describes each source, up to ``max_new_tokens``
      tokens.
    * Decoder-only pairs (``TransformerLM``, Hugging Face causal models) trained on
      ``(prompt, completion)`` examples: the student writes a completion of up to
      ``max_new_tokens`` tokens for each prompt; only the completion is scored.
    * Decoder-only pairs trained on plain windows: the first ``prompt_tokens`` tokens of each
      window are the prompt (default: half the shortest window) and the student continues it
      for up to ``max_new_tokens`` tokens, at most to the window's length.

    The labels of a sampled batch are the student's own tokens, so use ``kd.alpha = 1`` (the
    divergence alone); GKD pairs this with ``divergence="jsd"`` or ``"reverse_kl"``.
    Sampling draws from torch's global RNG, which checkpoints save, so runs stay resumable.
    """

    def __init__(self, teacher: nn.Module, kd: Optional[KDConfig] = None, lam: float = 0.5,
                 max_new_tokens: int = 80, sample_temperature: float = 1.0,
                 prompt_tokens: Optional[int] = None):
        try:
            self.adapter = adapt(teacher)
        except TypeError:
            self.adapter = None
        if self.adapter is None or self.adapter.kind not in ("seq2seq", "lm"):
            raise TypeError("OnPolicyTargets needs a teacher of a known kind (an encoder-decoder or a "
                            f"decoder-only model), got {type(teacher).__name__}")
        check_unit("lam", lam, False, False)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if prompt_tokens is not None and (not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool)
                                          or prompt_tokens < 1):
            raise ValueError(f"prompt_tokens must be a positive int or None (half of each window), "
                             f"got {prompt_tokens!r}")
        self.teacher_adapter = self.adapter
        self.teacher, self.kd, self.lam = self.adapter.model, _kd_or_default(kd, alpha=1.0), float(lam)
        self.max_new_tokens, self.sample_temperature = max_new_tokens, sample_temperature
        self.prompt_tokens = prompt_tokens

    def writer(self, student: nn.Module) -> nn.Module:
        """The model whose samples replace the targets: the student itself (on-policy)."""
        return student

    def _seq2seq_samples(self, batch, student):
        srcs = [row[:n].tolist() for row, n in zip(batch.src.cpu(), batch.src_lengths.tolist())]
        samples = sample(self.writer(student), srcs, max_new_tokens=self.max_new_tokens,
                         temperature=self.sample_temperature)
        s_ad = adapt(student)
        return s_ad.collate([(s, y + [s_ad.eos_id]) for s, y in zip(srcs, samples)])

    def _lm_samples(self, batch, student):
        ids, labels = batch.input_ids.cpu(), batch.labels.cpu()
        lengths = (labels != IGNORE_INDEX).sum(1).tolist() if batch.attention_mask is None else \
            batch.attention_mask.cpu().sum(1).tolist()
        windows = [row[:n].tolist() + [int(lab[n - 1])] for row, lab, n in zip(ids, labels, lengths)]
        scored = (labels != IGNORE_INDEX).int()
        first = scored.argmax(1).tolist()  # the first scored position of each row
        if any(first):  # (prompt, completion) examples: each row's own prompt, max_new_tokens new ones
            prompts, new = [w[: f + 1] for w, f in zip(windows, first)], self.max_new_tokens
        else:  # plain windows: the first prompt_tokens tokens (default: half the shortest window)
            shortest = min(len(w) for w in windows)
            prompt = self.prompt_tokens if self.prompt_tokens is not None else max(1, shortest // 2)
            if prompt >= shortest:
                raise ValueError(f"prompt_tokens = {prompt} leaves nothing to sample in a window of "
                                 f"{shortest} tokens; use a smaller prompt_tokens")
            prompts, new = [w[:prompt] for w in windows], min(self.max_new_tokens, shortest - prompt)
        samples = [None] * len(prompts)
        for n in sorted({len(q) for q in prompts}):  # one call per prompt length (some models need it)
            rows = [j for j, q in enumerate(prompts) if len(q) == n]
            for j, y in zip(rows, sample(self.writer(student), [prompts[j] for j in rows], max_new_tokens=new,
                                         temperature=self.sample_temperature)):
                samples[j] = y
        s_ad = adapt(student)
        stop = [] if s_ad.eos_id is None else [s_ad.eos_id]  # a sample that ended keeps its <eos>
        # the prompt is data: as (prompt, completion) pairs only the continuation is scored
        return s_ad.collate([(p, y + (stop if len(y) < new else [])) for p, y in zip(prompts, samples)])

    @torch.no_grad()
    def __call__(self, batch, student):
        self.teacher.eval()
        if float(torch.rand(())) < self.lam:
            device = batch.labels.device
            was = student.training
            make = self._lm_samples if self.adapter.kind == "lm" else self._seq2seq_samples
            try:
                batch = make(batch, student).to(device)
            finally:
                student.train(was)
        return batch, self.adapter.logits(batch)


class TeacherSamples(OnPolicyTargets):
    """Sequence-level KD on the fly (TRL's ``seq_kd``): with probability ``lam`` (default 1) a
    batch's completions are replaced by ones *the teacher samples* for its prompts (or sources),
    and the student learns from them -- from the teacher's tokens as labels and its logits on them
    as soft targets, weighted by ``kd.alpha`` (default 0.5, as :class:`KDConfig`). Unlike
    :func:`sequence_level_data` (the teacher decodes every input once, before training), each step
    sees fresh samples. The prompts are those of :class:`OnPolicyTargets`: a
    ``(prompt, completion)`` example's prompt, a source, or the start of a plain window;
    ``max_new_tokens`` bounds the sample, ``sample_temperature`` its randomness."""

    def __init__(self, teacher: nn.Module, kd: Optional[KDConfig] = None, lam: float = 1.0,
                 max_new_tokens: int = 80, sample_temperature: float = 1.0,
                 prompt_tokens: Optional[int] = None):
        super().__init__(teacher, kd if kd is not None else _kd_or_default(None), lam=lam,
                         max_new_tokens=max_new_tokens, sample_temperature=sample_temperature,
                         prompt_tokens=prompt_tokens)

    def writer(self, student: nn.Module) -> nn.Module:
        """The teacher writes the targets."""
        return self.teacher


class CachedTeacherLogits(Targets):
    """Word-level KD from teacher logits stored with the examples (see
    :func:`precompute_teacher_logits`): the teacher runs once, not at every step."""

    def __init__(self, kd: Optional[KDConfig] = None):
        self.kd = _kd_or_default(kd)

    def __call__(self, batch, student):
        if getattr(batch, "teacher_logits", None) is None:  # a custom batch type may lack the field
            raise ValueError("CachedTeacherLogits needs examples made by precompute_teacher_logits()")
        return batch, batch.teacher_logits.float()


class CacheTargets(Targets):
    """Word-level KD from a :class:`~distilkit.cache.TeacherCache` (what
    ``dk.distill(student, cache, examples)`` uses): no teacher in memory; each batch carries its
    rows (:meth:`TeacherCache.collate_fn`) and the loss is
    :func:`~distilkit.losses.topk_distillation_loss`. ``kd.temperature`` must be the cache's."""

    def __init__(self, cache: TeacherCache, kd: Optional[KDConfig] = None):
        if not isinstance(cache, TeacherCache):
            raise TypeError(f"cache must be a TeacherCache, got {type(cache).__name__}")
        self.cache = cache
        self.kd = _kd_or_default(kd, temperature=cache.temperature)

    def prepare(self, examples: Sequence, collate: Callable, vocab_size: Optional[int]):
        """Check the cache against the examples and the student; index the examples."""
        self.cache.check(examples, vocab_size=vocab_size, temperature=self.kd.temperature)
        return IndexedExamples(examples), self.cache.collate_fn(collate)

    def __call__(self, batch, student):
        if not isinstance(batch, CachedBatch):
            raise TypeError("CacheTargets needs the batches its prepare() makes")
        return batch.batch, batch.teacher


# ============================================================================ targets as data
@torch.no_grad()
def precompute_teacher_logits(
    teacher: nn.Module,
    examples: Sequence,
    *,
    collate: Optional[Callable] = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
    max_length: Optional[int] = None,
) -> list:
    """Run the frozen teacher once over ``examples`` and attach its logits to each of them.

    Returns new examples ``(*example, logits)`` where logits has shape (tgt_len, vocab) and
    ``dtype`` (float16 halves the memory; the loss upcasts). Use with :class:`CachedTeacherLogits`.
    Examples longer than the teacher reads are an error, or cut to ``max_length`` first.
    """
    adapter = adapt(teacher, collate=collate)
    examples = fit_to_context(adapter, examples, max_length)
    teacher, collate, device = adapter.model, adapter.collate, adapter.device
    was = teacher.training
    teacher.eval()
    out = []
    try:
        for i in tqdm(range(0, len(examples), batch_size), desc="teacher logits", disable=not progress):
            chunk = examples[i : i + batch_size]
            batch = collate(chunk).to(device)
            logits = adapter.logits(batch).to(dtype).cpu()
            for j, ex in enumerate(chunk):
                row = logits[j][batch.labels[j].cpu() != IGNORE_INDEX].clone()  # the scored positions
                out.append((*ex, row) if isinstance(ex, tuple) else (ex, row))
    finally:
        teacher.train(was)
    return out


def sequence_level_data(
    teacher: nn.Module,
    inputs: Sequence[Sequence[int]],
    *,
    method: str = "beam",
    beam_size: int = 4,
    max_new_tokens: int = 80,
    batch_size: int = 256,
    eos_id: Optional[int] = None,
    progress: bool = True,
) -> List[Tuple[List[int], List[int]]]:
    """Sequence-level KD data (Kim & Rush, 2016): decode every input with the teacher and use
    the teacher's output (ending in ``<eos>``) as the new target. Returns (source, target) pairs.
    Inputs on which the teacher produces nothing are dropped."""
    if method not in ("beam", "greedy"):
        raise ValueError(f"method must be 'beam' or 'greedy', got {method!r}")
    eos = adapt(teacher).eos_id if eos_id is None else eos_id
    out = []
    for i in tqdm(range(0, len(inputs), batch_size), desc="teacher decoding", disable=not progress):
        chunk = [list(x) for x in inputs[i : i + batch_size]]
        if method == "beam":
            hyps = beam_search(teacher, chunk, max_new_tokens=max_new_tokens, beam_size=beam_size)
        else:
            hyps = greedy(teacher, chunk, max_new_tokens=max_new_tokens)
        out.extend((src, hyp + [eos]) for src, hyp in zip(chunk, hyps) if hyp)
    return out
