"""A top-k teacher cache on disk: run the teacher once, distil without it.

:func:`cache_teacher_logits` runs a frozen teacher over the examples and stores, for every
counted target position (``labels != IGNORE_INDEX``), the teacher's ``k`` largest
log-probabilities at temperature ``T``, their token ids, and the log of the probability mass
left outside them (the *tail*). Shards are safetensors files; a JSON manifest names the
teacher, the vocabulary size, ``k``, ``T``, the example count and a hash of the examples.
:func:`load_teacher_cache` reopens the folder; ``dk.distill(student, cache, examples)`` then
trains with no teacher in memory, reading rows lazily from memory-mapped shards.

The loss that reads it is :func:`distilkit.losses.topk_distillation_loss` (the maths of the
"rest bucket" is in :mod:`distilkit.losses.topk`); the training loop's side is
:class:`distilkit.training.targets.CacheTargets`. This module is the on-disk format only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from .adapters import adapt
from .checkpoint import atomic_write_bytes
from .data import IGNORE_INDEX
from .losses import TopKTeacher
from .losses.checks import check_temperature
from .protocol import fit_to_context

__all__ = [
    "CacheMismatchError",
    "CachedBatch",
    "IndexedExamples",
    "TeacherCache",
    "cache_teacher_logits",
    "load_teacher_cache",
    "hash_examples",
]

MANIFEST = "manifest.json"
FORMAT = "distilkit-topk-cache-v1"


class CacheMismatchError(ValueError):
    """A teacher cache does not fit the examples or the student it is used with."""


# ============================================================================ hashing
def _canonical(example: Any) -> Any:
    """Examples as plain nested lists of ints: a sequence (lm) or a pair of them (seq2seq)."""
    if isinstance(example, torch.Tensor):
        return [int(x) for x in example.tolist()]
    if isinstance(example, (list, tuple)):
        if all(isinstance(x, int) or (isinstance(x, torch.Tensor) and x.dim() == 0) for x in example):
            return [int(x) for x in example]
        return [_canonical(x) for x in example]
    raise TypeError(f"an example must be a sequence of token ids or a pair of them, "
                    f"got {type(example).__name__}")


def hash_examples(examples: Iterable) -> str:
    """SHA-256 of the examples' token ids, in order (what a cache is tied to)."""
    h = hashlib.sha256()
    n = 0
    for ex in examples:
        h.update(json.dumps(_canonical(ex), separators=(",", ":")).encode())
        h.update(b"\n")
        n += 1
    h.update(f"count={n}".encode())
    return h.hexdigest()


# ============================================================================ writing
def _teacher_name(model: nn.Module) -> str:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None),
                                                          "_name_or_path", None)
    return str(name) if name else type(model).__name__


def _index_dtype(vocab_size: int) -> torch.dtype:
    return torch.int16 if vocab_size <= 2 ** 15 else torch.int32


@torch.no_grad()
def cache_teacher_logits(
    teacher: nn.Module,
    examples: Sequence,
    out_dir: Union[str, Path],
    *,
    top_k: int = 32,
    temperature: float = 1.0,
    batch_size: int = 64,
    examples_per_shard: int = 4096,
    dtype: torch.dtype = torch.float16,
    teacher_name: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
    max_length: Optional[int] = None,
) -> "TeacherCache":
    """Run ``teacher`` once over ``examples`` and write its top-k log-probabilities to ``out_dir``.

    Args:
        teacher: any model :func:`distilkit.adapters.adapt` accepts (distilkit or HF).
        examples: the training examples, exactly as they will be passed to ``distill``.
        out_dir: a new or empty folder (an existing cache there is replaced).
        top_k: tokens kept per position, 1 <= top_k <= vocab.
        temperature: T of the stored ``log softmax(teacher_logits / T)``; ``distill`` uses it.
        examples_per_shard: examples per safetensors shard.
        dtype: storage type of the log-probabilities (float16 or float32); the tail mass is
            always float32, token ids int16 (vocab <= 32768) or int32.
        max_length: cut longer examples to fit (see :func:`distilkit.protocol.fit_to_context`);
            train with the same ``TrainConfig(max_length=...)``, so that the examples agree.

    Under torchrun (an initialised process group of several processes) every process runs
    its own copy of the teacher over a contiguous share of the batches and writes its own
    shards (``shard-<n>-r<rank>.safetensors``); rank 0 writes the one manifest, in example
    order, after all of them. Call it on every rank with the same arguments; ``out_dir`` must
    be a folder they share. The rows equal those of one process, example by example.

    Per counted target position the cache holds ``top_k * (bytes(dtype) + bytes(index)) + 4``
    bytes. The manifest is written last, atomically, so an interrupted run leaves no cache
    that :func:`load_teacher_cache` would accept.
    """
    adapter = adapt(teacher)
    vocab = int(adapter.vocab_size)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be an int in [1, {vocab}] (the teacher's vocab size), got {top_k!r}")
    temperature = check_temperature(temperature)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    for name, v in (("batch_size", batch_size), ("examples_per_shard", examples_per_shard)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if examples is None or len(examples) == 0:
        raise ValueError("examples must not be empty")
    examples = fit_to_context(adapter, examples, max_length)
    out = Path(out_dir)
    rank, world = _rank_world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)
        for old in out.glob("shard-*.safetensors"):
            old.unlink()
    _barrier(world)  # the old cache is gone before any rank writes
    model = adapter.model
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was = model.training
    model.eval()
    idx_dtype = _index_dtype(vocab)
    shards, total_tokens = [], 0
    try:
        for g, batches in tqdm(_my_shards(len(examples), batch_size, examples_per_shard, rank, world),
                               desc="teacher cache", disable=not (progress and rank == 0)):
            logp_rows, idx_rows, tail_rows, lengths = [], [], [], []
            for b0, b1 in batches:
                chunk = [examples[i] for i in range(b0, b1)]
                batch = adapter.collate(chunk).to(dev)
                log_p = F.log_softmax(adapter.logits(batch).float() / temperature, dim=-1)
                top, ids = log_p.topk(top_k, dim=-1)
                tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1)
                mask = batch.labels != IGNORE_INDEX
                for j in range(len(chunk)):
                    m = mask[j]
                    logp_rows.append(top[j][m].to(dtype).cpu())
                    idx_rows.append(ids[j][m].to(idx_dtype).cpu())
                    tail_rows.append(tail[j][m].cpu())
                    lengths.append(int(m.sum()))
            offsets = torch.tensor([0] + lengths).cumsum(0)
            s0 = batches[0][0]
            # numbered by the one-process shard it belongs to; a rank's share may cut one in two
            name = f"shard-{g:05d}.safetensors" if world == 1 else f"shard-{g:05d}-r{rank:03d}.safetensors"
            atomic_write_bytes(out / name, st_save({
                "log_probs": torch.cat(logp_rows).contiguous(),
                "indices": torch.cat(idx_rows).contiguous(),
                "tail": torch.cat(tail_rows).contiguous(),
                "offsets": offsets,
            }))
            shards.append({"file": name, "first_example": s0, "num_examples": len(lengths),
                           "num_tokens": int(offsets[-1])})
            total_tokens += int(offsets[-1])
    finally:
        model.train(was)
    if world > 1:  # rank 0 lists every rank's shards, in example order (ranks hold contiguous shares)
        import torch.distributed as dist

        everyone = [None] * world
        dist.all_gather_object(everyone, shards)
        shards = [s for part in everyone for s in part]
        total_tokens = sum(s["num_tokens"] for s in shards)
    if rank != 0:
        _barrier(world)  # wait for rank 0's manifest
        return TeacherCache(out)
    manifest = {
        "format": FORMAT,
        "teacher": teacher_name or _teacher_name(model),
        "kind": adapter.kind,
        "vocab_size": vocab,
        "top_k": top_k,
        "temperature": temperature,
        "dtype": str(dtype).replace("torch.", ""),
        "num_examples": len(examples),
        "num_tokens": total_tokens,
        "examples_sha256": hash_examples(examples[i] for i in range(len(examples))),
        "max_length": max_length,
        "shards": shards,
    }
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    _barrier(world)
    return TeacherCache(out)


def _rank_world() -> Tuple[int, int]:
    """(rank, world size) of an initialised process group (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _my_shards(n: int, batch_size: int, per_shard: int, rank: int, world: int):
    """This rank's work as ``[(shard number, [(start, end) of each batch])]``. The batches are
    those of one process (``batch_size`` examples, cut at every ``per_shard``-th example), so
    every example is scored in the same batch as in one process: same padding, same values.
    Rank r takes the r-th contiguous share of them (sizes differ by at most one batch)."""
    batches = [(g, b0, min(b0 + batch_size, s0 + per_shard, n))
               for g, s0 in enumerate(range(0, n, per_shard))
               for b0 in range(s0, min(s0 + per_shard, n), batch_size)]
    k, extra = divmod(len(batches), world)
    start = rank * k + min(rank, extra)
    mine = batches[start : start + k + (1 if rank < extra else 0)]
    out: list = []
    for g, b0, b1 in mine:
        if not out or out[-1][0] != g:
            out.append((g, []))
        out[-1][1].append((b0, b1))
    return out


# ============================================================================ reading
class TeacherCache:
    """A cache folder written by :func:`cache_teacher_logits`, read lazily.

    Shards are opened memory-mapped with ``safetensors.safe_open`` when a row of theirs is
    first asked for; at most ``max_open_shards`` stay open, so memory does not grow with the
    number of examples. ``cache.row(i)`` returns example ``i``'s ``(log_probs (n, k),
    indices (n, k), tail (n,))`` for its ``n`` counted target positions.
    """

    def __init__(self, path: Union[str, Path], max_open_shards: int = 2):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"no teacher cache at {self.path} ({MANIFEST} is missing; "
                                    "write one with cache_teacher_logits)")
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{mpath} is not valid JSON: {exc}") from None
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath} is not a distilkit top-k cache (format "
                             f"{self.manifest.get('format')!r}, expected {FORMAT!r})")
        for s in self.manifest["shards"]:
            if not (self.path / s["file"]).is_file():
                raise FileNotFoundError(f"teacher cache {self.path} lacks shard {s['file']}")
        self._starts = [s["first_example"] for s in self.manifest["shards"]]
        self._open: "OrderedDict[int, Tuple[Any, torch.Tensor]]" = OrderedDict()
        self.max_open_shards = max_open_shards

    # manifest fields
    vocab_size = property(lambda self: int(self.manifest["vocab_size"]))
    top_k = property(lambda self: int(self.manifest["top_k"]))
    temperature = property(lambda self: float(self.manifest["temperature"]))
    num_tokens = property(lambda self: int(self.manifest["num_tokens"]))
    teacher = property(lambda self: self.manifest["teacher"])

    def __len__(self) -> int:
        return int(self.manifest["num_examples"])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"TeacherCache({str(self.path)!r}, teacher={m['teacher']!r}, vocab={m['vocab_size']}, "
                f"k={m['top_k']}, T={m['temperature']}, examples={m['num_examples']}, "
                f"tokens={m['num_tokens']})")

    @property
    def nbytes(self) -> int:
        """Bytes of all shards on disk."""
        return sum((self.path / s["file"]).stat().st_size for s in self.manifest["shards"])

    @property
    def bytes_per_token(self) -> float:
        return self.nbytes / max(self.num_tokens, 1)

    def _shard(self, k: int):
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        handle = safe_open(str(self.path / self.manifest["shards"][k]["file"]), framework="pt")
        entry = (handle, handle.get_tensor("offsets"))
        self._open[k] = entry
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return entry

    def row(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"example index {i} out of range for a cache of {len(self)} examples")
        k = _bisect_right(self._starts, i) - 1
        handle, offsets = self._shard(k)
        j = i - self._starts[k]
        a, b = int(offsets[j]), int(offsets[j + 1])
        return (handle.get_slice("log_probs")[a:b], handle.get_slice("indices")[a:b],
                handle.get_slice("tail")[a:b])

    # ------------------------------------------------------------------ checks
    def check(self, examples: Sequence, vocab_size: Optional[int] = None,
              temperature: Optional[float] = None) -> None:
        """Refuse examples, a student vocabulary or a temperature the cache was not built for."""
        m = self.manifest
        if vocab_size is not None and int(vocab_size) != self.vocab_size:
            raise CacheMismatchError(
                f"the teacher cache at {self.path} was built for a vocabulary of {self.vocab_size} "
                f"tokens (teacher {m['teacher']!r}) but the student's vocab size is {vocab_size}: "
                "word-level KD needs one shared tokenizer")
        if len(examples) != len(self):
            raise CacheMismatchError(
                f"the teacher cache at {self.path} holds {len(self)} examples but "
                f"{len(examples)} were passed: pass the examples the cache was built from")
        digest = hash_examples(examples[i] for i in range(len(examples)))
        if digest != m["examples_sha256"]:
            raise CacheMismatchError(
                f"the teacher cache at {self.path} was built for other examples (hash "
                f"{m['examples_sha256'][:12]}..., these hash to {digest[:12]}...): pass the same "
                "examples, in the same order, or rebuild the cache"
                + (f" (it was built with max_length={m['max_length']}: train with the same "
                   "TrainConfig(max_length=...))" if m.get("max_length") else ""))
        if temperature is not None and not math.isclose(float(temperature), self.temperature):
            raise CacheMismatchError(
                f"the teacher cache at {self.path} stores log-probabilities at temperature "
                f"{self.temperature}, but temperature={temperature} was asked for; rebuild the "
                "cache at that temperature or use KDConfig(temperature="
                f"{self.temperature})")

    # ------------------------------------------------------------------ batching
    def collate_fn(self, collate: Callable) -> Callable:
        """Wrap an examples -> batch ``collate`` for :class:`IndexedExamples`: the result is a
        :class:`CachedBatch` carrying the rows, scattered onto the counted label positions."""

        def fn(items: Sequence[Tuple[int, Any]]) -> "CachedBatch":
            batch = collate([ex for _, ex in items])
            mask = batch.labels != IGNORE_INDEX
            B, T = batch.labels.shape
            k = self.top_k
            log_probs = torch.zeros(B, T, k)
            indices = torch.zeros(B, T, k, dtype=torch.long)
            tail = torch.full((B, T), float("-inf"))
            for j, (i, _) in enumerate(items):
                lp, ids, tl = self.row(i)
                n = int(mask[j].sum())
                if lp.shape[0] != n:
                    raise CacheMismatchError(
                        f"example {i} has {n} target positions but the cache holds {lp.shape[0]} "
                        "rows for it: the cache was built with another collate/model kind")
                log_probs[j][mask[j]] = lp.float()
                indices[j][mask[j]] = ids.long()
                tail[j][mask[j]] = tl.float()
            return CachedBatch(batch, TopKTeacher(log_probs, indices, tail, self.temperature))

        return fn


def _bisect_right(a: List[int], x: int) -> int:
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


class IndexedExamples(Sequence):
    """``examples`` seen as ``(index, example)`` pairs, so a batch knows which cache rows it needs."""

    def __init__(self, examples: Sequence):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return i, self.examples[i]


@dataclass
class CachedBatch:
    """A model batch plus its cached teacher rows; ``labels`` and ``len`` are the inner batch's."""

    batch: Any
    teacher: TopKTeacher

    @property
    def labels(self) -> torch.Tensor:
        return self.batch.labels

    def to(self, device) -> "CachedBatch":
        return CachedBatch(self.batch.to(device), self.teacher.to(device))

    def __len__(self) -> int:
        return len(self.batch)


def load_teacher_cache(path: Union[str, Path]) -> TeacherCache:
    """Reopen a cache written by :func:`cache_teacher_logits` (reads only the manifest)."""
    return TeacherCache(path)
