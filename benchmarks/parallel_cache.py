"""Wall time of building a top-k teacher cache with 1 and with 2 processes (gloo, CPU).

    python benchmarks/parallel_cache.py           # 3 interleaved repeats; writes results/parallel_cache.json
    python benchmarks/parallel_cache.py --quick   # 1 repeat, smaller; no results file

Each run starts its processes (like torchrun), builds the teacher, waits at a barrier and then
times ``dk.cache_teacher_logits`` alone (start-up and import are not counted), 1 torch thread
per process. Runs of 1 and 2 processes alternate so that other load on the machine falls on both.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402


def worker(rank, world, port, setup, out_dir, queue):
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    import distilkit as dk

    torch.manual_seed(0)
    teacher = dk.TransformerLM(dk.TransformerConfig(vocab_size=setup["vocab"], d_model=setup["d_model"],
                                                    n_layers=setup["n_layers"], n_heads=4, max_len=128))
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(4, setup["vocab"], (setup["length"],), generator=g).tolist() for _ in range(setup["n"])]
    if world > 1:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    dk.cache_teacher_logits(teacher, data, out_dir, top_k=16, batch_size=32, examples_per_shard=128, progress=False)
    seconds = time.perf_counter() - t0
    if rank == 0:
        queue.put(seconds)
    if world > 1:
        torch.distributed.destroy_process_group()


def timed(world: int, setup: dict) -> float:
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.start_processes(worker, args=(world, port, setup, tmp, queue), nprocs=world,
                                              start_method="spawn")
        return queue.get()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    setup = (dict(vocab=500, d_model=64, n_layers=2, length=32, n=64) if args.quick else
             dict(vocab=4000, d_model=256, n_layers=4, length=64, n=768))
    runs = []
    for rep in range(1 if args.quick else args.repeats):
        for world in (1, 2):
            s = timed(world, setup)
            runs.append({"processes": world, "repeat": rep, "seconds": s})
            print(f"repeat {rep}: {world} process(es) {s:.2f} s", flush=True)
    summary = {}
    for world in (1, 2):
        v = [r["seconds"] for r in runs if r["processes"] == world]
        summary[str(world)] = {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
    speedup = summary["1"]["median"] / summary["2"]["median"]
    print(f"1 process {summary['1']['median']:.2f} s [{summary['1']['min']:.2f}-{summary['1']['max']:.2f}], "
          f"2 processes {summary['2']['median']:.2f} s [{summary['2']['min']:.2f}-{summary['2']['max']:.2f}]: "
          f"x{speedup:.2f}")
    if not args.quick:
        write_results(RESULTS / "parallel_cache.json", [0], runs, setup=setup, summary=summary,
                      speedup_median=speedup, cpu_load=os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
