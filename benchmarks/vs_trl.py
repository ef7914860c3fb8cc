"""distilkit against TRL's GKDTrainer on one small job (needs ``pip install 'distilkit[bench]'``).

    python benchmarks/vs_trl.py                   # 5 seeds x 200 steps, results/vs_trl.json
    python benchmarks/vs_trl.py --seeds 0 --steps 30 --out /tmp/vs_trl.json

The job: the shipped ``gpt2-pydoc`` teacher (2 layers, vocabulary 1,024), a student with the same
config but one layer and no dropout (TRL's GKDTrainer turns dropout off by default; distilkit
leaves the model as given, so the config sets it to 0 for both), the same initial weights for
both systems (made once per seed in this process, saved, loaded by each run); pydoc help text
tokenised with the teacher's tokenizer and cut into windows of 32 tokens (31 scored positions),
the last 10% held out; batch 16, AdamW lr 3e-3 constant (no warm-up, no decay), gradient
clipping at 1.0 (both defaults), fp32 on the CPU with one thread, 200 steps, generalised JSD
with beta = 0.5 (beta weights the teacher in both packages) at T = 1, the divergence alone:

* distilkit: ``dk.distill(..., kd=KDConfig(alpha=1.0, divergence="jsd", beta=0.5),
  config=TrainConfig(warmup_steps=0, min_lr_ratio=1.0, amp=False, ...))``. distilkit's defaults
  differ: ``alpha=0.5`` mixes in the cross-entropy on the data, and the learning rate warms up
  for 50 steps and decays by a cosine to 5%.
* TRL: ``GKDTrainer`` with ``GKDConfig(lmbda=0.0, seq_kd=False, beta=0.5,
  lr_scheduler_type="constant")`` (lmbda = 0: no on-policy sampling, the same off-policy word-level
  distillation on the data as distilkit's).

Each (system, seed) runs in its own subprocess, the two systems interleaved (the order swaps from
seed to seed). Recorded: seconds per step (median of the intervals between consecutive student
forward passes after the first 20 steps), peak resident memory of the process (``ru_maxrss``, and
its growth over the resident set just before training), the held-out perplexity of the student
(same evaluation code for both), and what TRL divided its loss by.

Primary metric (fixed before the runs): seconds per step, compared on the log scale (a ratio),
paired by seed; secondary: the memory growth while training and the held-out perplexity. The
planned comparisons (``COMPARISONS``) and their paired 95% intervals (``distilkit.stats.compare``)
are written to the file with the machine's load average before and after, to say how quiet it was.

Before training, on one fixed batch, the two losses are compared (the student at its initial
weights): ``GKDTrainer.generalized_jsd_loss`` divides by the count of labels it is given (the
shifted ones when called directly) or by ``num_items_in_batch`` when the Trainer passes it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRIMARY_METRIC = "seconds_per_step"
# (metric, compared on the log scale?): distilkit - TRL, paired by seed, lower is better for each
COMPARISONS = [("seconds_per_step", True), ("peak_growth_mib", False), ("held_out_perplexity", False)]
CKPT = ROOT / "distilkit" / "checkpoints" / "gpt2-pydoc"
WINDOW, BATCH, LR, BETA, SKIP = 32, 16, 3e-3, 0.5, 20


def need_trl():
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("benchmarks/vs_trl.py compares with TRL, which is not installed: "
                         "pip install 'distilkit[bench]' (trl, peft)") from None


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def windows():
    """(train, held-out) lists of 32-token windows of the pydoc corpus, teacher's tokenizer."""
    from transformers import AutoTokenizer

    import distilkit as dk

    tok = AutoTokenizer.from_pretrained(CKPT)
    ids = tok(dk.load_text_corpus())["input_ids"]
    wins = dk.lm_examples(ids, WINDOW - 1)  # block_size + 1 = 32 tokens each
    cut = len(wins) - len(wins) // 10
    return wins[:cut], wins[cut:]


def models(init_path=None):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    teacher = GPT2LMHeadModel.from_pretrained(CKPT).eval()
    cfg = GPT2Config.from_pretrained(CKPT)
    cfg.n_layer = 1
    cfg.attn_pdrop = cfg.resid_pdrop = cfg.embd_pdrop = 0.0
    student = GPT2LMHeadModel(cfg)
    if init_path is not None:
        student.load_state_dict(torch.load(init_path))
    return teacher, student


def perplexity(student, held_out) -> float:
    import math

    import torch
    import torch.nn.functional as F

    student.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(held_out), 64):
            x = torch.tensor(held_out[i : i + 64])
            logits = student(input_ids=x).logits[:, :-1]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += x[:, 1:].numel()
    return math.exp(total / count)


def child(system: str, seed: int, steps: int, init_path: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    train, held_out = windows()
    teacher, student = models(init_path)
    stamps = []
    student.register_forward_pre_hook(lambda m, a, k: stamps.append(time.perf_counter()) if m.training else None,
                                      with_kwargs=True)
    extra = {}
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    if system == "distilkit":
        import distilkit as dk

        kd = dk.KDConfig(alpha=1.0, divergence="jsd", beta=BETA, temperature=1.0)
        cfg = dk.TrainConfig(steps=steps, batch_size=BATCH, lr=LR, warmup_steps=0, min_lr_ratio=1.0,
                             clip_norm=1.0, eval_every=10**9, device="cpu", amp=False, seed=seed,
                             progress=False)
        hist = dk.distill(student, teacher, train, kd=kd, config=cfg)
        extra["final_loss"] = hist.train_loss[-1]
    else:
        from datasets import Dataset
        from transformers import AutoTokenizer
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        seen = []

        class Recording(GKDTrainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                if not seen:
                    seen.append({"num_items_in_batch": None if num_items_in_batch is None else int(num_items_in_batch),
                                 "labels": int((inputs["labels"] != -100).sum()),
                                 "scored_positions": int((inputs["labels"][:, 1:] != -100).sum())})
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def collate(features):
            x = torch.tensor([f["input_ids"] for f in features])
            return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}

        with tempfile.TemporaryDirectory() as tmp:
            args = GKDConfig(output_dir=tmp, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                             lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                             lmbda=0.0, beta=BETA, seq_kd=False, use_cpu=True, bf16=False, fp16=False,
                             report_to=[], logging_steps=10**9, save_strategy="no", seed=seed,
                             dataloader_num_workers=0, disable_dropout=True, max_length=WINDOW)
            trainer = Recording(model=student, teacher_model=teacher, args=args, data_collator=collate,
                                train_dataset=Dataset.from_dict({"input_ids": train}),
                                processing_class=AutoTokenizer.from_pretrained(CKPT))
            trainer.train()
        extra["trl_first_batch"] = seen[0]
    seconds = time.perf_counter() - t0
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][SKIP:]
    doc = {"system": system, "seed": seed, "steps": steps, "forward_calls": len(stamps),
           "seconds_per_step": statistics.median(intervals), "train_seconds": seconds,
           "peak_rss_mib": _peak_mib(), "rss_before_training_mib": rss0,
           "peak_growth_mib": _peak_mib() - rss0, "held_out_perplexity": perplexity(student, held_out),
           **extra}
    Path(out).write_text(json.dumps(doc))


def agreement(init_path) -> dict:
    """Both losses on one fixed batch of 16 windows, student at its initial weights."""
    import torch
    from trl.experimental.gkd import GKDTrainer

    import distilkit as dk

    train, _ = windows()
    teacher, student = models(init_path)
    x = torch.tensor(train[:BATCH])
    with torch.no_grad():
        s = student(input_ids=x).logits[:, :-1]
        t = teacher(input_ids=x).logits[:, :-1]
    labels = x[:, 1:]
    ours = float(dk.distillation_loss(s, t, labels, alpha=1.0, divergence="jsd", beta=BETA))
    trl_direct = float(GKDTrainer.generalized_jsd_loss(s, t, labels, beta=BETA))
    trl_512 = float(GKDTrainer.generalized_jsd_loss(s, t, labels, beta=BETA, num_items_in_batch=x.numel()))
    trl_t2 = float(GKDTrainer.generalized_jsd_loss(s, t, labels, beta=BETA, temperature=2.0))
    ours_t2 = float(dk.distillation_loss(s, t, labels, alpha=1.0, divergence="jsd", beta=BETA, temperature=2.0,
                                         t2_scale=False))
    return {"scored_positions": labels.numel(), "labels_unshifted": x.numel(),
            "distilkit": ours, "trl_generalized_jsd_loss": trl_direct, "abs_diff": abs(ours - trl_direct),
            "trl_divided_by_unshifted_count": trl_512, "ratio_unshifted": trl_512 / ours,
            "at_T2_without_T2_factor": {"distilkit": ours_t2, "trl": trl_t2, "abs_diff": abs(ours_t2 - trl_t2)}}


def paired(by, seeds) -> list:
    """distilkit - TRL per planned comparison, paired by seed, with its 95% interval (on the log
    scale for times, so that the difference reads as a ratio); unadjusted."""
    import math

    sys.path.insert(0, str(ROOT))
    from distilkit.stats import compare

    out = []
    for metric, log in COMPARISONS:
        f = math.log if log else float
        c = compare([f(by["distilkit", s][metric]) for s in seeds], [f(by["trl", s][metric]) for s in seeds],
                    higher_is_better=False)
        out.append({"metric": metric, "a": "distilkit", "b": "trl", "log_scale": log,
                    "primary": metric == PRIMARY_METRIC, "diff": c.effect, "low": c.low, "high": c.high,
                    "p": c.p, "per_seed": c.per_seed, "verdict": c.verdict})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=RESULTS / "vs_trl.json")
    ap.add_argument("--child", nargs=4, metavar=("SYSTEM", "SEED", "INIT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    need_trl()
    if args.child:
        system, seed, init, out = args.child
        child(system, int(seed), args.steps, init, out)
        return 0
    import torch
    import trl

    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        inits = {}
        for seed in args.seeds:
            torch.manual_seed(seed)
            inits[seed] = str(Path(tmp) / f"init_{seed}.pt")
            torch.save(models()[1].state_dict(), inits[seed])
        agree = agreement(inits[args.seeds[0]])
        print("loss agreement on one batch:", json.dumps(agree), flush=True)
        for k, seed in enumerate(args.seeds):
            for system in (("distilkit", "trl") if k % 2 == 0 else ("trl", "distilkit")):
                out = str(Path(tmp) / f"{system}_{seed}.json")
                subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", system, str(seed),
                                inits[seed], out], check=True, cwd=ROOT)
                runs.append(json.loads(Path(out).read_text()))
                r = runs[-1]
                print(f"{system:9s} seed {seed}: {r['seconds_per_step'] * 1e3:.1f} ms/step, peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB (+{r['peak_growth_mib']:.0f} in training), held-out ppl "
                      f"{r['held_out_perplexity']:.2f}", flush=True)
    by = {(r["system"], r["seed"]): r for r in runs}
    ratios = [by["distilkit", s]["seconds_per_step"] / by["trl", s]["seconds_per_step"] for s in args.seeds]

    def spread(key, system):
        v = [by[system, s][key] for s in args.seeds]
        return {"median": statistics.median(v), "min": min(v), "max": max(v)}

    summary = {"step_time_ratio_distilkit_over_trl": {"median": statistics.median(ratios), "min": min(ratios),
                                                      "max": max(ratios), "per_seed": ratios}}
    for key in ("seconds_per_step", "peak_rss_mib", "peak_growth_mib", "held_out_perplexity"):
        summary[key] = {system: spread(key, system) for system in ("distilkit", "trl")}
    doc = {"command": command(), "machine": machine(1), "torch": torch.__version__, "trl": trl.__version__,
           "seeds": args.seeds, "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "primary_metric": PRIMARY_METRIC, "paired": paired(by, args.seeds),
           "loss_agreement": agree, "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp_out, args.out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
