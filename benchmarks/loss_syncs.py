"""Host synchronisations per call of the distillation losses (forward + backward).

    python benchmarks/loss_syncs.py              # the working tree's distilkit.losses
    python benchmarks/loss_syncs.py --rev d70901d  # distilkit/losses.py as of a git revision

A host synchronisation is an operation that makes the host wait for the device: reading a
value (``item``, ``bool``, ``int``, ``float``, ``tolist``), an output whose shape depends on
values (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``), ``torch.equal``.
They are counted on the CPU at the dispatcher (``TorchDispatchMode``), plus ``Tensor.tolist`` /
``Tensor.numpy``, which read CPU memory without dispatching. On a GPU each one stalls the
training loop until the device has caught up.
"""
import argparse
import contextlib
import importlib.util
import inspect
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
SYNC_OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select",
            "aten::equal", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim",
            "aten::repeat_interleave"}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
        bool_index = name.startswith(("aten::index", "aten::index_put")) and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
        if name in SYNC_OPS or bool_index:
            self.ops.append(name + (" (boolean mask)" if bool_index else ""))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_syncs():
    counter = SyncCounter()
    originals = {n: getattr(torch.Tensor, n) for n in ("tolist", "numpy")}

    def wrap(n):
        def reader(self, *a, **k):
            counter.ops.append(f"Tensor.{n}")
            return originals[n](self, *a, **k)
        return reader

    try:
        for n in originals:
            setattr(torch.Tensor, n, wrap(n))
        with counter:
            yield counter.ops
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)


def load_losses(rev):
    if rev is None:
        import distilkit.losses as losses
        return losses
    source = subprocess.run(["git", "show", f"{rev}:distilkit/losses.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "losses_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("losses_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", default=None, help="git revision of distilkit/losses.py (default: working tree)")
    a = ap.parse_args()
    losses = load_losses(a.rev)
    has_flag = "check_values" in inspect.signature(losses.distillation_loss).parameters
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 16, 50, generator=g, requires_grad=True)
    t = torch.randn(4, 16, 50, generator=g)
    labels = torch.randint(0, 50, (4, 16), generator=g)
    labels[:, -3:] = -100
    print(f"distilkit/losses.py at {a.rev or 'the working tree'}; logits (4, 16, 50), padding in labels")
    settings = [True, False] if has_flag else [None]
    for check in settings:
        kw = {} if check is None else {"check_values": check}
        cases = [("distillation_loss, labels, T=1", dict(labels=labels)),
                 ("distillation_loss, labels, T=2", dict(labels=labels, temperature=2.0)),
                 ("distillation_loss, reduction='sum'", dict(labels=labels, reduction="sum")),
                 ("distillation_loss, no labels", {})]
        for name, extra in cases:
            with count_syncs() as ops:
                losses.distillation_loss(s, t, **extra, **kw).backward()
            label = "(no check_values argument)" if check is None else f"check_values={check}"
            print(f"  {name:<38} {label:<27} {len(ops):>3} host syncs  {sorted(set(ops))}")


if __name__ == "__main__":
    sys.exit(main())
