"""Per-rank memory of the student's parameters, gradients and AdamW state under DDP and FSDP.

    python benchmarks/parallel_memory.py            # 2 gloo ranks on the CPU; writes results/parallel_memory.json
    python benchmarks/parallel_memory.py --quick    # a smaller student, no results file

Each mode launches 2 processes, prepares the student as ``dk.train`` does under torchrun
(:func:`distilkit.training.distributed.wrap_model` with ``parallel="ddp"`` or ``"fsdp"``), runs one
optimizer step of AdamW and counts the bytes each rank holds in its *local* tensors (a DTensor's
shard under FSDP): parameters, gradients, optimizer state. Activations and the all-gathered
blocks that exist only while a block runs are not counted.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402


def _bytes(tensors) -> int:
    from distilkit.training.fsdp import local

    return sum(local(t).numel() * local(t).element_size() for t in tensors if isinstance(t, torch.Tensor))


def worker(rank, world, port, parallel, cfg, queue):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import distilkit as dk
    from distilkit.training.distributed import setup_distributed, wrap_model

    state = setup_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    model = dk.TransformerLM(dk.TransformerConfig(**cfg))
    wrapped = wrap_model(model, state, torch.device("cpu"), parallel)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, cfg["vocab_size"], (2, 16))
    wrapped(ids).float().logsumexp(-1).sum().backward()
    opt.step()
    params = list(model.parameters())
    row = {"rank": rank, "parallel": parallel,
           "param_bytes": _bytes(params), "grad_bytes": _bytes(p.grad for p in params),
           "optimizer_bytes": _bytes(v for st in opt.state.values() for v in st.values()),
           "full_param_bytes": sum(p.numel() * p.element_size() for p in params)}  # global shape
    row["total_bytes"] = row["param_bytes"] + row["grad_bytes"] + row["optimizer_bytes"]
    queue.put(row)
    torch.distributed.destroy_process_group()


def measure(parallel: str, cfg: dict, world: int = 2):
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(worker, args=(world, port, parallel, cfg, queue), nprocs=world,
                                          start_method="spawn")
    return sorted((queue.get() for _ in range(world)), key=lambda r: r["rank"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    cfg = (dict(vocab_size=256, d_model=64, n_layers=2, n_heads=2, max_len=32) if args.quick else
           dict(vocab_size=8000, d_model=512, n_layers=8, n_heads=8, max_len=128))
    runs = [r for mode in ("ddp", "fsdp") for r in measure(mode, cfg)]
    mib = {m: max(r["total_bytes"] for r in runs if r["parallel"] == m) / 2 ** 20 for m in ("ddp", "fsdp")}
    for r in runs:
        print(f"{r['parallel']:4s} rank {r['rank']}: params {r['param_bytes'] / 2**20:7.1f} MiB, grads "
              f"{r['grad_bytes'] / 2**20:7.1f} MiB, AdamW {r['optimizer_bytes'] / 2**20:7.1f} MiB, "
              f"total {r['total_bytes'] / 2**20:7.1f} MiB")
    ratio = mib["fsdp"] / mib["ddp"]
    print(f"largest rank: DDP {mib['ddp']:.1f} MiB, FSDP {mib['fsdp']:.1f} MiB (x{ratio:.3f})")
    ok = ratio < 0.6
    print(f"  [{'ok' if ok else 'FAILED'}] FSDP holds about half of DDP's per-rank state on 2 ranks")
    if not args.quick:
        write_results(RESULTS / "parallel_memory.json", [0], runs, student=cfg, world_size=2,
                      summary={"ddp_mib": mib["ddp"], "fsdp_mib": mib["fsdp"], "fsdp_over_ddp": ratio})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
