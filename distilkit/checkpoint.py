"""Checkpoints: safetensors weights + JSON metadata in one file, written atomically.

Nothing here unpickles: a file is parsed as safetensors (a JSON header and raw tensor bytes)
or refused. A write goes to a temporary file in the same folder, is flushed to disk, then
renamed over the target, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .data import Tokenizer, tokenizer_from_dict
from .models import config_from_dict, config_to_dict, model_from_config

__all__ = ["CheckpointError", "save_model", "load_model", "load_weights", "write_checkpoint",
           "read_checkpoint", "read_checkpoint_meta", "atomic_write_bytes"]

FORMAT = "distilkit-v1"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, truncated, foreign, or for a different model."""


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _dedupe(tensors: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Split shared tensors (tied weights: ``lm_head.weight is embed.weight``), which
    safetensors refuses, into tensors stored once and ``{alias: stored name}``.

    A name that is exactly the same view as an earlier one becomes an alias; a name that only
    overlaps another's memory is stored as its own copy."""
    out: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    views: Dict[tuple, str] = {}
    storages = set()
    for name, t in tensors.items():
        t = t.detach()
        if t.numel() == 0:
            out[name] = t.contiguous().cpu()
            continue
        ptr = t.untyped_storage().data_ptr()
        view = (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        shared = (t.device, ptr) in storages
        storages.add((t.device, ptr))
        t = t.clone() if shared else t
        # a CPU tensor can still share memory with one stored earlier (tensors from elsewhere)
        out[name] = t.contiguous().cpu()
    return out, aliases


def write_checkpoint(path: Union[str, Path], tensors: Dict[str, torch.Tensor], meta: dict) -> None:
    """Save tensors and a JSON-serialisable ``meta`` dict as one safetensors file, atomically.

    Tensors that are the same memory under several names (tied weights) are stored once and
    restored under every name by :func:`read_checkpoint`."""
    tensors, aliases = _dedupe(tensors)
    header = {"format": FORMAT, "meta": json.dumps(meta)}
    if aliases:
        header["aliases"] = json.dumps(aliases)
    blob = st_save(tensors, metadata=header)
    atomic_write_bytes(path, blob)


def read_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`write_checkpoint`; never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise CheckpointError(
            f"{path} is not a readable distilkit checkpoint (expected a safetensors file; "
            f"it may be truncated, or a pickle, which distilkit never loads): {exc}"
        ) from None
    meta = header.get("__metadata__", {}) or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a distilkit checkpoint "
            f"(format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        aliases = json.loads(meta.get("aliases") or "{}")
        for alias, name in aliases.items():
            tensors[alias] = tensors[name]
        return tensors, json.loads(meta["meta"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a crafted or damaged header
        raise CheckpointError(f"{path} has unreadable distilkit metadata: {exc!r}") from None


def read_checkpoint_meta(path: Union[str, Path]) -> dict:
    """The ``meta`` dict of a checkpoint, read from its header alone (not the tensors)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n > 100_000_000:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(fh.read(n))
        meta = header.get("__metadata__", {}) or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        return json.loads(meta["meta"])
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} has no readable distilkit header: {exc!r}") from None


def save_model(model: torch.nn.Module, path: Union[str, Path], tokenizer: Optional[Tokenizer] = None,
               extra: Optional[dict] = None) -> None:
    """Save a distilkit model's weights, config (and optionally its tokenizer) to ``path``.

    A model sharded by ``TrainConfig(parallel="fsdp")`` is gathered first: call this on every
    rank; rank 0 writes the full weights (a file that loads in one process)."""
    if not hasattr(model, "config"):
        raise TypeError("model must be a distilkit model with a .config (Seq2SeqLSTM or TransformerLM)")
    meta = {"kind": "model", "config": config_to_dict(model.config), "extra": extra or {}}
    if tokenizer is not None:
        meta["tokenizer"] = tokenizer.to_dict()
    state = model.state_dict()
    if any(hasattr(v, "full_tensor") for v in state.values()):
        # sharded by FSDP (TrainConfig(parallel="fsdp")): gather the full weights onto rank 0 --
        # a collective, so every rank calls save_model -- and write them there only
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_rank() != 0:
            return
    write_checkpoint(path, {f"model.{k}": v for k, v in state.items()}, meta)


def _model_state(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def load_weights(model: torch.nn.Module, path: Union[str, Path]) -> dict:
    """Load weights from ``path`` into an existing model; the configs must match exactly.

    Returns the checkpoint's metadata.
    """
    tensors, meta = read_checkpoint(path)
    saved = meta.get("config") or meta.get("model_config")
    mine = config_to_dict(model.config) if hasattr(model, "config") else None
    if saved != mine:
        if isinstance(saved, dict) and isinstance(mine, dict):
            keys = [k for k in {**saved, **mine} if saved.get(k) != mine.get(k)]
            diff = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, model {mine.get(k)!r}" for k in keys)
        else:
            diff = "the model is not a distilkit model" if mine is None else "the checkpoint has no model config"
        raise CheckpointError(
            f"checkpoint {path} was made for a different model config ({diff}):\n"
            f"  checkpoint: {saved}\n  model:      {mine}"
        )
    model.load_state_dict(_model_state(tensors))
    return meta


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """Rebuild a model saved by :func:`save_model` (or a training checkpoint).

    Returns ``(model, tokenizer_or_None, metadata)``; the model is in eval mode.
    """
    tensors, meta = read_checkpoint(path)
    saved = meta.get("config") or meta.get("model_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} is a distilkit checkpoint without a model config "
                              f"(kind {meta.get('kind')!r}); expected one written by save_model or train")
    try:
        config = config_from_dict(saved)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
    model = model_from_config(config)
    try:
        model.load_state_dict(_model_state(tensors))
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match its own config: {exc}") from None
    tok = tokenizer_from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
    return model.to(device).eval(), tok, meta
