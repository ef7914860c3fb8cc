"""GKD (Agarwal et al., 2024) under its own conditions: a supervised student first, then on-policy
distillation, on the data-to-text task, scored by BLEU and slot errors.

    python benchmarks/gkd_d2t.py --quick
    python benchmarks/gkd_d2t.py --seeds 0 --out runs/gkd/s0.json       # one process per seed
    python benchmarks/gkd_d2t.py --merge runs/gkd/s*.json                 # -> results/gkd_d2t.json

Per seed:

1. **Warm start** (GKD starts from a supervised model): a ``d2t-student`` trained on the 400
   labelled pairs with hard labels, by the baseline's recipe in ``controls.py`` (learning rate
   0.003, at most 1,000 steps of 64, the checkpoint with the best validation BLEU).
2. From that student, each arm trains ``--steps`` more steps (default 200, batch 64, learning
   rate 0.001, a checkpoint every 50 and the best on validation BLEU kept) on the same 400 inputs:

   * ``hard labels`` -- the references, cross-entropy (the control: the same extra steps, no
     teacher);
   * ``lam=L, D`` for L in {0, 0.5, 1} and D in {JSD(0.1), JSD(0.9), reverse KL} --
     ``dk.OnPolicyTargets(teacher, KDConfig(alpha=1, divergence=D), lam=L)``: with probability
     L a batch's targets are the student's own samples (temperature 1), scored by the teacher;
     otherwise the references, scored by the teacher. L = 0 is supervised KD on the fixed
     outputs, L = 1 GKD's fully on-policy setting.

Every arm of a seed starts from the same warm weights and sees the same batches of inputs.
Primary metric (fixed before the runs): test BLEU (greedy, 8 references); secondary: slot
error rate, repeated 4-gram rate; ``cpu_seconds`` gives the cost of the extra steps. The warm
student itself is scored too (``warm start``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import D2T_METRICS, RESULTS, check, merge_results, summarise, write_results  # noqa: E402
from controls import load, scores, train_selected  # noqa: E402

DIVS = {"JSD(0.1)": ("jsd", 0.1), "JSD(0.9)": ("jsd", 0.9), "reverse KL": ("reverse_kl", 0.5)}
LAMS = [0.0, 0.5, 1.0]
ARMS = ["hard labels"] + [f"lam={lam:g}, {d}" for lam in LAMS for d in DIVS]
WARM_LR, WARM_STEPS, WARM_EVERY = 3e-3, 1000, 100


def targets_for(ctx, arm: str):
    dk = ctx["dk"]
    if arm == "hard labels":
        return None
    lam, div = arm.split(", ", 1)
    name, beta = DIVS[div]
    return dk.OnPolicyTargets(ctx["teacher"], dk.KDConfig(alpha=1.0, divergence=name, beta=beta),
                              lam=float(lam[4:]))


def run_seed(ctx, seed: int, arms, a) -> list:
    import torch

    dk, data = ctx["dk"], ctx["data"]
    torch.manual_seed(seed)
    warm = dk.make_model(a.student, len(data.tokenizer))
    step, valid, _, seconds = train_selected(ctx, warm, ctx["labelled"], None, seed, WARM_LR, a.warm_steps,
                                             a.warm_every, a.batch_size, a.valid)
    state = {k: v.clone() for k, v in warm.state_dict().items()}
    checksum = round(float(sum(v.double().sum() for v in state.values())), 6)
    out = [{"seed": seed, "method": "warm start", "selected_step": step, "valid_bleu": valid,
            "train_seconds": round(seconds, 1), "weights_sum": checksum,
            **scores(ctx, warm, data.test[:a.test_items])}]
    print(f"seed {seed} warm start: BLEU {out[0]['bleu']:.2f}, SER {out[0]['ser']:.2f}% (step {step})", flush=True)
    for arm in arms:
        student = dk.make_model(a.student, len(data.tokenizer))
        student.load_state_dict(state)
        torch.manual_seed(1000 + seed)  # the sampling draws: the same stream for every arm of the seed
        cpu = time.process_time()
        step, valid, curve, seconds = train_selected(ctx, student, ctx["labelled"], targets_for(ctx, arm), seed,
                                                     a.lr, a.steps, a.every, a.batch_size, a.valid)
        out.append({"seed": seed, "method": arm, "selected_step": step, "valid_bleu": valid, "valid_curve": curve,
                    "train_seconds": round(seconds, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
                    "warm_weights_sum": checksum, **scores(ctx, student, data.test[:a.test_items])})
        r = out[-1]
        print(f"seed {seed} {arm:<22} BLEU {r['bleu']:6.2f}  SER {r['ser']:6.2f}%  step {step}  "
              f"({r['train_seconds']:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny runs and direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=None, choices=ARMS)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--valid", type=int, default=200)
    ap.add_argument("--test-items", type=int, default=400)
    ap.add_argument("--student", default="d2t-student")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "gkd_d2t.json")
    ap.add_argument("--work", type=Path, default=None, help="folder with the teacher's targets (controls.py)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE")
    a = ap.parse_args()
    if a.merge:
        doc = merge_results(a.merge, a.out, ("bleu", "ser", "repeat", "cpu_seconds"),
                            shared=(), first=("primary_metric", "metric_definitions"))
        print(f"wrote {a.out} ({len(doc['seeds'])} seeds)")
        return
    import torch

    torch.set_num_threads(a.threads)
    a.warm_steps, a.warm_every = WARM_STEPS, WARM_EVERY
    arms = a.arms or ARMS
    seeds = a.seeds
    if a.quick:
        a.warm_steps, a.warm_every, a.steps, a.every, a.valid, a.test_items, a.batch_size = 150, 50, 20, 10, 40, 60, 32
        arms, seeds = a.arms or ["hard labels", "lam=1, reverse KL", "lam=0, JSD(0.1)"], [0]
    ctx = load(300 if a.quick else 3000, progress=False, work=a.work, train_items=120 if a.quick else None)
    runs = []
    for seed in seeds:
        runs += run_seed(ctx, seed, arms, a)
    if a.quick:
        problems: list = []
        by = {r["method"]: r for r in runs}
        check(all(r.get("warm_weights_sum") == by["warm start"]["weights_sum"] for r in runs[1:]),
              "every arm starts from the same warm weights", problems)
        check(all(0 < r["selected_step"] <= a.steps for r in runs[1:]),
              "every arm's checkpoint is one of its validation checkpoints", problems)
        check(by["lam=1, reverse KL"]["cpu_seconds"] > by["hard labels"]["cpu_seconds"],
              "on-policy steps cost more CPU time than hard-label steps", problems)
        sys.exit(1 if problems else 0)
    write_results(a.out, seeds, runs, threads=a.threads,
                  summary={k: summarise(runs, k) for k in ("bleu", "ser", "repeat", "cpu_seconds")},
                  primary_metric="bleu",
                  metric_definitions={**D2T_METRICS,
                                      "cpu_seconds": "CPU time of the extra steps, validation decoding included"},
                  setup={"steps": a.steps, "every": a.every, "lr": a.lr, "batch_size": a.batch_size,
                         "warm": {"lr": WARM_LR, "max_steps": a.warm_steps, "every": a.warm_every},
                         "student": a.student, "valid_pairs": a.valid, "test_inputs": a.test_items,
                         "labelled_pairs": len(ctx["labelled"]), "arms": arms,
                         "sample_temperature": 1.0, "alpha": 1.0, "temperature": 1.0})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
