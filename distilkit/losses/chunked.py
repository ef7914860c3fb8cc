"""The distillation loss from hidden states and output layers, a chunk of rows at a time: never
holds the (tokens x vocab) logits."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch.autograd.function import once_differentiable

from .checks import (
    bad_label_flag,
    check_divergence,
    check_labels,
    check_logits,
    check_reduction,
    check_temperature,
    check_unit,
    nonfinite_flags,
    raise_on_flags,
)
from .distillation import reduce_total
from .divergences import loss_sums

__all__ = ["linear_distillation_loss", "chunked_distillation_loss", "default_chunk_size"]

# ----------------------------------------------------------------------------- from hidden states
TeacherInput = Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]


class _LinearKD(torch.autograd.Function):
    """Summed distillation loss of ``hidden @ weight.T + bias`` against a teacher, a chunk of
    rows at a time. The gradients with respect to ``hidden``, ``weight`` and ``bias`` are those
    of the summed loss; they are computed chunk by chunk in the forward pass (autograd through
    :func:`loss_sums` for the chunk's logits, then the linear layer's chain rule) and stored,
    and ``backward`` scales them by the incoming gradient -- exact, because the loss is a scalar.
    No (rows x vocab) tensor is ever held in full."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, teacher, opts):
        need_h, need_w, need_b = (opts["grad"] and n for n in ctx.needs_input_grad[:3])
        rows, chunk = hidden.shape[0], opts["chunk_size"]
        acc = torch.promote_types(weight.dtype, torch.float32)
        g_hidden = torch.empty_like(hidden) if need_h else None
        g_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        g_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        bad = torch.zeros(4, dtype=torch.bool, device=hidden.device) if opts["check_values"] else None
        for i in range(0, rows, chunk):
            h = hidden[i : i + chunk]
            logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
            t_logits = teacher(i, i + chunk)
            if bad is not None:  # accumulated in place: nothing allocated per chunk outlives it
                bad |= torch.stack(nonfinite_flags(logits) + nonfinite_flags(t_logits))
            lab = None if labels is None else labels[i : i + chunk]
            with torch.enable_grad():
                logits.requires_grad_(need_h or need_w or need_b)
                soft, hard, _ = loss_sums(logits, t_logits, lab, temperature=opts["temperature"],
                                           divergence=opts["divergence"], beta=opts["beta"],
                                           ignore_index=opts["ignore_index"])
                loss = opts["soft_weight"] * soft + opts["hard_weight"] * hard
                if logits.requires_grad:
                    (g_logits,) = torch.autograd.grad(loss, logits)
            total += loss.detach()
            if logits.requires_grad:
                g_logits = g_logits.to(weight.dtype)
                if need_h:
                    torch.mm(g_logits, weight, out=g_hidden[i : i + chunk])
                if need_w:
                    g_weight.addmm_(g_logits.T.to(acc), h.to(acc))
                if need_b:
                    g_bias += g_logits.sum(0).to(acc)
                del g_logits
            del logits, t_logits, soft, hard, loss
        if bad is not None:
            raise_on_flags(list(bad), ("student logits (student_hidden @ weight.T + bias)",
                                        "teacher_logits"))
        ctx.save_for_backward(g_hidden, None if g_weight is None else g_weight.to(weight.dtype),
                              None if g_bias is None else g_bias.to(bias.dtype))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return tuple(None if g is None else g * grad_out for g in ctx.saved_tensors) + (None,) * 3


def _teacher_rows(teacher: TeacherInput, rows: int, vocab: int, device: torch.device):
    """Validate the teacher argument; return ``f(i, j) -> teacher logits of rows i:j`` (no grad)."""
    if isinstance(teacher, torch.Tensor):
        check_logits("teacher_logits", teacher)
        if teacher.shape[-1] != vocab:
            raise ValueError(f"student vocab size ({vocab}) differs from teacher vocab size "
                             f"({teacher.shape[-1]}): logit-level distillation needs a shared vocabulary")
        if teacher.numel() // teacher.shape[-1] != rows:
            raise ValueError(f"teacher_logits shape {tuple(teacher.shape)} must have as many positions "
                             f"as student_hidden ({rows})")
        if teacher.device != device:
            raise ValueError(f"teacher_logits is on {teacher.device} but student_hidden is on {device}")
        flat = teacher.detach().reshape(rows, vocab)
        return lambda i, j: flat[i:j]
    if not isinstance(teacher, (tuple, list)) or len(teacher) not in (2, 3):
        raise TypeError("teacher_logits must be a (..., vocab) tensor or a (teacher_hidden, "
                        f"teacher_weight, teacher_bias) triple, got {type(teacher).__name__}")
    t_hidden, t_weight, t_bias = (*teacher, None)[:3]
    _check_matrix("teacher_hidden", t_hidden)
    _check_matrix("teacher_weight", t_weight, dim=2)
    if t_weight.shape[0] != vocab:
        raise ValueError(f"student vocab size ({vocab}) differs from teacher vocab size "
                         f"({t_weight.shape[0]}) (teacher_weight has shape {tuple(t_weight.shape)})")
    if t_hidden.shape[-1] != t_weight.shape[1]:
        raise ValueError(f"teacher_hidden has hidden size {t_hidden.shape[-1]} but teacher_weight "
                         f"expects {t_weight.shape[1]} (shape {tuple(t_weight.shape)})")
    if t_hidden.numel() // t_hidden.shape[-1] != rows:
        raise ValueError(f"teacher_hidden has {t_hidden.numel() // t_hidden.shape[-1]} positions but "
                         f"student_hidden has {rows}")
    _check_bias("teacher_bias", t_bias, vocab)
    for name, t in (("teacher_hidden", t_hidden), ("teacher_weight", t_weight), ("teacher_bias", t_bias)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but student_hidden is on {device}")
    th = t_hidden.detach().reshape(rows, -1)
    tw, tb = t_weight.detach(), None if t_bias is None else t_bias.detach()
    return lambda i, j: th[i:j] @ tw.T if tb is None else torch.addmm(tb, th[i:j], tw.T)


def _check_matrix(name: str, x, dim: Optional[int] = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if (dim is not None and x.dim() != dim) or x.dim() < 2:
        want = f"{dim}-D" if dim else "at least 2-D (..., hidden)"
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")


def _check_bias(name: str, bias, vocab: int) -> None:
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        raise TypeError(f"{name} must be None or a floating-point tensor of shape ({vocab},), got "
                        f"{getattr(bias, 'dtype', type(bias).__name__)}")
    if tuple(bias.shape) != (vocab,):
        raise ValueError(f"{name} must have shape ({vocab},), got {tuple(bias.shape)}")


#: Logits per chunk of :func:`linear_distillation_loss` by default: 2**21 float32 is 8 MiB.
CHUNK_ELEMENTS = 2**21


def default_chunk_size(vocab: int) -> int:
    """Rows per chunk of :func:`linear_distillation_loss` when ``chunk_size=None``: as many as fit
    :data:`CHUNK_ELEMENTS` logits, rounded down to a multiple of 8 (64 at vocab 32k; at least 8).

    Measured on the CPU (``benchmarks/loss_memory.py``, vocab 32k, hidden 512, 4,096 tokens): 64
    rows keep the peak near 0.2 GiB at the time of the plain loss; 32 rows save a few tens of MiB
    and cost about a fifth more time; 256 rows hold 4 times as much per chunk."""
    return max(8, CHUNK_ELEMENTS // max(vocab, 1) // 8 * 8)


def linear_distillation_loss(
    student_hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    teacher_logits: TeacherInput,
    labels: Optional[torch.Tensor] = None,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    t2_scale: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_tokens: Optional[Union[float, torch.Tensor]] = None,
    chunk_size: Optional[int] = None,
    check_values: bool = True,
) -> torch.Tensor:
    """:func:`distillation_loss` of the student logits ``student_hidden @ weight.T + bias``,
    computed from the student's final hidden states and output layer without ever holding the
    (tokens x vocab) logits.

    The value is ``alpha * T^2 * sum_i D(p_i || q_i) + (1 - alpha) * sum_i CE(y_i, q_i^(T=1))``
    over counted positions i (labels != ignore_index), divided by their number for
    ``reduction="mean"`` (or by ``num_tokens``), exactly as in :func:`distillation_loss`; its
    gradients with respect to ``student_hidden``, ``weight`` and ``bias`` are those of
    ``distillation_loss(student_hidden @ weight.T + bias, teacher_logits, labels, ...)``.

    Args:
        student_hidden: (tokens, hidden) or (batch, seq, hidden) -- the student's final hidden
            states (the input of its output layer).
        weight: (vocab, hidden) -- the output layer's weight (an HF ``lm_head.weight``).
        bias: (vocab,) or None (an HF ``lm_head`` has no bias).
        teacher_logits: the teacher's logits, (..., vocab) with the leading shape of
            ``student_hidden``; or a ``(teacher_hidden, teacher_weight, teacher_bias)`` triple,
            shapes (..., d_teacher), (vocab, d_teacher), (vocab,) or None, whose product gives
            them a chunk at a time. The teacher is a constant (no gradient reaches it).
        labels: integer token ids with the leading shape of ``student_hidden``, or None.
        temperature, alpha, divergence, beta, t2_scale, ignore_index, reduction, num_tokens,
            check_values: as in :func:`distillation_loss`.
        chunk_size: positions per chunk; None picks :func:`default_chunk_size` (64 at vocab 32k).

    Memory: a handful of (chunk_size x vocab) float32 tensors, plus one gradient of the size of
    ``weight`` and one of ``student_hidden``. The gradients are computed chunk by chunk during the
    forward pass when autograd will need them (not under ``torch.no_grad()``) and stored; the
    backward pass only scales them. Backward through the result can therefore not be differentiated
    again (no double backward).
    """
    _check_matrix("student_hidden", student_hidden)
    _check_matrix("weight", weight, dim=2)
    vocab, width = weight.shape
    if student_hidden.shape[-1] != width:
        raise ValueError(f"student_hidden has hidden size {student_hidden.shape[-1]} but weight "
                         f"expects {width} (weight has shape {tuple(weight.shape)})")
    _check_bias("bias", bias, vocab)
    device = student_hidden.device
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but student_hidden is on {device}; "
                             "move both to the same device")
    lead = tuple(student_hidden.shape[:-1])
    rows = math.prod(lead)
    teacher = _teacher_rows(teacher_logits, rows, vocab, device)
    if labels is not None:
        check_labels(labels, lead, device, what="student_hidden")
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (or None for the default), got {chunk_size!r}")
    temperature = check_temperature(temperature)
    alpha = check_unit("alpha", alpha, False, False)
    beta = check_divergence(divergence, beta)
    check_reduction(reduction)
    if check_values and labels is not None:
        raise_on_flags([bad_label_flag(labels, vocab, ignore_index)], (), labels, vocab, ignore_index)
    soft_weight = temperature**2 if t2_scale else 1.0
    if labels is not None:
        soft_weight *= alpha
    opts = dict(chunk_size=chunk_size, temperature=temperature, divergence=divergence, beta=beta,
                ignore_index=ignore_index, soft_weight=soft_weight,
                hard_weight=0.0 if labels is None else 1.0 - alpha, check_values=check_values,
                grad=torch.is_grad_enabled())
    flat_labels = None if labels is None else labels.reshape(rows)
    total = _LinearKD.apply(student_hidden.reshape(rows, width), weight, bias, flat_labels, teacher, opts)
    if labels is None:
        count = torch.full((), rows, dtype=torch.int64, device=device)
    else:
        count = (flat_labels != ignore_index).sum()
    return reduce_total(total, count, reduction, num_tokens, check_values)


def chunked_distillation_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    *,
    chunk_size: Optional[int] = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    ignore_index: int = -100,
    t2_scale: bool = True,
    check_values: bool = True,
) -> torch.Tensor:
    """:func:`distillation_loss` (``reduction="mean"``) computed from final hidden states and
    output-embedding matrices, ``chunk_size`` tokens at a time: peak memory grows with
    ``chunk_size x vocab`` instead of ``tokens x vocab``.

    Args:
        student_hidden: (tokens, d_student) -- flatten (batch, seq) first.
        student_weight: (vocab, d_student) -- the student's output layer; logits = h @ W.T.
        teacher_hidden: (tokens, d_teacher); teacher_weight: (vocab, d_teacher) (no gradient).
        labels: (tokens,) or None.

    The value and the gradients equal those of ``distillation_loss`` on the full logits.
    """
    return linear_distillation_loss(
        student_hidden, student_weight, None, (teacher_hidden, teacher_weight, None), labels,
        temperature=temperature, alpha=alpha, divergence=divergence, beta=beta, t2_scale=t2_scale,
        ignore_index=ignore_index, chunk_size=chunk_size, check_values=check_values)
