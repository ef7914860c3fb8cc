"""Hidden-state distillation and teacher-layer initialisation, for a student of the teacher's
width and for a narrower one.

    python benchmarks/hidden_states.py --quick   # CI: one seed, short runs, direction checks
    nice python benchmarks/hidden_states.py      # full: seeds 0 1 2 -> results/hidden_states.json

Set-up: the shipped character-level ``lm-teacher`` (6 layers, d=128); students of 2 layers,
``d=128`` (the teacher's width) and ``d=64`` (narrower), trained on the first 10% of the
training text in 64-character windows, batch 32, the same steps and learning rate, paired
seeds (same seed = same initial weights and order of windows). Variants:

* ``logits KD``              forward-KL KD, alpha = 0.5, T = 1;
* ``+ hidden``               the same plus ``hidden_weight = 1``, ``hidden_loss = "cosine"``, the
  default layer map (student layer 0 <- teacher layer 2, 1 <- 5); the d=64 student learns a
  64 -> 128 projection for each pair;
* ``+ hidden + init``        the same, the student's layers first copied from teacher layers 2
  and 5 and its embeddings, positions and final norm from the teacher's
  (``dk.init_from_teacher``; only the d=128 student: the narrower one does not fit).

Primary metric, fixed before running: bits per character on held-out text (the last 10% of
the corpus). Secondary: the teacher's bits per character of the student's samples (32 held-out
prompts of 16 characters, 48 sampled characters at temperature 1); seconds per step relative to
``logits KD``. Paired differences with a 95% t-interval; a verdict only where it excludes zero.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import RESULTS, check, command, machine, summarise, update_results, write_results  # noqa: E402
from cross_tokenizer import NEW, PROMPT, SAMPLES, WINDOW, paired  # noqa: E402

PRIMARY = "bits_per_char"
WIDTHS = {"d=128 (teacher's width)": 128, "d=64 (narrower)": 64}
VARIANTS = ["logits KD", "+ hidden", "+ hidden + init"]
INIT_LAYERS = [2, 5]


def load(small_fraction: float):
    import distilkit as dk

    teacher, tok, _ = dk.load_teacher("lm-teacher")
    teacher.eval()
    text = dk.load_text_corpus()
    split = int(0.9 * len(text))
    train_text, held_text = text[: int(small_fraction * split)], text[split:]
    windows = lambda t: [t[i: i + WINDOW] for i in range(0, len(t) - WINDOW + 1, WINDOW)]  # noqa: E731
    step = (len(held_text) - PROMPT - NEW) // SAMPLES
    prompts = [held_text[i: i + PROMPT] for i in range(0, len(held_text) - PROMPT - NEW, step)][:SAMPLES]
    return {"dk": dk, "teacher": teacher, "tok": tok, "train": [tok.encode(w) for w in windows(train_text)],
            "held": windows(held_text)[:400], "prompts": prompts}


def run(ctx, width_name: str, variant: str, seed: int, steps: int, lr: float, evaluate: bool = True) -> dict:
    import torch

    dk, tok, teacher = ctx["dk"], ctx["tok"], ctx["teacher"]
    cfg = dk.TrainConfig(steps=steps, batch_size=32, lr=lr, warmup_steps=min(100, steps // 5), seed=seed,
                         progress=False, device="cpu", restore_best=False)
    torch.manual_seed(seed)
    student = dk.make_model("lm-student", len(tok), n_layers=2, d_model=WIDTHS[width_name])
    if variant == "+ hidden + init":
        dk.init_from_teacher(student, teacher, layers=INIT_LAYERS)
    kd = dk.KDConfig(alpha=0.5) if variant == "logits KD" else dk.KDConfig(alpha=0.5, hidden_weight=1.0,
                                                                            hidden_loss="cosine")
    t0 = time.perf_counter()
    dk.distill(student, teacher, ctx["train"], kd=kd, config=cfg)
    seconds = time.perf_counter() - t0
    if not evaluate:
        return {"train_seconds": seconds}
    g = torch.Generator().manual_seed(1000 + seed)
    conts = dk.sample(student, [tok.encode(p) for p in ctx["prompts"]], max_new_tokens=NEW, temperature=1.0,
                      generator=g)
    pairs = [(p, tok.decode(c)) for p, c in zip(ctx["prompts"], conts)]
    return {"seed": seed, "method": f"{width_name}: {variant}", "width": width_name, "variant": variant,
            "params": dk.count_parameters(student), "steps": steps, "train_seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / steps, 4),
            PRIMARY: round(dk.bits_per_character(student, tok, ctx["held"]), 4),
            "judge_teacher_bpc": round(dk.bits_per_character(teacher, tok, pairs), 4),
            "samples": [p + " || " + c for p, c in pairs[:3]]}


def step_cost(ctx, reps: int = 3, short: int = 10, long: int = 40) -> dict:
    """Seconds per training step of each (width, variant) without fixed costs: ``(time of `long`
    steps - time of `short` steps) / (long - short)``, interleaved, median of ``reps`` repeats;
    and each relative to logits KD at the same width."""
    import statistics

    keys = [(w, v) for w in WIDTHS for v in VARIANTS if not (v == "+ hidden + init" and WIDTHS[w] != 128)]
    times = {k: [] for k in keys}
    for _ in range(reps):
        for w, v in keys:
            t = {n: run(ctx, w, v, 0, n, 3e-3, evaluate=False)["train_seconds"] for n in (short, long)}
            times[w, v].append((t[long] - t[short]) / (long - short))
    per_step = {f"{w}: {v}": round(statistics.median(x), 5) for (w, v), x in times.items()}
    rel = {f"{w}: {v}": round(per_step[f"{w}: {v}"] / per_step[f"{w}: logits KD"], 3) for w, v in keys}
    return {"seconds_per_step": per_step, "relative_to_logits_kd": rel,
            "all_seconds_per_step": {f"{w}: {v}": [round(y, 5) for y in x] for (w, v), x in times.items()},
            "how": f"(time of {long} steps - time of {short} steps) / {long - short}, interleaved, median of "
                   f"{reps} repeats, one thread, live teacher"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, short runs, direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="student steps (default 300; quick: 40)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--small-fraction", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=RESULTS / "hidden_states.json")
    ap.add_argument("--cost-only", action="store_true",
                    help="measure only the cost per step (step_cost) and store it, with this command, in --out's "
                         "\"cost\"")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if a.cost_only:
        import json

        cost = step_cost(load(a.small_fraction))
        cost.update(command=command(), machine=machine(1))
        update_results(a.out, cost=cost)
        print(json.dumps(cost, indent=1))
        return
    steps = a.steps or (30 if a.quick else 300)
    seeds = [0] if a.quick else a.seeds
    ctx = load(a.small_fraction)
    if a.quick:
        ctx["held"] = ctx["held"][:60]
    dk = ctx["dk"]
    runs = [{"seed": None, "method": "teacher", "params": dk.count_parameters(ctx["teacher"]),
             PRIMARY: round(dk.bits_per_character(ctx["teacher"], ctx["tok"], ctx["held"]), 4)}]
    print(f"teacher {runs[0]['params']:,} params, held-out {runs[0][PRIMARY]:.4f} bits/char")
    for seed in seeds:
        for w in WIDTHS:
            for v in VARIANTS:
                if v == "+ hidden + init" and WIDTHS[w] != 128:
                    continue  # the narrower student cannot take the teacher's layers (init_from_teacher refuses)
                runs.append(run(ctx, w, v, seed, steps, a.lr))
                r = runs[-1]
                print(f"seed {seed} {r['method']:<42} {r[PRIMARY]:.4f} bits/char  judge {r['judge_teacher_bpc']:.3f}  "
                      f"{r['seconds_per_step']:.3f} s/step", flush=True)
    student_runs = [r for r in runs if r["seed"] is not None]
    summ = {m: summarise(student_runs, m) for m in (PRIMARY, "judge_teacher_bpc", "seconds_per_step")}
    for m, s in summ[PRIMARY].items():
        print(f"{m:<42} {s['mean']:.4f} ± {s['std']:.4f}")
    cost = {}
    for w in WIDTHS:
        ref = summ["seconds_per_step"][f"{w}: logits KD"]["mean"]
        for v in VARIANTS:
            if f"{w}: {v}" in summ["seconds_per_step"]:
                cost[f"{w}: {v}"] = round(summ["seconds_per_step"][f"{w}: {v}"]["mean"] / ref, 3)
    print("cost per step relative to logits KD:", cost)
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(all(math.isfinite(r[PRIMARY]) for r in runs), "every bits-per-character value is finite", problems)
        check(by["teacher"][PRIMARY] < by["d=128 (teacher's width): logits KD"][PRIMARY],
              "the teacher beats the d=128 student", problems)
        check(by["d=128 (teacher's width): + hidden + init"][PRIMARY] < by["d=128 (teacher's width): logits KD"][PRIMARY],
              "after a short run the teacher-initialised student is ahead of the fresh one", problems)
        sys.exit(1 if problems else 0)
    comparisons = [(f"{w}: + hidden", f"{w}: logits KD") for w in WIDTHS]
    comparisons += [("d=128 (teacher's width): + hidden + init", "d=128 (teacher's width): + hidden")]
    pairs = [paired(student_runs, x, y, m) for m in (PRIMARY, "judge_teacher_bpc") for x, y in comparisons]
    for p in pairs:
        print(f"{p['a']} - {p['b']} ({p['metric']}): {p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] "
              f"{p['verdict']}")
    write_results(a.out, seeds, runs, primary_metric=PRIMARY,
                  primary_metric_definition="held-out total NLL in bits / characters scored (fixed before running)",
                  summary=summ, paired=pairs, cost_per_step_vs_logits_kd=cost,
                  setup={"steps": steps, "lr": a.lr, "batch_size": 32, "window_chars": WINDOW,
                         "small_fraction": a.small_fraction, "train_windows": len(ctx["train"]),
                         "held_out_windows": len(ctx["held"]), "alpha": 0.5, "temperature": 1.0,
                         "hidden_weight": 1.0, "hidden_loss": "cosine", "layer_map": [[0, 2], [1, 5]],
                         "init_layers": INIT_LAYERS, "student_layers": 2,
                         "teacher": "lm-teacher (6 layers, d=128, characters)",
                         "prompt_chars": PROMPT, "sampled_chars": NEW, "samples": SAMPLES})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
