"""Sharded training on ``torch.distributed.fsdp.fully_shard`` (FSDP2): ``TrainConfig(parallel="fsdp")``.

Each rank keeps ``1 / world_size`` of every parameter, of its gradient and of the AdamW state;
a block's full weights exist only while it runs (all-gather before its forward and backward,
reduce-scatter of its gradient after). The batch rules are those of DDP
(:mod:`~distilkit.training.distributed`): every rank takes its slice of one global batch and the
reduce-scatter *averages* the ranks' gradients, as DDP's all-reduce does, so the same
:func:`~distilkit.training.distributed.token_divisor` applies.

The units of sharding are found generically: every element of an ``nn.ModuleList`` (a
TransformerLM's blocks, a Hugging Face model's layers), else every recurrent layer
(``nn.RNNBase``: a Seq2SeqLSTM's encoder and decoder); the root takes the rest (embeddings,
tied output layer, norms). Checkpoints hold the full (gathered) state in the usual file format,
so a checkpoint written under FSDP loads in one process and the other way round.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["is_sharded", "shard_module", "full_model_state", "full_optimizer_state",
           "load_full_state", "local", "local_norm", "set_gradient_sync"]


def _fsdp():
    from torch.distributed import fsdp

    return fsdp


def is_sharded(model: nn.Module) -> bool:
    """True for a module that :func:`shard_module` (``fully_shard``) has sharded."""
    try:
        return isinstance(model, _fsdp().FSDPModule)
    except (ImportError, AttributeError):  # pragma: no cover - torch without FSDP2
        return False


def shard_units(model: nn.Module) -> List[nn.Module]:
    """The sub-modules sharded on their own: the elements of every ``nn.ModuleList`` (blocks,
    layers) that hold parameters; without any, every recurrent layer (``nn.RNNBase``)."""
    units = [m for ml in model.modules() if isinstance(ml, nn.ModuleList) for m in ml
             if any(True for _ in m.parameters())]
    if not units:
        units = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    return units


def shard_module(model: nn.Module, *, broadcast: bool = True) -> nn.Module:
    """Shard ``model`` in place over the default process group, per unit (:func:`shard_units`)
    and at the root; returns it. ``broadcast``: first copy rank 0's weights to every rank (what
    DDP does when it wraps a model), so ranks that built their models differently agree."""
    fsdp = _fsdp()
    if broadcast and dist.get_world_size() > 1:
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)
    for unit in shard_units(model):
        fsdp.fully_shard(unit)
    fsdp.fully_shard(model)
    if hasattr(model, "hidden_and_head"):  # distilkit's models: KDConfig(memory_bounded=True)
        fsdp.register_fsdp_forward_method(model, "hidden_and_head")
    return model


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Gradient accumulation: ``sync=False`` keeps the micro-batch's gradients unreduced."""
    model.set_requires_gradient_sync(sync)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise); shares its storage."""
    return t.to_local() if hasattr(t, "to_local") else t


def local_norm(t: torch.Tensor) -> torch.Tensor:
    """A norm computed over DTensor shards (``clip_grad_norm_``), as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ---------------------------------------------------------------------------- checkpoints
def _gather(t, keep: bool):
    """A DTensor's full value (an all-gather: every rank calls it, in the same order), on the
    CPU where ``keep``; ``None`` elsewhere. Plain tensors and numbers pass through."""
    if hasattr(t, "full_tensor"):
        full = t.full_tensor()
        return full.cpu() if keep else None
    return t


def full_model_state(model: nn.Module, all_ranks: bool = False) -> Dict[str, torch.Tensor]:
    """The gathered, unsharded ``state_dict`` (a collective: every rank calls it), one tensor
    at a time. Rank 0 gets it; the others an empty dict, unless ``all_ranks``."""
    keep = all_ranks or dist.get_rank() == 0
    out = {k: _gather(v.detach(), keep) for k, v in model.state_dict().items()}
    return out if keep else {}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The gathered optimizer state (a collective) keyed like ``optimizer.state_dict()`` in one
    process -- integer parameter ids in ``model.parameters()`` order -- so the checkpoint file
    format does not change. Empty ``state`` on ranks other than 0."""
    keep = dist.get_rank() == 0
    sd = optimizer.state_dict()
    state = {pid: {k: _gather(v, keep) for k, v in sorted(st.items())}
             for pid, st in sorted(sd["state"].items())}
    return {"state": state if keep else {}, "param_groups": sd["param_groups"]}


def _shard_like(full: torch.Tensor, like):
    """``full`` cut to this rank's shard of ``like`` (a DTensor), without communication: every
    rank holds the full tensor (read from the same file)."""
    if not hasattr(like, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements,
                             src_data_rank=None)


def load_full_state(model: nn.Module, optimizer, model_state: Dict[str, torch.Tensor],
                    optim_state: dict = None) -> None:
    """Load a full (one-process) model state and, given one, optimizer state (integer
    parameter ids) into a sharded model and its optimizer; every rank passes the full state
    and keeps its shards."""
    own = model.state_dict()
    missing = sorted(set(own) - set(model_state))
    if missing:
        raise KeyError(f"the state lacks {', '.join(missing[:5])}")
    with torch.no_grad():
        model.load_state_dict({k: _shard_like(model_state[k], v) for k, v in own.items()})
    if optim_state is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        state = {}
        for pid, st in optim_state["state"].items():
            p = params[int(pid)]
            state[int(pid)] = {k: _shard_like(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape
                               else v for k, v in st.items()}
        optimizer.load_state_dict({"state": state, "param_groups": optim_state["param_groups"]})
