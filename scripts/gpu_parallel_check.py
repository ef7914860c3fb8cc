"""A short CUDA check of both parallel modes (run by scripts/gpu_check.sh; one GPU is enough).

One NCCL process (world size 1, started here like torchrun would): a TransformerLM student is
wrapped with DDP and, separately, sharded with FSDP2 (``distilkit.training.fsdp.shard_module``)
and trained 2 steps under bf16 autocast; the two must end with finite, equal-within-bf16 weights.
``dk.train`` itself only turns them on when WORLD_SIZE > 1, which needs several GPUs.
"""
import os
import sys

import torch
import torch.distributed as dist

import distilkit as dk
from distilkit.training.distributed import DistState, wrap_model
from distilkit.training.fsdp import local

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29533")
dist.init_process_group("nccl", rank=0, world_size=1)
dev = torch.device("cuda", 0)
ids = torch.randint(0, 512, (8, 64), device=dev)
final = {}
for mode in ("ddp", "fsdp"):
    torch.manual_seed(0)
    model = dk.TransformerLM(dk.TransformerConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4)).to(dev)
    # DistState(0, 2) makes wrap_model wrap although this process group holds one rank
    wrapped = wrap_model(model, DistState(0, 2), dev, mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(wrapped(ids[:, :-1]).float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
    final[mode] = torch.cat([local(p).detach().float().flatten().cpu() for p in model.parameters()])
    print(f"{mode}: loss {loss.item():.4f}, peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", flush=True)
diff = float((final["ddp"] - final["fsdp"]).abs().max())
ok = all(torch.isfinite(v).all() for v in final.values()) and diff < 1e-2
print(f"parallel check: max |w_ddp - w_fsdp| = {diff:.3g} -> {'ok' if ok else 'FAILED'}")
dist.destroy_process_group()
sys.exit(0 if ok else 1)
