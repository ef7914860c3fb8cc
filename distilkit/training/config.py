"""How to train and how to distil: :class:`TrainConfig`, :class:`KDConfig`, :class:`History`,
and the device rule (:func:`resolve_device`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..losses import DIVERGENCES, HIDDEN_LOSSES
from ..losses.checks import check_temperature, check_unit
from ..vocab import VOCAB_ALIGNMENTS

__all__ = ["AMP_DTYPES", "CROSS_TOKENIZER", "TrainConfig", "KDConfig", "History", "resolve_device"]

#: Accepted ``KDConfig.cross_tokenizer`` values (besides ``None``: one tokenizer).
CROSS_TOKENIZER = ("uld", "align")


#: Accepted ``TrainConfig.amp_dtype`` values (autocast precision on CUDA).
AMP_DTYPES = ("bfloat16", "float16")

#: Accepted ``TrainConfig.parallel`` values (how torchrun's processes share the student).
PARALLEL_MODES = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """How to train. ``batch_size`` is the micro-batch; one optimizer step sees
    ``batch_size * grad_accum`` examples.

    ``amp`` turns on autocast on CUDA in ``amp_dtype`` (``"bfloat16"`` or ``"float16"``); with
    float16 a gradient scaler multiplies the loss so that small gradients do not underflow,
    and a step whose scaled gradient overflowed is skipped (recorded in
    ``History.skipped_step``) instead of raising. On other devices ``amp`` does nothing.

    ``parallel`` (under torchrun, ``WORLD_SIZE > 1``): ``"ddp"`` keeps a full student per
    process (``DistributedDataParallel``); ``"fsdp"`` shards its parameters, gradients and
    optimizer state over the processes (FSDP2's ``fully_shard``, per block), and with
    ``shard_teacher=True`` the frozen teacher's parameters too. Same batches, same result; in
    one process both mean plain training.
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
    max_length: Optional[int] = None
    parallel: str = "ddp"
    shard_teacher: bool = False

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
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(
                self.max_length, int) or self.max_length < 1):
            raise ValueError(f"TrainConfig.max_length must be a positive int or None, got {self.max_length!r}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"TrainConfig.parallel must be one of {', '.join(PARALLEL_MODES)} (under "
                             f"torchrun: data-parallel or sharded with FSDP2); got {self.parallel!r}")
        if not isinstance(self.shard_teacher, bool):
            raise ValueError(f"TrainConfig.shard_teacher must be True or False, got {self.shard_teacher!r}")
        if self.shard_teacher and self.parallel != "fsdp":
            raise ValueError("TrainConfig.shard_teacher=True needs parallel='fsdp' (DDP keeps one "
                             "full teacher per process)")
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

    Hidden-state KD (:class:`~distilkit.training.HiddenStateTargets`): ``hidden_weight`` > 0 adds
    ``hidden_weight * hidden_loss(proj(student layer s), teacher layer m)`` for every pair
    ``(s, m)`` of ``layer_map`` (0-based layer indices; ``None``: student layer ``i`` of ``S``
    takes teacher layer ``round((i + 1) * T / S) - 1`` of ``T``, evenly spaced and ending with the
    last), averaged over the pairs, per counted position. ``hidden_loss``: ``"mse"`` or
    ``"cosine"`` (:func:`distilkit.losses.hidden_state_loss`). ``proj`` is a learned linear map
    where the widths differ, trained with the student and not part of it.

    ``cross_tokenizer``: ``None`` (one tokenizer), ``"uld"`` or ``"align"`` -- distil from a
    teacher with another tokenizer; the examples are then texts
    (:class:`~distilkit.training.CrossTokenizerTargets` says what each compares).
    """

    temperature: float = 1.0
    alpha: float = 0.5
    divergence: str = "forward_kl"
    beta: float = 0.5
    t2_scale: bool = True
    vocab_alignment: Optional[str] = None
    memory_bounded: bool = False
    chunk_size: Optional[int] = None
    hidden_weight: float = 0.0
    layer_map: Optional[Sequence[Tuple[int, int]]] = None
    hidden_loss: str = "mse"
    cross_tokenizer: Optional[str] = None

    def __post_init__(self):
        self.temperature = check_temperature(self.temperature)
        self.alpha = check_unit("KDConfig.alpha", self.alpha, False, False)
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"KDConfig.divergence must be one of {', '.join(DIVERGENCES)}; "
                             f"got {self.divergence!r}")
        if self.divergence == "jsd":
            check_unit("KDConfig.beta (for jsd)", self.beta, True, True)
        elif self.divergence.startswith("skew_"):
            check_unit(f"KDConfig.beta (for {self.divergence})", self.beta, False, True)
        if self.vocab_alignment is not None and self.vocab_alignment not in VOCAB_ALIGNMENTS:
            raise ValueError(f"KDConfig.vocab_alignment must be None, 'slice' or 'pad'; "
                             f"got {self.vocab_alignment!r}")
        if not isinstance(self.memory_bounded, bool):
            raise ValueError(f"KDConfig.memory_bounded must be True or False, got {self.memory_bounded!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or isinstance(
                self.chunk_size, bool) or self.chunk_size < 1):
            raise ValueError(f"KDConfig.chunk_size must be a positive int or None, got {self.chunk_size!r}")
        w = self.hidden_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"KDConfig.hidden_weight must be a finite number >= 0, got {w!r}")
        self.hidden_weight = float(w)
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"KDConfig.hidden_loss must be one of {', '.join(HIDDEN_LOSSES)}; "
                             f"got {self.hidden_loss!r}")
        if self.layer_map is not None:
            pairs = []
            for pair in self.layer_map:
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
                        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in pair)):
                    raise ValueError(f"KDConfig.layer_map must be a list of (student_layer, teacher_layer) "
                                     f"pairs of ints >= 0, found {pair!r}")
                pairs.append((int(pair[0]), int(pair[1])))
            if not pairs:
                raise ValueError("KDConfig.layer_map must hold at least one (student_layer, teacher_layer) "
                                 "pair, or be None")
            self.layer_map = pairs
        if self.cross_tokenizer is not None and self.cross_tokenizer not in CROSS_TOKENIZER:
            raise ValueError(f"KDConfig.cross_tokenizer must be None, 'uld' or 'align'; "
                             f"got {self.cross_tokenizer!r}")
        if self.cross_tokenizer is not None and (self.hidden_weight > 0 or self.memory_bounded
                                                 or self.vocab_alignment is not None):
            raise ValueError("KDConfig.cross_tokenizer cannot be combined with hidden_weight, "
                             "memory_bounded or vocab_alignment")
        if self.hidden_weight > 0 and self.memory_bounded:
            raise ValueError("KDConfig.hidden_weight > 0 cannot be combined with memory_bounded "
                             "(hidden-state KD needs the student's logits and layers from one pass)")


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
