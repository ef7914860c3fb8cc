"""Argument and value checks shared by every loss (free shape/type checks; value checks
that read device memory run only when ``check_values=True``)."""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import torch

#: Names accepted by ``divergence=``.
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def check_unit(name: str, value, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def check_divergence(divergence: str, beta) -> float:
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"divergence must be one of {', '.join(DIVERGENCES)}; got {divergence!r}"
        )
    if divergence == "jsd":
        return check_unit("beta (for divergence='jsd')", beta, True, True)
    if divergence.startswith("skew_"):
        return check_unit(f"beta (for divergence={divergence!r})", beta, False, True)
    return float(beta) if isinstance(beta, Real) else 0.5


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def check_logits(name: str, logits) -> None:
    """Type and shape of a (..., vocab) logits tensor (free: reads no values)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary dimension last, got shape {tuple(logits.shape)}")


def check_logit_pair(student_logits, teacher_logits) -> None:
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.device != teacher_logits.device:
        raise ValueError(
            f"student_logits is on {student_logits.device} but teacher_logits is on "
            f"{teacher_logits.device}; move both to the same device"
        )
    s, t = student_logits.shape, teacher_logits.shape
    if s[-1] != t[-1]:
        raise ValueError(
            f"student vocab size ({s[-1]}) differs from teacher vocab size ({t[-1]}): "
            "logit-level distillation needs a shared vocabulary (see the FAQ on tokenizer mismatch)"
        )
    if s != t:
        raise ValueError(
            f"student_logits shape {tuple(s)} and teacher_logits shape {tuple(t)} must match"
        )


def check_labels(labels, leading: tuple, device: torch.device, what: str = "student_logits") -> None:
    """Type, shape and device of ``labels`` (free: reads no values)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of token ids, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"labels must be an integer tensor (torch.long), got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(leading):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal {what} shape without the "
            f"vocabulary dimension, {tuple(leading)}"
        )
    if labels.device != device:
        raise ValueError(f"labels is on {labels.device} but {what} is on {device}; "
                         "labels must be on the same device as the logits")


def nonfinite_flags(logits: torch.Tensor) -> list[torch.Tensor]:
    """[has NaN, has +inf] as 0-dim bool tensors, from one pass (the maximum propagates NaN) and
    without a host synchronisation."""
    if logits.numel() == 0:
        return [torch.zeros((), dtype=torch.bool, device=logits.device)] * 2
    top = logits.detach().amax()
    return [torch.isnan(top), torch.isposinf(top)]


def bad_label_flag(labels: torch.Tensor, vocab: int, ignore_index: int) -> torch.Tensor:
    """0-dim bool tensor: some counted label lies outside [0, vocab)."""
    return ((labels != ignore_index) & ((labels < 0) | (labels >= vocab))).any()


def raise_on_flags(flags: Sequence[torch.Tensor], names: Sequence[str], labels=None, vocab: int = 0,
                    ignore_index: int = -100) -> None:
    """Read all flags with one host synchronisation and raise the first error they show.

    ``flags`` holds [NaN, +inf] per name in ``names``, then optionally the bad-label flag."""
    values = torch.stack(list(flags)).tolist()  # the one host synchronisation
    for i, name in enumerate(names):
        if values[2 * i]:
            raise ValueError(f"{name} contains NaN: check the model's forward pass and learning rate")
        if values[2 * i + 1]:
            raise ValueError(f"{name} contains +inf; only -inf (a masked vocabulary entry) is allowed")
    if labels is not None and values[2 * len(names)]:
        real = labels[labels != ignore_index]
        raise ValueError(
            f"labels must be token ids in [0, {vocab}) or ignore_index={ignore_index}; "
            f"found values in [{int(real.min())}, {int(real.max())}]"
        )


def upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()

