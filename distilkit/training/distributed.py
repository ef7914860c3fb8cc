"""Data-parallel training on ``torch.distributed``: the same script, one process or many.

Everything torchrun-specific lives here: the process group, the global batch rule, the rank
slicing and the token divisor. Run a training script under ``torchrun`` and :func:`distilkit.train` notices ``WORLD_SIZE > 1``,
initialises the process group itself (``gloo`` on the CPU, ``nccl`` on CUDA, one GPU per
process chosen by ``LOCAL_RANK``) and wraps the student in ``DistributedDataParallel``; a
teacher stays frozen, one copy per process.

The semantics are those of one process with a ``world_size`` times larger batch:

* every rank draws the same global batch of ``world_size * batch_size`` examples (same seed,
  same shuffling) and keeps its own slice (:func:`rank_slice`), so ``TrainConfig.batch_size``
  is the per-process micro-batch;
* the loss of a micro-batch is the *sum* over its tokens; the token count of the whole global
  step is summed over ranks with one ``all_reduce`` (:func:`all_reduce_sum`);
* DDP averages the ranks' gradient sums, so the gradients are divided by ``count / world_size``
  (:func:`token_divisor`): the sum over all ranks' tokens divided by their number, exactly the
  single-process gradient.

Rank 0 alone logs, shows progress bars and writes checkpoints; every rank resumes from them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, List, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from ..data import IGNORE_INDEX
from .config import PARALLEL_MODES

__all__ = [
    "DistState",
    "setup_distributed",
    "rank_slice",
    "rank_collate",
    "token_divisor",
    "all_reduce_sum",
    "wrap_model",
    "PARALLEL_MODES",
    "unwrap_model",
    "barrier",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistState:
    """Where this process stands: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def setup_distributed(device: torch.device) -> DistState:
    """Join (or start) the process group when ``WORLD_SIZE > 1``; else a one-process state.

    If a process group is already initialised (the user's script called
    ``init_process_group``), it is used as it is. Otherwise ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` (set by ``torchrun``) are read, and the backend is
    ``nccl`` for a CUDA ``device``, ``gloo`` otherwise. Returns the :class:`DistState`.
    """
    if dist.is_available() and dist.is_initialized():
        return DistState(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistState()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun "
                             "or set MASTER_ADDR and MASTER_PORT")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistState(rank, world, local)


def process_device(device: torch.device, state: DistState) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` when distributed."""
    if state.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", state.local_rank)
    return device


def rank_slice(items: Sequence[T], state: DistState) -> List[T]:
    """This rank's contiguous share of a global batch: sizes differ by at most one, and the
    slices of ranks 0, 1, ... concatenated give ``items`` back in order. A rank may get an
    empty slice when the global batch is shorter than ``world_size`` (the epoch's last one)."""
    n, w, r = len(items), state.world_size, state.rank
    start = r * (n // w) + min(r, n % w)
    size = n // w + (1 if r < n % w else 0)
    return list(items[start : start + size])


def rank_collate(collate: Callable, state: DistState) -> Callable:
    """Collate this rank's slice of a global batch (one process: the whole batch). A rank whose
    slice is empty (the epoch's last, short batch) collates one example with every label
    ignored: it adds nothing to the loss or the gradient but takes part in DDP's all-reduce."""
    if not state.enabled:
        return collate

    def fn(items):
        mine = rank_slice(items, state)
        if mine:
            return collate(mine)
        batch = collate(list(items[:1]))
        batch.labels.fill_(IGNORE_INDEX)
        return batch

    return fn


def token_divisor(count: torch.Tensor, state: DistState) -> torch.Tensor:
    """What the summed gradients are divided by: the global step's token ``count`` (summed over
    ranks); under DDP, which already averaged the ranks' gradients, ``count / world_size``."""
    return count / state.world_size if state.enabled else count


def all_reduce_sum(value: torch.Tensor, state: DistState) -> torch.Tensor:
    """Sum a tensor over ranks (a no-op in one process). Returns a new tensor."""
    if not state.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def average_gradients(params, state: DistState) -> None:
    """Average the gradients of parameters that live outside the DDP wrapper (the targets' own
    projections) over ranks, as DDP does for the model's."""
    if not state.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(state.world_size)


def barrier(state: DistState) -> None:
    if state.enabled:
        dist.barrier()


def wrap_model(model: nn.Module, state: DistState, device: torch.device, parallel: str = "ddp") -> nn.Module:
    """When distributed: ``DistributedDataParallel(model)`` (``parallel="ddp"``), or ``model``
    itself sharded in place with FSDP2 (``"fsdp"``, :mod:`~distilkit.training.fsdp`). In one
    process: the model itself."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL_MODES)}; got {parallel!r}")
    if not state.enabled:
        return model
    if parallel == "fsdp":
        from .fsdp import shard_module

        return shard_module(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else state.local_rank] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for checkpoints, evaluation and decoding)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


@contextmanager
def maybe_no_sync(model: nn.Module, last: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce (FSDP's reduce-scatter) on all micro-batches of a step
    but the last."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: a flag, not a context
        model.set_requires_gradient_sync(last)
        yield
        return
    ctx = model.no_sync() if (not last and hasattr(model, "no_sync")) else nullcontext()
    with ctx:
        yield
