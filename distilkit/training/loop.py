"""One training loop for teachers (hard labels) and students (distillation): :func:`train`,
:func:`distill` and :func:`evaluate_loss`.

The loop is ordinary PyTorch -- AdamW, warm-up + cosine schedule, gradient clipping,
gradient accumulation, bf16 autocast on CUDA, periodic validation -- with one pluggable
step: the *targets* (:mod:`distilkit.training.targets`), which say what the student learns
from. Resuming lives in :mod:`~distilkit.training.resume`, the torchrun rules in
:mod:`~distilkit.training.distributed`.

Gradient accumulation is exact: the loss of every micro-batch is a *sum* over its tokens,
divided by the token count of the whole accumulated batch, so ``grad_accum=4`` with batch 16
gives the gradient of batch 64 however the padding falls.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..adapters import adapt
from ..cache import TeacherCache
from ..data import IGNORE_INDEX, BatchIterator
from ..models import check_token_ids
from ..protocol import fit_to_context
from ..tokenalign import encode_with_spans
from .config import History, KDConfig, TrainConfig, resolve_device
from .cross import CrossTokenizerTargets, text_of
from .distributed import (
    all_reduce_sum,
    average_gradients,
    barrier,
    maybe_no_sync,
    process_device,
    rank_collate,
    setup_distributed,
    token_divisor,
    wrap_model,
)
from .fsdp import local, local_norm
from .hidden import HiddenStateTargets
from .resume import Best, latest_loadable, load_model_state, model_state, resumed_best, save_state
from .targets import CacheTargets, HardLabels, OnPolicyTargets, Targets, TeacherLogits

__all__ = ["train", "distill", "evaluate_loss", "default_collate"]


def default_collate(model: nn.Module) -> Callable:
    """The examples -> batch function for ``model``: its adapter's ``collate``."""
    try:
        return adapt(model).collate
    except TypeError as exc:
        raise TypeError(f"pass collate= for this model: {exc}") from None


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
            check_token_ids(t, vocab_size, f"batch.{f.name} token ids")


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
                  batch_size: int = 256, device: Union[str, torch.device, None] = None,
                  max_length: Optional[int] = None) -> float:
    """Token-mean cross-entropy (nats) of ``model`` on ``examples``; ``exp`` of it is perplexity.
    Examples longer than the model can read are an error, or cut to ``max_length``.

    The sums stay on the device; the result is read back once, at the end."""
    if len(examples) == 0:
        raise ValueError("examples must not be empty")
    adapter = adapt(model, collate=collate)
    examples = fit_to_context(adapter, examples, max_length)
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
    torch.manual_seed(config.seed)  # before check: targets may make learned parts (projections) there
    alignment = targets.check(adapter)
    if train_examples is None or len(train_examples) == 0:
        raise ValueError("train_examples must not be empty")
    train_examples = fit_to_context(adapter, train_examples, config.max_length)
    if valid_examples is not None:
        valid_examples = fit_to_context(adapter, valid_examples, config.max_length)
    collate = adapter.collate
    device = resolve_device(config.device)
    dist_state = setup_distributed(device)  # torchrun: WORLD_SIZE > 1
    device = process_device(device, dist_state)
    model.to(device)
    if targets.teacher is not None:
        targets.teacher.to(device).eval()
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters (all requires_grad=False)")
    sharded = dist_state.enabled and config.parallel == "fsdp"
    if sharded:
        _check_fsdp(model, targets, config)
    # DDP wraps the model; FSDP shards it in place (new parameters: before the optimizer)
    adapter.forward_module = wrap_model(model, dist_state, device, config.parallel)
    if sharded and config.shard_teacher and targets.teacher is not None:
        wrap_model(targets.teacher, dist_state, device, "fsdp")
    if targets.learned is not None:
        targets.learned.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    mine = {id(p) for p in params}
    # the targets' own trained parts (projections): not inside DDP, their gradients are averaged below
    extra = [p for p in targets.parameters() if id(p) not in mine]
    params += extra
    vocab = adapter.vocab_size
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    scaler = _grad_scaler(device, config)
    train_examples, train_collate = targets.prepare(train_examples, collate, vocab)
    # every rank draws the same global batch of world_size x batch_size and keeps its slice
    iterator = BatchIterator(train_examples, config.batch_size * dist_state.world_size,
                             rank_collate(train_collate, dist_state), seed=config.seed)
    history, start, best = History(), 0, Best()
    folder = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if folder is not None and config.resume:
        loaded = latest_loadable(folder, model, optimizer, scheduler, iterator, scaler, targets.learned)
        if loaded is not None:
            start, history, meta = loaded
            if config.restore_best:
                best = resumed_best(folder, meta, history, device)
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
                        logits = targets.student_output(adapter, batch, teacher_logits)
                    loss_sum = targets.loss_sum(logits, teacher_logits, batch.labels, False, alignment)
                    (scaler.scale(loss_sum) if scaler is not None else loss_sum).backward()
                loss_total += loss_sum.detach().float()
                n_tokens += (batch.labels != IGNORE_INDEX).sum()
                del batch, teacher_logits, logits, loss_sum
            average_gradients(extra, dist_state)
            if dist_state.enabled:  # loss and token count of the whole step, over all ranks
                loss_total, n_tokens = all_reduce_sum(torch.stack([loss_total, n_tokens.float()]), dist_state)
            if scaler is not None:
                scaler.unscale_(optimizer)
            count = n_tokens.clamp(min=1)
            divisor = token_divisor(count, dist_state)
            grads = [local(p.grad) for p in params if p.grad is not None]  # FSDP: this rank's shards
            for g in grads:
                g.div_(divisor)
            if config.clip_norm is not None:  # on DTensors too: the norm is over all shards
                grad_finite = torch.isfinite(local_norm(torch.nn.utils.clip_grad_norm_(params, config.clip_norm)))
            elif grads:
                grad_finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
                if sharded:  # every rank must take the same decision
                    grad_finite = all_reduce_sum((~grad_finite).float(), dist_state) == 0
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
                    best = Best(vl, done, model_state(model, all_ranks=True))
                bar.set_postfix(loss=f"{step_loss:.3f}", valid=f"{vl:.3f}")
            elif done % 10 == 0:
                bar.set_postfix(loss=f"{step_loss:.3f}")
            bar.update(1)
            history.seconds = time.perf_counter() - t0
            if folder is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                # one writer; the other ranks wait for the file (under FSDP they first help
                # gather the full state)
                if dist_state.is_main or sharded:
                    save_state(folder, done, model, optimizer, scheduler, iterator, history, config, kd,
                               scaler, best if config.restore_best else None, write=dist_state.is_main,
                               learned=targets.learned)
                barrier(dist_state)
    finally:
        bar.close()
        adapter.forward_module = model
    if config.restore_best and best.state is not None:
        load_model_state(model, best.state)
    model.eval()
    return history


def _check_fsdp(model: nn.Module, targets: Targets, config: TrainConfig) -> None:
    """What sharding cannot do, refused before anything is sharded."""
    kd = targets.kd
    if kd is not None and kd.memory_bounded and not hasattr(model, "hidden_and_head"):
        raise ValueError(
            "KDConfig.memory_bounded with TrainConfig(parallel='fsdp') needs a model with its own "
            f"hidden_and_head() method (distilkit's models); {type(model).__name__}'s hidden states are "
            "computed by its adapter outside the sharded forward, where its parameters are still "
            "sharded. Use memory_bounded=False, or parallel='ddp' with one process")
    if targets.learned is not None:
        raise ValueError(f"{type(targets).__name__} trains its own projections, which "
                         "TrainConfig(parallel='fsdp') does not shard or checkpoint; use parallel='ddp'")
    if getattr(targets, "teacher", None) is not None and isinstance(targets, OnPolicyTargets):
        raise ValueError("OnPolicyTargets with TrainConfig(parallel='fsdp') is not supported: sampling "
                         "from the student calls it outside its forward; use parallel='ddp'")


def _raise_for_loss(step, value, host_batches, adapter, targets, kd, device, config, alignment):
    """The step's loss was not finite: find out why, with the loss's value checks on (the hot
    path skips them), and raise. Runs only on the way to an error."""
    with torch.no_grad():
        for host in host_batches:
            batch = _to_device(host, device, adapter.vocab_size)
            with _autocast(device, config):
                batch, teacher_logits = targets(batch, adapter.model)
                logits = targets.student_output(adapter, batch, teacher_logits)
            targets.loss_sum(logits, teacher_logits, batch.labels, True, alignment)  # may raise ValueError
    raise FloatingPointError(f"loss became {value} at step {step}; lower TrainConfig.lr or check the data")


def distill(
    student: nn.Module,
    teacher: Union[nn.Module, TeacherCache],
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
    log-probabilities with no teacher in memory; ``kd.temperature`` defaults to the cache's.

    ``kd.hidden_weight > 0`` adds hidden-state KD (:class:`~distilkit.training.HiddenStateTargets`).
    ``kd.cross_tokenizer`` (``"uld"`` or ``"align"``) distils from a decoder-only teacher with
    another tokenizer (:class:`~distilkit.training.CrossTokenizerTargets`): ``train_examples``
    (and ``valid_examples``) are then texts -- strings or ``(prompt, completion)`` pairs -- that
    each model tokenizes with its own tokenizer (``student_tokenizer`` / ``teacher_tokenizer``,
    or ``model.tokenizer``)."""
    if isinstance(teacher, TeacherCache):
        if kd is not None and (kd.hidden_weight > 0 or kd.cross_tokenizer):
            raise ValueError("a teacher cache holds top-k logits only: hidden-state and cross-tokenizer KD "
                             "need the live teacher")
        return train(student, train_examples, config=config, targets=CacheTargets(teacher, kd),
                     valid_examples=valid_examples, collate=collate)
    if kd is not None and kd.cross_tokenizer:
        targets: Targets = CrossTokenizerTargets(teacher, kd, student_tokenizer=student_tokenizer,
                                                 teacher_tokenizer=teacher_tokenizer)
        if valid_examples is not None:  # texts -> the student's token ids
            tok = student_tokenizer if student_tokenizer is not None else getattr(student, "tokenizer", None)
            valid_examples = [encode_with_spans(tok, text_of(ex, i)[0])[0] if not isinstance(ex, list) else ex
                              for i, ex in enumerate(valid_examples)]
    elif kd is not None and kd.hidden_weight > 0:
        targets = HiddenStateTargets(teacher, kd, student_tokenizer=student_tokenizer,
                                     teacher_tokenizer=teacher_tokenizer)
    else:
        targets = TeacherLogits(teacher, kd, student_tokenizer=student_tokenizer,
                                teacher_tokenizer=teacher_tokenizer)
    return train(student, train_examples, config=config, targets=targets,
                 valid_examples=valid_examples, collate=collate)
