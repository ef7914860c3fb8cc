"""Temperature x alpha: how the two knobs of word-level KD move a student, measured.

    python benchmarks/temperature_alpha.py --quick    # CI: one seed, T = 2 x alpha 0 and 0.75, direction checks
    nice python benchmarks/temperature_alpha.py       # full: seeds 0 1 2 -> results/temperature_alpha.json

Set-up: the language-model pair and data of ``benchmarks/lm_divergences.py`` (shipped
``lm-teacher``, 6 layers d=128; fresh ``lm-student``, 1 layer d=64, trained on the first 10% of
the training text, 500 steps of 32 windows). That is the regime where soft targets help most
(forward KL gives a lower perplexity than hard labels there on every seed), so the knobs have an
effect to move. The loss is ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``:
alpha = 0 is hard labels only and does not depend on T, so it is trained once per seed and
stored with ``temperature: null``.

Per (T, alpha, seed): held-out perplexity of the student (at T = 1, on the last 10% of the
text; the primary metric) and the teacher's per-character NLL of the student's samples, the
mean over three sampling draws whose seeds (``lm_divergences.DRAWS``) are the same for every
cell and training seed, so sampling noise is not mixed into seed noise.

One learning rate for every cell (``DESIGN``): a record beside ``temperature_alpha_lr.py``,
which chooses the rate per cell on validation data. The grid is descriptive; its one planned
comparison is the tuned grid's, T = 4 against T = 1 at alpha = 0.5, paired by seed.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import (  # noqa: E402
    RESULTS,
    check,
    merge_results,
    paired_comparisons,
    summarise,
    update_results,
    write_results,
)
from lm_divergences import DRAWS, cached_logits, load, sample_metrics, train_lm_student  # noqa: E402

TEMPERATURES = [1.0, 2.0, 4.0, 8.0]
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
METRICS = ("perplexity", "teacher_nll")
PRIMARY_METRIC = "perplexity"
DESIGN = ("one learning rate (--lr) for every cell, 500 steps, final weights; a record beside "
          "temperature_alpha_lr.py, which chooses the rate per cell on validation data")
COMPARISONS = [{"a": "T=4, alpha=0.5", "b": "T=1, alpha=0.5", "metric": PRIMARY_METRIC,
                "higher_is_better": False}]


def cell_name(temperature, alpha: float) -> str:
    return f"alpha={alpha:g}" if alpha == 0 else f"T={temperature:g}, alpha={alpha:g}"


def cell_data(ctx, temperature, alpha: float):
    """The student's training windows and ``dk.train`` targets for one cell of the grid:
    hard labels for alpha = 0, the shipped teacher's cached logits otherwise."""
    if alpha == 0:
        return ctx["small"], None
    kd = ctx["dk"].KDConfig(alpha=alpha, temperature=temperature)
    return cached_logits(ctx), ctx["dk"].CachedTeacherLogits(kd)


def run(ctx, temperature, alpha: float, seed: int, steps: int, lr: float) -> dict:
    dk = ctx["dk"]
    examples, targets = cell_data(ctx, temperature, alpha)
    student, seconds, cpu_seconds = train_lm_student(ctx, seed, steps, lr, examples, targets)
    samples = sample_metrics(ctx, student, seed, DRAWS)
    return {"seed": seed, "method": cell_name(temperature, alpha), "temperature": temperature if alpha else None,
            "alpha": alpha, "params": dk.count_parameters(student), "steps": steps,
            "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            "perplexity": round(dk.perplexity(student, ctx["held"]), 4), "teacher_nll": samples["teacher_nll"]}


def print_grid(runs, metric: str = "perplexity") -> None:
    temps = sorted({r["temperature"] for r in runs if r.get("temperature") is not None})
    alphas = sorted({r["alpha"] for r in runs if "alpha" in r})
    print(f"\n{metric} (mean ± std over seeds); rows T, columns alpha")
    print(f"{'':>8}" + "".join(f"{'alpha=' + format(a, 'g'):>18}" for a in alphas))
    for T in temps:
        cells = []
        for a in alphas:
            s = summarise([r for r in runs if r.get("alpha") == a], metric).get(cell_name(T, a))
            cells.append(f"{s['mean']:>10.3f} ± {s['std']:<5.2f}" if s else f"{'-':>18}")
        print(f"{'T=' + format(T, 'g'):>8}" + "".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, T = 2 with alpha 0 and 0.75, 300 steps, "
                                                         "direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="student steps (default 500; quick: 300)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--temperatures", type=float, nargs="+", default=None)
    ap.add_argument("--alphas", type=float, nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "temperature_alpha.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                    help="combine results files of single-seed runs (same set-up) into --out")
    a = ap.parse_args()
    if a.merge:
        doc = merge_results(a.merge, a.out, METRICS)
        doc = update_results(a.out, primary_metric=PRIMARY_METRIC, design=DESIGN, comparisons=COMPARISONS,
                             paired=paired_comparisons(doc["runs"], doc["seeds"], COMPARISONS))
        print_grid(doc["runs"])
        print(f"wrote {a.out} ({len(doc['seeds'])} seeds)")
        return
    import torch

    torch.set_num_threads(a.threads)
    steps = a.steps or (300 if a.quick else 500)
    seeds = [0] if a.quick else a.seeds
    temps = a.temperatures or ([2.0] if a.quick else TEMPERATURES)
    alphas = a.alphas or ([0.0, 0.75] if a.quick else ALPHAS)
    for name, values in (("--temperatures", temps), ("--alphas", alphas)):
        bad = [v for v in values if not math.isfinite(v) or v < 0 or (name == "--alphas" and v > 1)
               or (name == "--temperatures" and v == 0)]
        if bad:
            ap.error(f"{name} expects {'values in [0, 1]' if name == '--alphas' else 'positive values'}; got {bad}")
    ctx = load(64, 0.1)
    dk = ctx["dk"]
    teacher_ppl = dk.perplexity(ctx["teacher"], ctx["held"])
    print(f"teacher {dk.count_parameters(ctx['teacher']):,} params, held-out perplexity {teacher_ppl:.3f}")
    runs = []
    for seed in seeds:
        runs.append({"seed": seed, "method": "teacher", "params": dk.count_parameters(ctx["teacher"]),
                     "perplexity": round(teacher_ppl, 4)})
        for alpha in alphas:
            for T in (temps if alpha else [None]):
                runs.append(run(ctx, T, alpha, seed, steps, a.lr))
                r = runs[-1]
                print(f"seed {seed} {r['method']:<18} ppl {r['perplexity']:.3f}  teacher NLL {r['teacher_nll']:.3f}"
                      f"  {r['train_cpu_seconds']:.0f} CPU-s", flush=True)
    print_grid(runs)
    print_grid(runs, "teacher_nll")
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(all(math.isfinite(r["perplexity"]) for r in runs), "every perplexity is finite", problems)
        check(teacher_ppl < by[cell_name(None, 0.0)]["perplexity"], "the teacher beats the hard-label student", problems)
        for T, alpha in ((T, alpha) for alpha in alphas if alpha >= 0.75 for T in temps):
            check(by[cell_name(T, alpha)]["perplexity"] < by[cell_name(None, 0.0)]["perplexity"],
                  f"T = {T:g}, alpha = {alpha:g} beats hard labels alone on held-out perplexity", problems)
        sys.exit(1 if problems else 0)
    summary = {k: summarise(runs, k) for k in METRICS}
    paired = paired_comparisons(runs, seeds, COMPARISONS) if len(seeds) > 1 else []
    write_results(a.out, seeds, runs, threads=a.threads, summary=summary, primary_metric=PRIMARY_METRIC,
                  design=DESIGN, comparisons=COMPARISONS, paired=paired,
                  setup={"steps": steps, "lr": a.lr, "block": 64, "batch_size": 32, "small_fraction": 0.1,
                         "temperatures": temps, "alphas": alphas, "small_windows": len(ctx["small"]),
                         "held_out_windows": len(ctx["held"]), "sampling_draws": list(DRAWS),
                         "teacher": ctx["meta"].get("extra", {}).get("info", {})})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
