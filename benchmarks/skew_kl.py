"""Skew KL (DistiLLM): does it make a student converge in fewer steps?

    python benchmarks/skew_kl.py --quick                          # CI: tiny runs, direction checks
    nice python benchmarks/skew_kl.py --seeds 0 --out runs/skew/s0.json   # one process per seed
    python benchmarks/skew_kl.py --merge runs/skew/s*.json        # -> results/skew_kl.json

Ko et al. (2024, DistiLLM) replace KL(p || q) by the skew KL(p || beta p + (1 - beta) q) and the
reverse KL by its skewed form, and report faster, more stable convergence. The claim is about
**steps**, so it is measured as steps to a target, on the set-up of
``benchmarks/capacity_gap.py``: the shipped ``lm-teacher``, a 1-layer d=64 student, the first
10% of the training text, alpha = 1, T = 1, lr 3e-3, batches of 32 windows, at most 500 steps,
validation perplexity (250 held-out windows) every 10 steps.

Primary metric, fixed before the runs: **steps until the validation perplexity first reaches
the best validation perplexity of the same student trained on hard labels (same seed, same
windows)** -- how long distillation takes to match what the student reaches alone. A run that
never reaches it counts as not reached. Secondary: the best validation perplexity, and the
test perplexity (the other 476 held-out windows) of the best validation checkpoint.
Comparisons: skew KL(0.1) - forward KL, skew reverse KL(0.1) - reverse KL (paired by seed).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's distilkit
sys.path.insert(0, str(ROOT / "scripts"))
from _common import RESULTS, check, merge_results, summarise, update_results, write_results  # noqa: E402
from capacity_gap import STUDENTS, context, train_selected  # noqa: E402
from lm_divergences import cached_logits  # noqa: E402

ARMS = {"forward KL": dict(divergence="forward_kl"),
        "skew KL(0.1)": dict(divergence="skew_forward_kl", beta=0.1),
        "reverse KL": dict(divergence="reverse_kl"),
        "skew reverse KL(0.1)": dict(divergence="skew_reverse_kl", beta=0.1)}
METHODS = ["hard labels", *ARMS]
COMPARISONS = [("skew KL(0.1)", "forward KL", "skewing the forward KL (DistiLLM's SKL)"),
               ("skew reverse KL(0.1)", "reverse KL", "skewing the reverse KL (DistiLLM's SRKL)")]
METRICS = ("steps_to_target", "valid_perplexity", "perplexity")


def steps_to(curve, target: float):
    """The first validation step whose perplexity is at most ``target`` (None: never)."""
    return next((s for s, ppl in curve if ppl <= target), None)


def run_seed(ctx, seed: int, steps: int, every: int, lr: float) -> list:
    dk = ctx["dk"]
    rows = []
    for name in METHODS:
        if name == "hard labels":
            examples, targets = ctx["small"], None
        else:
            examples = cached_logits(ctx)
            targets = dk.CachedTeacherLogits(dk.KDConfig(alpha=1.0, temperature=1.0, **ARMS[name]))
        model, info = train_selected(ctx, STUDENTS["student d64"], seed, examples, targets, steps, every, lr,
                                     curve=True)
        rows.append({"seed": seed, "method": name, "params": dk.count_parameters(model), **info,
                     "perplexity": round(dk.perplexity(model, ctx["test"]), 4)})
    target = rows[0]["valid_perplexity"]
    for r in rows:
        r["target"] = target
        r["steps_to_target"] = steps_to(r["valid_curve"], target)
        print(f"seed {seed} {r['method']:<22} steps to {target:.3f}: {r['steps_to_target']}  best valid "
              f"{r['valid_perplexity']:.3f} at {r['best_step']}  test {r['perplexity']:.3f}", flush=True)
    return rows


def paired(runs) -> list:
    """Each comparison's paired difference in steps to the target (seeds where both reach it),
    with its 95% interval, and how many seeds each arm reaches it on."""
    from distilkit.stats import compare

    by = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = []
    for a, b, why in COMPARISONS:
        row = {"a": a, "b": b, "isolates": why, "reached": {m: sum(by[m, s]["steps_to_target"] is not None
                                                                   for s in seeds) for m in (a, b)}}
        for metric in METRICS:
            pairs = [(by[a, s][metric], by[b, s][metric]) for s in seeds
                     if by[a, s][metric] is not None and by[b, s][metric] is not None]
            if len(pairs) >= 2:
                c = compare([x for x, _ in pairs], [y for _, y in pairs], higher_is_better=False)
                row[metric] = {"n": c.n, "diff": round(c.effect, 4), "low": round(c.low, 4),
                               "high": round(c.high, 4), "verdict": c.verdict}
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny runs and direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=None, help="steps at most (default 500)")
    ap.add_argument("--every", type=int, default=None, help="validation interval (default 10)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "skew_kl.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE")
    a = ap.parse_args()
    if a.merge:
        doc = merge_results(a.merge, a.out, METRICS, first=("primary_metric", "comparisons"))
        doc = update_results(a.out, paired=paired(doc["runs"]))
        for c in doc["paired"]:
            s = c.get("steps_to_target")
            print(f"{c['a']} - {c['b']}: reached {c['reached']}; steps "
                  + (f"{s['diff']:+.1f} [{s['low']:+.1f}, {s['high']:+.1f}] {s['verdict']}" if s else "n/a"))
        print(f"wrote {a.out} ({len(doc['seeds'])} seeds)")
        return
    import torch

    torch.set_num_threads(a.threads)
    steps, every = a.steps or (80 if a.quick else 500), a.every or (10 if a.quick else 10)
    ctx = context(a.quick)
    seeds = [0] if a.quick else a.seeds
    runs = [r for seed in seeds for r in run_seed(ctx, seed, steps, every, a.lr)]
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(all(math.isfinite(r["perplexity"]) for r in runs), "every perplexity is finite", problems)
        check(by["forward KL"]["steps_to_target"] is not None,
              "the forward-KL student reaches the hard-label student's best", problems)
        check(all(r["valid_curve"][-1][0] == steps and len(r["valid_curve"]) == steps // every for r in runs),
              "every run records its whole validation curve", problems)
        sys.exit(1 if problems else 0)
    write_results(a.out, seeds, runs, threads=a.threads, summary={k: summarise(runs, k) for k in METRICS},
                  primary_metric="steps_to_target",
                  comparisons=[{"a": x, "b": y, "isolates": why} for x, y, why in COMPARISONS],
                  paired=paired(runs),
                  setup={"steps": steps, "every": every, "lr": a.lr, "batch_size": 32, "alpha": 1.0,
                         "temperature": 1.0, "student": STUDENTS["student d64"], "small_fraction": 0.1,
                         "valid_windows": len(ctx["valid"]), "test_windows": len(ctx["test"]),
                         "target": "best validation perplexity of the hard-label student, same seed"})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
