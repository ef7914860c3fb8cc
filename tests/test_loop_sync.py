"""How often the training loop reads tensors back to the host, per optimizer step.

On a GPU every such read (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, ``float(t)``,
``.numpy()``, ``t.__index__``) waits for the device to finish its queue. On the CPU they cost
nothing, but they can be counted: these tests patch the conversions on ``torch.Tensor``, run
the loop for a few steps and a few more, and divide the difference in counts by the extra
steps (the set-up cancels). Each read is attributed to the file and function that made it.

What must hold: the loop and the loss together read once per optimizer step. The models read
their token ids once per forward pass, only when the ids are in host memory (the check is
skipped on an accelerator; tested below with the ``meta`` device, where any read would fail).
The optimizer's reads are of its step counters, which PyTorch keeps in host memory; the batch
iterator reads the permutation it draws on the CPU once per epoch.
"""

from __future__ import annotations

import collections
import os
import random
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

torch.set_num_threads(1)

from distilkit import (  # noqa: E402
    KDConfig,
    Seq2SeqConfig,
    Seq2SeqLSTM,
    TeacherLogits,
    TrainConfig,
    TransformerConfig,
    TransformerLM,
    train,
)
from distilkit.models import check_token_ids  # noqa: E402

V = 13
_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


#: operators whose output shape depends on tensor values: the host must wait for them too
_VALUE_SHAPED = {"aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_consecutive",
                 "aten::unique_dim", "aten::repeat_interleave", "aten::equal", "aten::is_nonzero"}


class _ValueShapedOps(TorchDispatchMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        boolean_index = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        if name in _VALUE_SHAPED or boolean_index:
            self.record(sys._getframe(1), name)
        return func(*args, **(kwargs or {}))


class HostReads:
    """Count tensor-to-host conversions while active, keyed by (file, function) of the caller:
    the Python-level reads, and the operators whose output shape depends on values (boolean
    mask indexing, ``nonzero``, ...), attributed to the innermost distilkit frame."""

    def __init__(self):
        self.counts = collections.Counter()
        self._saved = {}
        self._mode = _ValueShapedOps(self._record_op)

    def _record_op(self, frame, op):
        while frame is not None and not _where(frame.f_code.co_filename).startswith("distilkit/"):
            frame = frame.f_back
        where = ("torch", op) if frame is None else (_where(frame.f_code.co_filename), frame.f_code.co_name)
        self.counts[where] += 1

    def __enter__(self):
        for name in _READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def wrapper(t, *args, _original=original, **kwargs):
                frame = sys._getframe(1)
                self.counts[(_where(frame.f_code.co_filename), frame.f_code.co_name)] += 1
                return _original(t, *args, **kwargs)

            setattr(torch.Tensor, name, wrapper)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def by_file(self) -> collections.Counter:
        out = collections.Counter()
        for (file, _), n in self.counts.items():
            out[file] += n
        return out


def _where(filename: str) -> str:
    parts = filename.replace(os.sep, "/").split("/")
    if "distilkit" in parts[:-1]:  # the path inside the package: distilkit/training/loop.py
        top = len(parts) - 1 - parts[:-1][::-1].index("distilkit") - 1
        return "/".join(parts[top:])
    if "torch" in parts[:-1]:
        return "torch"
    return parts[-1]


def windows(n, seed):
    rng = random.Random(seed)
    return [[rng.randrange(1, V) for _ in range(rng.randint(3, 10))] for _ in range(n)]


def pairs(n, seed):
    rng = random.Random(seed)
    return [([rng.randrange(4, V) for _ in range(rng.randint(1, 6))],
             [rng.randrange(4, V) for _ in range(rng.randint(0, 8))] + [2]) for _ in range(n)]


def make(kind, seed):
    torch.manual_seed(seed)
    if kind == "lm":
        return TransformerLM(TransformerConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_len=32))
    return Seq2SeqLSTM(Seq2SeqConfig(vocab_size=V, embed_dim=16, hidden_dim=16))


def reads_per_step(kind, kd, grad_accum, clip_norm, short=2, long=6):
    """Host reads per optimizer step, by (file, function), and the forwards per step."""
    examples = windows(48, 1) if kind == "lm" else pairs(48, 1)
    counts = []
    for steps in (short, long):
        targets = TeacherLogits(make(kind, 9), KDConfig(alpha=0.5, temperature=2.0)) if kd else None
        config = TrainConfig(steps=steps, batch_size=8, grad_accum=grad_accum, clip_norm=clip_norm,
                             warmup_steps=0, progress=False, device="cpu", eval_every=1000)
        model = make(kind, 0)
        with HostReads() as reads:
            train(model, examples, config=config, targets=targets)
        counts.append(reads.counts)
    diff = collections.Counter(counts[1])
    diff.subtract(counts[0])
    per_step = {k: v / (long - short) for k, v in diff.items() if v}
    forwards = grad_accum * (2 if kd else 1)
    return per_step, forwards


def _total(per_step, prefix):
    """Reads counted in the files under ``prefix`` (a module or a package folder)."""
    return sum(v for (f, _), v in per_step.items() if f.startswith(prefix))


@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
@pytest.mark.parametrize("kd", [False, True], ids=["hard", "kd"])
@pytest.mark.parametrize("grad_accum, clip_norm", [(1, 1.0), (3, None)], ids=["clip", "accum3-noclip"])
def test_one_host_read_per_optimizer_step(kind, kd, grad_accum, clip_norm):
    per_step, forwards = reads_per_step(kind, kd, grad_accum, clip_norm)
    loop_and_loss = _total(per_step, "distilkit/training/") + _total(per_step, "distilkit/losses/")
    assert loop_and_loss == 1, per_step
    # the models: the host-memory token-id check, once per forward pass, nothing else
    models = {k: v for k, v in per_step.items() if k[0] == "distilkit/models.py"}
    assert models == {("distilkit/models.py", "check_token_ids"): forwards}, per_step
    # elsewhere in distilkit only the batch iterator reads, once per epoch, a permutation it
    # draws from its own CPU generator (host memory on any device)
    others = {k for k in per_step if k[0].startswith("distilkit/") and not k[0].startswith(
        ("distilkit/training/", "distilkit/losses/", "distilkit/models.py"))}
    assert others <= {("distilkit/batching.py", "_make_order")}, per_step


def test_the_counter_sees_reads():
    """The counter is live: a hand-written loop with the usual per-step reads is counted."""
    t = torch.ones(3)
    with HostReads() as reads:
        float(t.sum())
        t.sum().item()
        bool(torch.isfinite(t).all())
        t.tolist()
        t[t > 0]  # boolean-mask indexing: its output shape depends on the values
    assert sum(reads.counts.values()) == 5, reads.counts


def test_token_id_check_reads_nothing_on_an_accelerator():
    """On a device other than the CPU the models' id check returns without reading (on the
    ``meta`` device a read raises), and on the CPU it does check."""
    check_token_ids(torch.full((2, 3), 99, dtype=torch.long, device="meta"), V, "ids")
    with pytest.raises(RuntimeError):
        bool(torch.zeros((), device="meta"))  # what a read on meta would do
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 13\), got 99"):
        check_token_ids(torch.full((2, 3), 99, dtype=torch.long), V, "ids")


def test_evaluation_and_checkpoint_steps_may_read_more(tmp_path):
    """Documented exceptions: an evaluation step reads the validation loss once per evaluation
    (not once per batch), a checkpoint step reads what the checkpoint stores."""
    examples = windows(48, 1)
    counts = []
    for steps in (2, 6):
        config = TrainConfig(steps=steps, batch_size=8, progress=False, device="cpu", eval_every=2,
                             eval_batch_size=4)
        with HostReads() as reads:
            train(make("lm", 0), examples, config=config, valid_examples=windows(16, 2))
        counts.append(reads.counts)
    loop = _total(counts[1], "distilkit/training/") - _total(counts[0], "distilkit/training/")
    assert loop == 4 + 2  # one per step, one per evaluation (16 examples in 4 batches)
