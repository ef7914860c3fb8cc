"""Run by tests/test_parallel_cache.py: build a top-k teacher cache under WORLD processes, then
distil from it under them.

    _cache_worker.py WORLD PORT CACHE_DIR OUT BATCH [--no-distill]
"""

import os
import sys

import torch
from _ddp_worker import examples, models


def run(rank, world, port, cache_dir, out, batch_size, distill):
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    import distilkit as dk

    student, teacher = models(False)
    data = examples(n=int(os.environ.get("CACHE_EXAMPLES", "23")))
    cache = dk.cache_teacher_logits(teacher, data, cache_dir, top_k=5, batch_size=4,
                                    examples_per_shard=int(os.environ.get("CACHE_PER_SHARD", "10")),
                                    progress=False)
    if distill:
        cfg = dk.TrainConfig(steps=4, batch_size=batch_size, grad_accum=2, lr=1e-2, warmup_steps=2,
                             progress=False, device="cpu")
        dk.distill(student, cache, data, config=cfg)
        dk.save_model(student, out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    world, port, cache_dir, out, bs = sys.argv[1:6]
    world, bs, distill = int(world), int(bs), "--no-distill" not in sys.argv
    if world == 1:
        run(0, 1, 0, cache_dir, out, bs, distill)
    else:
        torch.multiprocessing.spawn(run, args=(world, int(port), cache_dir, out, bs, distill), nprocs=world)
