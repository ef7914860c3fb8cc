"""Resumable training: the full state every ``checkpoint_every`` steps (``step-<n>.safetensors``),
the best weights beside it (``best-<n>.safetensors``), written atomically; on a rerun the newest
readable checkpoint is loaded."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..adapters import adapt
from ..checkpoint import CheckpointError, read_checkpoint, read_checkpoint_meta, write_checkpoint
from ..models import config_to_dict
from .config import History
from .fsdp import full_model_state, full_optimizer_state, is_sharded, load_full_state

__all__ = ["Best", "save_state", "latest_loadable", "resumed_best", "model_state", "load_model_state"]

_CKPT = re.compile(r"^step-(\d+)\.safetensors$")
_BEST = re.compile(r"^best-(\d+)\.safetensors$")


def checkpoint_files(folder: Path, pattern: re.Pattern = _CKPT) -> List[Tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return sorted(found)


def model_config(model: nn.Module) -> Optional[dict]:
    """The model's config as JSON data, from its adapter; a custom module trained with
    ``collate=`` has no adapter: its own ``config`` then, if it has one."""
    try:
        return adapt(model).config_dict()
    except TypeError:
        return config_to_dict(model.config) if hasattr(model, "config") else None


@dataclass
class Best:
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


def model_state(model: nn.Module, all_ranks: bool = False) -> dict:
    """A copy of the model's full ``state_dict``; a sharded (FSDP) model's is gathered -- a
    collective, every rank calls it -- onto rank 0 (every rank with ``all_ranks``)."""
    if is_sharded(model):
        return full_model_state(model, all_ranks)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_model_state(model: nn.Module, state: dict) -> None:
    """Load a full ``state_dict`` (into a sharded model: every rank keeps its shard)."""
    if is_sharded(model):
        load_full_state(model, None, state)
    else:
        model.load_state_dict(state)


def save_state(folder: Path, step: int, model, optimizer, scheduler, iterator, history, config, kd,
                scaler=None, best: Optional[Best] = None, write: bool = True, learned=None):
    """Write the training state. A sharded model is gathered first: then every rank calls
    this, and only the one with ``write`` writes. ``learned``: the targets' own trained
    module (e.g. hidden-state projections), saved under ``targets.``."""
    if is_sharded(model):
        state, opt = full_model_state(model), full_optimizer_state(model, optimizer)
    else:
        state, opt = model.state_dict(), optimizer.state_dict()
    if not write:
        return
    if best is not None and best.state is not None and not best.written:
        write_checkpoint(folder / best.ref()["file"], {f"model.{k}": v for k, v in best.state.items()},
                         {"kind": "best_weights", "model_config": model_config(model), **best.ref()})
        best.written = True
    tensors = {f"model.{k}": v for k, v in state.items()}
    if learned is not None:  # the targets' learned parts (e.g. hidden-state projections)
        tensors.update({f"targets.{k}": v for k, v in learned.state_dict().items()})
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
        "model_config": model_config(model),
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
    kept = checkpoint_files(folder)
    for _, old in kept[: -config.keep_checkpoints]:
        old.unlink(missing_ok=True)
    # best-weight files older than the one the oldest kept checkpoint refers to are unreachable
    try:
        oldest = (read_checkpoint_meta(kept[-config.keep_checkpoints:][0][1]).get("best") or {}).get("step")
    except CheckpointError:
        oldest = None
    if oldest is not None:
        for s, path in checkpoint_files(folder, _BEST):
            if s < oldest:
                path.unlink(missing_ok=True)


def load_state(path: Path, model, optimizer, scheduler, iterator, scaler=None, learned=None):
    tensors, meta = read_checkpoint(path)
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training checkpoint")
    mine = model_config(model)
    if meta.get("model_config") != mine:
        raise CheckpointError(
            f"checkpoint {path} was made for a different model config:\n"
            f"  checkpoint: {meta.get('model_config')}\n  model:      {mine}"
        )
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if learned is not None:
        learned.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("targets.")})
    state = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    if is_sharded(model):  # every rank reads the full state and keeps its shards
        load_full_state(model, optimizer, weights, {"state": state, "param_groups": meta["param_groups"]})
    else:
        model.load_state_dict(weights)
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


def latest_loadable(folder: Path, model, optimizer, scheduler, iterator, scaler=None, learned=None):
    for _step, path in reversed(checkpoint_files(folder)):
        try:
            return load_state(path, model, optimizer, scheduler, iterator, scaler, learned)
        except CheckpointError as exc:
            if "different model config" in str(exc):
                raise
            warnings.warn(f"skipping unreadable checkpoint {path.name}: {exc}", stacklevel=3)
    return None


def resumed_best(folder: Path, meta: dict, history: History, device) -> Best:
    """The best weights recorded by the checkpoint a run resumes from (``restore_best``)."""
    ref = meta.get("best")
    if ref:
        try:
            tensors, _ = read_checkpoint(folder / ref["file"])
            state = {k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")}
            return Best(float(ref["valid_loss"]), int(ref["step"]), state, written=True)
        except CheckpointError as exc:
            reason = str(exc)
    else:
        reason = "the run before the resume did not keep them (restore_best was off)"
    if history.valid_loss:
        warnings.warn(f"restore_best: the best weights before the resume are not available ({reason}); "
                      "the best of the evaluations after the resume will be restored", stacklevel=3)
    return Best()
