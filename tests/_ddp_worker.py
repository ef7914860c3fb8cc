"""Run by tests/test_distributed.py in each of N spawned processes (or once, alone)."""

import os
import sys

import torch


def examples(n=23, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 14, (n,), generator=g)  # uneven: token normalisation matters
    return [torch.randint(4, vocab, (int(k),), generator=g).tolist() for k in lengths]


def run(rank, world, port, out, batch_size, steps, ckpt, distill):
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    else:
        os.environ["WORLD_SIZE"] = "1"
    torch.set_num_threads(1)
    import distilkit as dk

    torch.manual_seed(1)
    student = dk.TransformerLM(dk.TransformerConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2))
    cfg = dk.TrainConfig(steps=steps, batch_size=batch_size, grad_accum=2, lr=1e-2, warmup_steps=2,
                         eval_every=3, progress=True, device="cpu", checkpoint_dir=ckpt or None,
                         checkpoint_every=3)
    valid = examples(6, seed=5)
    if distill:
        torch.manual_seed(2)
        teacher = dk.TransformerLM(dk.TransformerConfig(vocab_size=40, d_model=24, n_layers=1, n_heads=2))
        hist = dk.distill(student, teacher, examples(), config=cfg, valid_examples=valid)
    else:
        hist = dk.train(student, examples(), config=cfg, valid_examples=valid)
    if rank == 0:
        torch.save({"state": student.state_dict(), "loss": hist.train_loss, "valid": hist.valid_loss}, out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    world, port, out, bs, steps, ckpt, distill = sys.argv[1:8]
    world, bs, steps, distill = int(world), int(bs), int(steps), distill == "1"
    if world == 1:
        run(0, 1, 0, out, bs, steps, ckpt, distill)
    else:
        torch.multiprocessing.spawn(run, args=(world, int(port), out, bs, steps, ckpt, distill),
                                    nprocs=world)
