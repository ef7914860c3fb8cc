"""Run by tests/test_distributed.py and tests/test_fsdp.py in each of N spawned processes (or
once, alone).

    _ddp_worker.py WORLD PORT OUT BATCH STEPS CKPT DISTILL [PARALLEL] [OPTIONS]

PARALLEL: ddp (default) or fsdp. OPTIONS: comma-separated, any of ``memory_bounded``,
``shard_teacher``, ``seq2seq``, ``clip_none``, ``accum1``, ``hidden`` (hidden-state KD: the targets
train a projection of their own, outside the DDP wrapper). Rank 0 writes OUT (losses) and, via
``dk.save_model`` called on every rank, OUT.safetensors (the student's full weights)."""

import os
import sys

import torch


def examples(n=23, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 14, (n,), generator=g)  # uneven: token normalisation matters
    return [torch.randint(4, vocab, (int(k),), generator=g).tolist() for k in lengths]


def pairs(n=23, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        src = torch.randint(4, vocab, (int(torch.randint(2, 9, (), generator=g)),), generator=g).tolist()
        out.append((src, src[::-1] + [2]))
    return out


def models(seq2seq):
    import distilkit as dk

    if seq2seq:
        def make(h):
            return dk.Seq2SeqLSTM(dk.Seq2SeqConfig(vocab_size=40, embed_dim=8, hidden_dim=h))
        torch.manual_seed(1)
        student = make(16)
        torch.manual_seed(2)
        return student, make(24)
    torch.manual_seed(1)
    student = dk.TransformerLM(dk.TransformerConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2))
    torch.manual_seed(2)
    teacher = dk.TransformerLM(dk.TransformerConfig(vocab_size=40, d_model=24, n_layers=2, n_heads=2))
    return student, teacher


def run(rank, world, port, out, batch_size, steps, ckpt, distill, parallel="ddp", options=()):
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    else:
        os.environ["WORLD_SIZE"] = "1"
    torch.set_num_threads(1)
    import distilkit as dk

    seq2seq = "seq2seq" in options
    student, teacher = models(seq2seq)
    cfg = dk.TrainConfig(steps=steps, batch_size=batch_size, grad_accum=1 if "accum1" in options else 2,
                         lr=1e-2, warmup_steps=2, eval_every=3, progress=True, device="cpu",
                         checkpoint_dir=ckpt or None, checkpoint_every=3, parallel=parallel,
                         shard_teacher="shard_teacher" in options,
                         clip_norm=None if "clip_none" in options else 1.0)
    data = pairs if seq2seq else examples
    valid = data(6, seed=5)
    if distill:
        kd = dk.KDConfig(memory_bounded="memory_bounded" in options, chunk_size=7,
                         hidden_weight=1.0 if "hidden" in options else 0.0)
        hist = dk.distill(student, teacher, data(), kd=kd, config=cfg, valid_examples=valid)
    else:
        hist = dk.train(student, data(), config=cfg, valid_examples=valid)
    dk.save_model(student, out + ".safetensors")  # every rank: a sharded model is gathered
    if rank == 0:
        torch.save({"loss": hist.train_loss, "valid": hist.valid_loss}, out)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    world, port, out, bs, steps, ckpt, distill = sys.argv[1:8]
    parallel = sys.argv[8] if len(sys.argv) > 8 else "ddp"
    options = tuple(sys.argv[9].split(",")) if len(sys.argv) > 9 and sys.argv[9] else ()
    world, bs, steps, distill = int(world), int(bs), int(steps), distill == "1"
    args = (out, bs, steps, ckpt, distill, parallel, options)
    if world == 1:
        run(0, 1, 0, *args)
    else:
        torch.multiprocessing.spawn(run, args=(world, int(port), *args), nprocs=world)
