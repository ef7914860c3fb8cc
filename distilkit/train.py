"""One training loop for teachers (hard labels) and students (distillation).

The loop is ordinary PyTorch -- AdamW, warm-up + cosine schedule, gradient clipping,
gradient accumulation, bf16 autocast on CUDA, periodic validation -- with one pluggable
step: the *targets*. A :class:`Targets` object turns a batch into what the student learns
from: the labels alone (:class:`HardLabels`), or the labels plus a frozen teacher's logits
(:class:`TeacherLogits`, word-level KD). Sequence-level KD changes the data instead
(:func:`sequence_level_data`: the teacher's own outputs become the labels).

Gradient accumulation is exact: the loss of every micro-batch is a *sum* over its tokens,
divided by the token count of the whole accumulated batch, so ``grad_accum=4`` with batch 16
gives the gradient of batch 64 however the padding falls.
"""

from __future__ import annotations

import inspect
import math
import re
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .adapters import ModelAdapter, adapt
from .checkpoint import CheckpointError, read_checkpoint, read_checkpoint_meta, write_checkpoint
from .data import IGNORE_INDEX, BatchIterator
from .distributed import (
    all_reduce_sum,
    barrier,
    maybe_no_sync,
    process_device,
    rank_slice,
    setup_distributed,
    wrap_model,
)
from .generate import beam_search, greedy, sample
from .losses import DIVERGENCES, _check_temperature, _check_unit, distillation_loss, linear_distillation_loss
from .models import _check_token_ids, config_to_dict
from .vocab import VOCAB_ALIGNMENTS, VocabAlignment, check_teacher

if TYPE_CHECKING:  # pragma: no cover
    from .cache import TeacherCache

__all__ = [
    "TrainConfig",
    "KDConfig",
    "History",
    "Targets",
    "HardLabels",
    "TeacherLogits",
    "CachedTeacherLogits",
    "OnPolicyTargets",
    "precompute_teacher_logits",
    "resolve_device",
    "train",
    "distill",
    "evaluate_loss",
    "sequence_level_data",
    "default_collate",
]


# ============================================================================ configs
#: Accepted ``TrainConfig.amp_dtype`` values (autocast precision on CUDA).
AMP_DTYPES = ("bfloat16", "float16")


@dataclass
class TrainConfig:
    """How to train. ``batch_size`` is the micro-batch; one optimizer step sees
    ``batch_size * grad_accum`` examples.

    ``amp`` turns on autocast on CUDA in ``amp_dtype`` (``"bfloat16"`` or ``"float16"``); with
    float16 a gradient scaler multiplies the loss so that small gradients do not underflow,
    and a step whose scaled gradient overflowed is skipped (recorded in
    ``History.skipped_step``) instead of raising. On other devices ``amp`` does nothing.
    """

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    clip_norm: Optional[float] = 1.0
    eval_every: int = 100
    eval_batch_size: int = 256
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "bfloat16"
    seed: int = 0
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = True
    restore_best: bool = False
    progress: bool = True
    desc: str = "train"

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batch_size",
                     "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"TrainConfig.clip_norm must be > 0 or None, got {self.clip_norm!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"TrainConfig.amp_dtype must be one of {', '.join(AMP_DTYPES)}; "
                             f"got {self.amp_dtype!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")


@dataclass
class KDConfig:
    """How to distil: ``alpha * T^2 * divergence + (1 - alpha) * cross-entropy`` (see
    :func:`distilkit.losses.distillation_loss`).

    ``vocab_alignment``: ``None`` (student and teacher output layers must have one width),
    ``"slice"`` or ``"pad"`` for one tokenizer whose embedding matrix was padded in one model
    (e.g. 151,936 vs 152,064 columns); see :mod:`distilkit.vocab`.

    ``memory_bounded``: compute the loss from the student's final hidden states and output
    layer (:meth:`ModelAdapter.hidden_and_head`, an HF ``lm_head`` included), ``chunk_size``
    positions at a time (``None``: the loss's default), never holding the student's
    (tokens x vocab) logits; same value and gradients as the plain path.
    """

    temperature: float = 1.0
    alpha: float = 0.5
    divergence: str = "forward_kl"
    beta: float = 0.5
    t2_scale: bool = True
    vocab_alignment: Optional[str] = None
    memory_bounded: bool = False
    chunk_size: Optional[int] = None

    def __post_init__(self):
        self.temperature = _check_temperature(self.temperature)
        self.alpha = _check_unit("KDConfig.alpha", self.alpha, False, False)
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"KDConfig.divergence must be one of {', '.join(DIVERGENCES)}; "
                             f"got {self.divergence!r}")
        if self.divergence == "jsd":
            _check_unit("KDConfig.beta (for jsd)", self.beta, True, True)
        elif self.divergence.startswith("skew_"):
            _check_unit(f"KDConfig.beta (for {self.divergence})", self.beta, False, True)
        if self.vocab_alignment is not None and self.vocab_alignment not in VOCAB_ALIGNMENTS:
            raise ValueError(f"KDConfig.vocab_alignment must be None, 'slice' or 'pad'; "
                             f"got {self.vocab_alignment!r}")
        if not isinstance(self.memory_bounded, bool):
            raise ValueError(f"KDConfig.memory_bounded must be True or False, got {self.memory_bounded!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or isinstance(
                self.chunk_size, bool) or self.chunk_size < 1):
            raise ValueError(f"KDConfig.chunk_size must be a positive int or None, got {self.chunk_size!r}")


@dataclass
class History:
    """What happened during training, for plots: per-step loss and learning rate, the
    validation loss (token-mean cross-entropy, nats) at every evaluation, and the steps that
    float16's gradient scaler skipped because the scaled gradient overflowed."""

    step: List[int] = field(default_factory=list)
    train_loss: List[float] = field(default_factory=list)
    lr: List[float] = field(default_factory=list)
    valid_step: List[int] = field(default_factory=list)
    valid_loss: List[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped_step: List[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)

    @property
    def best_valid_loss(self) -> float:
        return min(self.valid_loss) if self.valid_loss else float("nan")


# ============================================================================ targets
class Targets:
    """The pluggable step: turn a batch into ``(batch, teacher_logits or None)``.

    Subclasses may replace the batch (for example with student samples for on-policy KD)."""

    teacher: Optional[nn.Module] = None
    kd: Optional[KDConfig] = None

    def __call__(self, batch, student: nn.Module):  # pragma: no cover - interface
        raise NotImplementedError

    def prepare(self, examples: Sequence, collate: Callable, vocab_size: Optional[int]):
        """Called once before the first step with the training examples, the student's collate
        and its vocabulary size; returns the ``(examples, collate)`` to train on. A teacher
        cache checks itself against them here and indexes the examples to find its rows."""
        return examples, collate

    def loss_sum(self, logits, teacher_out, labels: torch.Tensor, check_values: bool = False,
                 alignment: Optional[VocabAlignment] = None) -> torch.Tensor:
        """The micro-batch's loss *summed* over counted tokens, from the student's output and
        what ``__call__`` returned for the teacher (see :func:`_loss_sum`)."""
        return _loss_sum(logits, teacher_out, labels, self.kd, check_values, alignment)


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
        self.teacher = self.adapter.model
        self.kd = kd or KDConfig()
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer

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
    * Decoder-only pairs (``TransformerLM``, Hugging Face causal models): the first
      ``prompt_tokens`` tokens of each window are the prompt (default: half the window) and
      the student continues it to the window's length; only the continuation is scored.

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
        _check_unit("lam", lam, False, False)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if prompt_tokens is not None and (not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool)
                                          or prompt_tokens < 1):
            raise ValueError(f"prompt_tokens must be a positive int or None (half of each window), "
                             f"got {prompt_tokens!r}")
        self.teacher, self.kd, self.lam = self.adapter.model, kd or KDConfig(alpha=1.0), float(lam)
        self.max_new_tokens, self.sample_temperature = max_new_tokens, sample_temperature
        self.prompt_tokens = prompt_tokens

    def _seq2seq_samples(self, batch, student):
        srcs = [row[:n].tolist() for row, n in zip(batch.src.cpu(), batch.src_lengths.tolist())]
        samples = sample(student, srcs, max_new_tokens=self.max_new_tokens, temperature=self.sample_temperature)
        s_ad = adapt(student)
        return s_ad.collate([(s, y + [s_ad.eos_id]) for s, y in zip(srcs, samples)])

    def _lm_samples(self, batch, student):
        ids, labels = batch.input_ids.cpu(), batch.labels.cpu()
        lengths = (labels != IGNORE_INDEX).sum(1).tolist() if batch.attention_mask is None else \
            batch.attention_mask.cpu().sum(1).tolist()
        windows = [row[:n].tolist() + [int(lab[n - 1])] for row, lab, n in zip(ids, labels, lengths)]
        shortest = min(len(w) for w in windows)
        prompt = self.prompt_tokens if self.prompt_tokens is not None else max(1, shortest // 2)
        if prompt >= shortest:
            raise ValueError(f"prompt_tokens = {prompt} leaves nothing to sample in a window of "
                             f"{shortest} tokens; use a smaller prompt_tokens")
        new = shortest - prompt
        samples = sample(student, [w[:prompt] for w in windows], max_new_tokens=new,
                         temperature=self.sample_temperature)
        s_ad = adapt(student)
        stop = [] if s_ad.eos_id is None else [s_ad.eos_id]  # a sample that ended keeps its <eos>
        out = s_ad.collate([w[:prompt] + y + (stop if len(y) < new else []) for w, y in zip(windows, samples)])
        out.labels[:, : prompt - 1] = IGNORE_INDEX  # the prompt is data: score the continuation only
        return out

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


class CachedTeacherLogits(Targets):
    """Word-level KD from teacher logits stored with the examples (see
    :func:`precompute_teacher_logits`): the teacher runs once, not at every step."""

    def __init__(self, kd: Optional[KDConfig] = None):
        self.kd = kd or KDConfig()

    def __call__(self, batch, student):
        if getattr(batch, "teacher_logits", None) is None:
            raise ValueError("CachedTeacherLogits needs examples made by precompute_teacher_logits()")
        return batch, batch.teacher_logits.float()


@torch.no_grad()
def precompute_teacher_logits(
    teacher: nn.Module,
    examples: Sequence,
    *,
    collate: Optional[Callable] = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> list:
    """Run the frozen teacher once over ``examples`` and attach its logits to each of them.

    Returns new examples ``(*example, logits)`` where logits has shape (tgt_len, vocab) and
    ``dtype`` (float16 halves the memory; the loss upcasts). Use with :class:`CachedTeacherLogits`.
    """
    adapter = adapt(teacher, collate=collate)
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
                n = int((batch.labels[j] != IGNORE_INDEX).sum())
                row = logits[j, :n].clone()
                out.append((*ex, row) if isinstance(ex, tuple) else (ex, row))
    finally:
        teacher.train(was)
    return out


# ============================================================================ helpers
def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    return dev


def default_collate(model: nn.Module) -> Callable:
    """The examples -> batch function for ``model``: its adapter's ``collate``."""
    try:
        return adapt(model).collate
    except TypeError as exc:
        raise TypeError(f"pass collate= for this model: {exc}") from None


def _rank_collate(collate: Callable, dist_state) -> Callable:
    """Collate this rank's slice of a global batch (one process: the whole batch). A rank whose
    slice is empty (the epoch's last, short batch) collates one example with every label
    ignored: it adds nothing to the loss or the gradient but takes part in DDP's all-reduce."""
    if not dist_state.enabled:
        return collate

    def fn(items):
        mine = rank_slice(items, dist_state)
        if mine:
            return collate(mine)
        batch = collate(list(items[:1]))
        batch.labels.fill_(IGNORE_INDEX)
        return batch

    return fn


def _lr_lambda(config: TrainConfig):
    def f(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _autocast(device: torch.device, config: TrainConfig):
    """Autocast in ``config.amp_dtype`` on CUDA when ``config.amp``; a no-op elsewhere."""
    dtype = torch.float16 if config.amp_dtype == "float16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=config.amp and device.type == "cuda")


def _grad_scaler(device: torch.device, config: TrainConfig) -> Optional[torch.amp.GradScaler]:
    """float16 autocast on CUDA needs loss scaling (bfloat16 has float32's range: it does not)."""
    if config.amp and config.amp_dtype == "float16" and device.type == "cuda":
        return torch.amp.GradScaler(device.type)
    return None


def _check_host_batch(batch, vocab_size: Optional[int]) -> None:
    """Check the token ids of a batch still in host memory (before it moves to an accelerator,
    where the models do not read their ids back): every integer field except ``src_lengths``
    lies in ``[0, vocab_size)``, labels may also be ``IGNORE_INDEX``."""
    if vocab_size is None or not is_dataclass(batch):
        return
    for f in fields(batch):
        t = getattr(batch, f.name)
        if f.name == "src_lengths" or not isinstance(t, torch.Tensor) or t.is_floating_point():
            continue
        if f.name == "labels":
            t = t[t != IGNORE_INDEX]
        if t.numel():
            _check_token_ids(t, vocab_size, f"batch.{f.name} token ids")


def _to_device(batch, device: torch.device, vocab_size: Optional[int]):
    if device.type == "cpu":
        return batch.to(device)
    _check_host_batch(batch, vocab_size)
    # a blocking host-to-device copy waits for the device to finish its queue: avoid it where
    # the batch allows
    if "non_blocking" in inspect.signature(batch.to).parameters:
        return batch.to(device, non_blocking=True)
    return batch.to(device)


@torch.no_grad()
def evaluate_loss(model: nn.Module, examples: Sequence, collate: Optional[Callable] = None,
                  batch_size: int = 256, device: Union[str, torch.device, None] = None) -> float:
    """Token-mean cross-entropy (nats) of ``model`` on ``examples``; ``exp`` of it is perplexity.

    The sums stay on the device; the result is read back once, at the end."""
    if len(examples) == 0:
        raise ValueError("examples must not be empty")
    adapter = adapt(model, collate=collate)
    model, collate = adapter.model, adapter.collate
    device = resolve_device(device) if device is not None else adapter.device
    vocab = adapter.vocab_size
    was = model.training
    model.eval()
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    total = torch.zeros((), dtype=acc, device=device)
    count = torch.zeros((), dtype=acc, device=device)
    try:
        for i in range(0, len(examples), batch_size):
            batch = _to_device(collate(examples[i : i + batch_size]), device, vocab)
            logits = adapter.logits(batch).float()
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").to(acc)
            count += (batch.labels != IGNORE_INDEX).sum().to(acc)
    finally:
        model.train(was)
    total, count = torch.stack([total, count]).tolist()
    return total / max(count, 1)


def _check_pair(student: ModelAdapter, targets: "Targets") -> Optional[VocabAlignment]:
    """Before any step: can the teacher score the student's batches? Returns the vocabulary
    alignment to apply to their logits (None when the widths match)."""
    if targets.teacher is None:
        return None
    if targets.teacher is student.model:
        raise ValueError("teacher and student must be different models (got the same object)")
    if student.vocab_size is None:  # a custom module trained with collate=: nothing to compare
        return None
    kd = targets.kd or KDConfig()
    teacher = getattr(targets, "adapter", None) or targets.teacher
    return check_teacher(student, teacher, kd.vocab_alignment, divergence=kd.divergence, beta=kd.beta,
                         student_tokenizer=getattr(targets, "student_tokenizer", None),
                         teacher_tokenizer=getattr(targets, "teacher_tokenizer", None))


# ---------------------------------------------------------------------------- the loss
_LOSS_TAKES_CHECK_VALUES = "check_values" in inspect.signature(distillation_loss).parameters


def _student_output(adapter: ModelAdapter, batch, teacher_logits, kd: Optional[KDConfig]):
    """The student's logits (batch, seq, vocab) -- or, for ``kd.memory_bounded`` distillation,
    its ``(hidden, weight, bias)`` (:meth:`ModelAdapter.hidden_and_head`)."""
    if teacher_logits is not None and kd is not None and kd.memory_bounded:
        if adapter.forward_module is not adapter.model:
            raise ValueError(
                "KDConfig.memory_bounded is not supported under DistributedDataParallel: the hidden states "
                "are computed outside the wrapper's forward, so the ranks' gradients would not be "
                "synchronised; use memory_bounded=False with torchrun")
        return adapter.hidden_and_head(batch)
    return adapter.logits(batch)


def _loss_sum(logits, teacher_logits, labels, kd: Optional[KDConfig], check_values: bool,
              alignment: Optional[VocabAlignment] = None) -> torch.Tensor:
    """The summed (not averaged) loss of one micro-batch: cross-entropy on the labels, or the
    distillation loss against ``teacher_logits``. logits: (batch, seq, vocab), or a
    ``(hidden, weight, bias)`` triple from :func:`_student_output`; labels: (batch, seq).
    ``alignment`` brings student and teacher columns to one width. ``check_values=False``
    skips the loss's value checks, which read tensors back to the host."""
    if isinstance(logits, tuple):
        hidden, weight, bias = logits
        if alignment is not None:
            weight, bias = alignment.student_head(weight, bias)
            teacher_logits = alignment.teacher(teacher_logits)
        return linear_distillation_loss(hidden, weight, bias, teacher_logits, labels,
                                        temperature=kd.temperature, alpha=kd.alpha, divergence=kd.divergence,
                                        beta=kd.beta, t2_scale=kd.t2_scale, reduction="sum",
                                        chunk_size=kd.chunk_size, check_values=check_values)
    if teacher_logits is not None and alignment is not None:
        logits, teacher_logits = alignment.apply(logits, teacher_logits)
    if teacher_logits is None:
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    extra = {"check_values": check_values} if _LOSS_TAKES_CHECK_VALUES else {}
    return distillation_loss(logits, teacher_logits, labels, temperature=kd.temperature, alpha=kd.alpha,
                             divergence=kd.divergence, beta=kd.beta, t2_scale=kd.t2_scale,
                             reduction="sum", **extra)


# ---------------------------------------------------------------------------- checkpoints
_CKPT = re.compile(r"^step-(\d+)\.safetensors$")
_BEST = re.compile(r"^best-(\d+)\.safetensors$")


def _checkpoints(folder: Path, pattern: re.Pattern = _CKPT) -> List[Tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return sorted(found)


def _model_config(model: nn.Module) -> Optional[dict]:
    """The model's config as JSON data, from its adapter; a custom module trained with
    ``collate=`` has no adapter: its own ``config`` then, if it has one."""
    try:
        return adapt(model).config_dict()
    except TypeError:
        return config_to_dict(model.config) if hasattr(model, "config") else None


@dataclass
class _Best:
    """The best validation result so far and the weights that reached it (``restore_best``).

    Saved beside the step checkpoints as ``best-<step>.safetensors`` (written once, when the
    first step checkpoint that refers to it is written), so that it survives a resume."""

    valid_loss: float = math.inf
    step: Optional[int] = None
    state: Optional[dict] = None
    written: bool = False

    def ref(self) -> Optional[dict]:
        if self.step is None:
            return None
        return {"step": self.step, "valid_loss": self.valid_loss, "file": f"best-{self.step:08d}.safetensors"}


def _save_state(folder: Path, step: int, model, optimizer, scheduler, iterator, history, config, kd,
                scaler=None, best: Optional[_Best] = None):
    if best is not None and best.state is not None and not best.written:
        write_checkpoint(folder / best.ref()["file"], {f"model.{k}": v for k, v in best.state.items()},
                         {"kind": "best_weights", "model_config": _model_config(model), **best.ref()})
        best.written = True
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"optim.{pid}.{key}"] = t
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "kind": "train_state",
        "step": step,
        "model_config": _model_config(model),
        "train_config": asdict(config),
        "kd_config": asdict(kd) if kd else None,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "iterator": iterator.state_dict(),
        "history": history.to_dict(),
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "best": best.ref() if best is not None else None,
    }
    write_checkpoint(folder / f"step-{step:08d}.safetensors", tensors, meta)
    kept = _checkpoints(folder)
    for _, old in kept[: -config.keep_checkpoints]:
        old.unlink(missing_ok=True)
    # best-weight files older than the one the oldest kept checkpoint refers to are unreachable
    try:
        oldest = (read_checkpoint_meta(kept[-config.keep_checkpoints:][0][1]).get("best") or {}).get("step")
    except CheckpointError:
        oldest = None
    if oldest is not None:
        for s, path in _checkpoints(folder, _BEST):
            if s < oldest:
                path.unlink(missing_ok=True)


def _load_state(path: Path, model, optimizer, scheduler, iterator, scaler=None):
    tensors, meta = read_checkpoint(path)
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training checkpoint")
    mine = _model_config(model)
    if meta.get("model_config") != mine:
        raise CheckpointError(
            f"checkpoint {path} was made for a different model config:\n"
            f"  checkpoint: {meta.get('model_config')}\n  model:      {mine}"
        )
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    iterator.load_state_dict(meta["iterator"])
    if scaler is not None and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return int(meta["step"]), History.from_dict(meta["history"]), meta


def _latest_loadable(folder: Path, model, optimizer, scheduler, iterator, scaler=None):
    for _step, path in reversed(_checkpoints(folder)):
        try:
            return _load_state(path, model, optimizer, scheduler, iterator, scaler)
        except CheckpointError as exc:
            if "different model config" in str(exc):
                raise
            warnings.warn(f"skipping unreadable checkpoint {path.name}: {exc}", stacklevel=3)
    return None


def _resumed_best(folder: Path, meta: dict, history: History, device) -> _Best:
    """The best weights recorded by the checkpoint a run resumes from (``restore_best``)."""
    ref = meta.get("best")
    if ref:
        try:
            tensors, _ = read_checkpoint(folder / ref["file"])
            state = {k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")}
            return _Best(float(ref["valid_loss"]), int(ref["step"]), state, written=True)
        except CheckpointError as exc:
            reason = str(exc)
    else:
        reason = "the run before the resume did not keep them (restore_best was off)"
    if history.valid_loss:
        warnings.warn(f"restore_best: the best weights before the resume are not available ({reason}); "
                      "the best of the evaluations after the resume will be restored", stacklevel=3)
    return _Best()


# ============================================================================ the loop
def train(
    model: nn.Module,
    train_examples: Sequence,
    *,
    config: Optional[TrainConfig] = None,
    targets: Optional[Targets] = None,
    valid_examples: Optional[Sequence] = None,
    collate: Optional[Callable] = None,
) -> History:
    """Train ``model`` for ``config.steps`` optimizer steps and return its :class:`History`.

    Args:
        model: a distilkit model (or any module with ``model(batch) -> (batch, seq, vocab)``
            logits aligned with ``batch.labels``; pass ``collate`` then).
        train_examples: encoded examples, e.g. ``data.encode_pairs(data.train)``.
        config: a :class:`TrainConfig`.
        targets: :class:`HardLabels` (default) or :class:`TeacherLogits` (word-level KD), or
            your own :class:`Targets`.
        valid_examples: evaluated every ``config.eval_every`` steps (token-mean cross-entropy).
        collate: turns a list of examples into a batch; defaults by model kind.

    Each micro-batch is moved to the device just before it is used. Its *summed* loss is
    back-propagated and its token count (after the targets step, which may replace the batch)
    is added up on the device; at the end of the accumulation the gradients are divided by
    the total, which equals dividing every micro-batch's loss by it.

    The host reads the device once per optimizer step: one small tensor (the summed loss,
    the token count, and whether the loss and the gradient are finite) that decides whether
    the step is applied and feeds the history and the progress bar. Evaluation steps,
    checkpoint steps and :class:`OnPolicyTargets` (which samples) read the device more.

    With ``config.checkpoint_dir`` set, the full training state (weights, optimizer, schedule,
    data position, RNG, gradient scaler, best weights so far) is saved every
    ``checkpoint_every`` steps, atomically, and a rerun with ``resume=True`` continues from the
    newest readable checkpoint -- on the CPU the result is bitwise identical to an
    uninterrupted run. With ``restore_best`` the weights of the best validation loss are put
    back at the end, also when that evaluation happened before a resume.

    A non-finite loss, or a non-finite gradient behind a finite loss, raises
    ``FloatingPointError`` before the optimizer step: the weights (and the checkpoints) never
    take a NaN/inf update. Under float16 autocast an overflowing gradient is the gradient
    scaler's business: that step is skipped and recorded in ``History.skipped_step``.
    """
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = targets or HardLabels()
    if not isinstance(targets, Targets):
        raise TypeError(f"targets must be a distilkit Targets object, got {type(targets).__name__}")
    adapter = adapt(model, collate=collate)
    alignment = _check_pair(adapter, targets)
    if train_examples is None or len(train_examples) == 0:
        raise ValueError("train_examples must not be empty")
    collate = adapter.collate
    device = resolve_device(config.device)
    dist_state = setup_distributed(device)  # torchrun: WORLD_SIZE > 1
    device = process_device(device, dist_state)
    torch.manual_seed(config.seed)
    model.to(device)
    if targets.teacher is not None:
        targets.teacher.to(device).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (all requires_grad=False)")
    vocab = adapter.vocab_size
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    scaler = _grad_scaler(device, config)
    train_examples, train_collate = targets.prepare(train_examples, collate, vocab)
    # every rank draws the same global batch of world_size x batch_size and keeps its slice
    iterator = BatchIterator(train_examples, config.batch_size * dist_state.world_size,
                             _rank_collate(train_collate, dist_state), seed=config.seed)
    adapter.forward_module = wrap_model(model, dist_state, device)
    history, start, best = History(), 0, _Best()
    folder = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if folder is not None and config.resume:
        loaded = _latest_loadable(folder, model, optimizer, scheduler, iterator, scaler)
        if loaded is not None:
            start, history, meta = loaded
            if config.restore_best:
                best = _resumed_best(folder, meta, history, device)
    kd = targets.kd
    t0 = time.perf_counter() - history.seconds
    bar = tqdm(total=config.steps, initial=start, desc=config.desc,
               disable=not (config.progress and dist_state.is_main), dynamic_ncols=True, leave=True)
    model.train()
    try:
        for step in range(start, config.steps):
            optimizer.zero_grad(set_to_none=True)
            host_batches = []
            loss_total = torch.zeros((), device=device)
            n_tokens = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                host_batches.append(next(iterator))
                batch = _to_device(host_batches[-1], device, vocab)
                # DDP: all-reduce the gradients once, after the last micro-batch
                with maybe_no_sync(adapter.forward_module, last=micro == config.grad_accum - 1):
                    with _autocast(device, config):
                        batch, teacher_logits = targets(batch, model)
                        logits = _student_output(adapter, batch, teacher_logits, kd)
                    loss_sum = targets.loss_sum(logits, teacher_logits, batch.labels, False, alignment)
                    (scaler.scale(loss_sum) if scaler is not None else loss_sum).backward()
                loss_total += loss_sum.detach().float()
                n_tokens += (batch.labels != IGNORE_INDEX).sum()
                del batch, teacher_logits, logits, loss_sum
            if dist_state.enabled:  # loss and token count of the whole step, over all ranks
                loss_total, n_tokens = all_reduce_sum(torch.stack([loss_total, n_tokens.float()]), dist_state)
            if scaler is not None:
                scaler.unscale_(optimizer)
            count = n_tokens.clamp(min=1)
            # DDP averaged the ranks' gradient sums: dividing by count / world_size gives the
            # sum over all ranks' tokens divided by their number, as one process would
            divisor = count / dist_state.world_size if dist_state.enabled else count
            grads = [p.grad for p in params if p.grad is not None]
            for g in grads:
                g.div_(divisor)
            if config.clip_norm is not None:
                grad_finite = torch.isfinite(torch.nn.utils.clip_grad_norm_(params, config.clip_norm))
            elif grads:
                grad_finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
            else:
                grad_finite = torch.ones((), dtype=torch.bool, device=device)
            # the one host read of the step
            step_loss, loss_ok, grad_ok = torch.stack(
                [loss_total / count, torch.isfinite(loss_total).float(), grad_finite.float()]).tolist()
            if not loss_ok:
                _raise_for_loss(step, step_loss, host_batches, adapter, targets, kd, device, config, alignment)
            skipped = False
            if not grad_ok:
                if scaler is None:  # a finite loss can still have a NaN/inf gradient: never apply it
                    raise FloatingPointError(
                        f"the gradient became non-finite (NaN or inf) at step {step + 1} although the "
                        f"loss was finite ({step_loss:.6g}); the weights were not updated. Check the "
                        "model for operations without a finite gradient, or lower TrainConfig.lr")
                skipped = True  # float16: the scaled gradient overflowed; the scaler lowers its scale
                history.skipped_step.append(step + 1)
            else:
                optimizer.step()
            if scaler is not None:
                scaler.update()
            history.lr.append(scheduler.get_last_lr()[0])
            if skipped:  # the schedule follows the step count, applied or not
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                    scheduler.step()
            else:
                scheduler.step()
            history.step.append(step + 1)
            history.train_loss.append(step_loss)
            done = step + 1
            if valid_examples is not None and (done % config.eval_every == 0 or done == config.steps):
                vl = evaluate_loss(model, valid_examples, collate, config.eval_batch_size)
                history.valid_step.append(done)
                history.valid_loss.append(vl)
                if config.restore_best and vl < best.valid_loss:
                    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    best = _Best(vl, done, state)
                bar.set_postfix(loss=f"{step_loss:.3f}", valid=f"{vl:.3f}")
            elif done % 10 == 0:
                bar.set_postfix(loss=f"{step_loss:.3f}")
            bar.update(1)
            history.seconds = time.perf_counter() - t0
            if folder is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                if dist_state.is_main:  # one writer; the other ranks wait for the file
                    _save_state(folder, done, model, optimizer, scheduler, iterator, history, config, kd,
                                scaler, best if config.restore_best else None)
                barrier(dist_state)
    finally:
        bar.close()
        adapter.forward_module = model
    if config.restore_best and best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    return history


def _raise_for_loss(step, value, host_batches, adapter, targets, kd, device, config, alignment):
    """The step's loss was not finite: find out why, with the loss's value checks on (the hot
    path skips them), and raise. Runs only on the way to an error."""
    with torch.no_grad():
        for host in host_batches:
            batch = _to_device(host, device, adapter.vocab_size)
            with _autocast(device, config):
                batch, teacher_logits = targets(batch, adapter.model)
                logits = adapter.logits(batch)
            targets.loss_sum(logits, teacher_logits, batch.labels, True, alignment)  # may raise ValueError
    raise FloatingPointError(f"loss became {value} at step {step}; lower TrainConfig.lr or check the data")


def distill(
    student: nn.Module,
    teacher: Union[nn.Module, "TeacherCache"],
    train_examples: Sequence,
    *,
    kd: Optional[KDConfig] = None,
    config: Optional[TrainConfig] = None,
    valid_examples: Optional[Sequence] = None,
    collate: Optional[Callable] = None,
    student_tokenizer=None,
    teacher_tokenizer=None,
) -> History:
    """Word-level KD: train ``student`` on ``train_examples`` against the frozen ``teacher``'s
    next-token distributions (plus the labels, weighted by ``1 - kd.alpha``).

    Student and teacher: distilkit models or Hugging Face models of one kind (decoder-only,
    or encoder-decoder), sharing one tokenizer; ``train_examples`` are token-id sequences
    ("lm") or (source, target) pairs ("seq2seq") of any lengths (see
    :mod:`distilkit.adapters`). Before the first step the output widths and, when known
    (``student_tokenizer`` / ``teacher_tokenizer``, or ``model.tokenizer``), the tokenizers are
    compared (:mod:`distilkit.vocab`; ``kd.vocab_alignment`` for padded embeddings).

    ``teacher`` may instead be a :class:`~distilkit.cache.TeacherCache`
    (:func:`~distilkit.cache.cache_teacher_logits` / :func:`~distilkit.cache.load_teacher_cache`)
    built for exactly these ``train_examples``: the student then learns from the cached top-k
    log-probabilities with no teacher in memory; ``kd.temperature`` defaults to the cache's."""
    from .cache import CacheTargets, TeacherCache

    if isinstance(teacher, TeacherCache):
        return train(student, train_examples, config=config, targets=CacheTargets(teacher, kd),
                     valid_examples=valid_examples, collate=collate)
    targets = TeacherLogits(teacher, kd, student_tokenizer=student_tokenizer,
                            teacher_tokenizer=teacher_tokenizer)
    return train(student, train_examples, config=config, targets=targets,
                 valid_examples=valid_examples, collate=collate)


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
