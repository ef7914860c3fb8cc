"""Temperature x alpha with the learning rate chosen per cell on validation data.

    python benchmarks/temperature_alpha_lr.py --quick             # CI: two cells, tiny runs, checks
    nice python benchmarks/temperature_alpha_lr.py --cells 0-8 --out runs/talr/a.json   # one process per
    nice python benchmarks/temperature_alpha_lr.py --cells 9-16 --out runs/talr/b.json  # share of the cells
    python benchmarks/temperature_alpha_lr.py --merge runs/talr/a.json runs/talr/b.json
                                                                  # -> results/temperature_alpha_lr.json

``benchmarks/temperature_alpha.py`` trains every cell of the grid with one learning rate, but
alpha and the T^2 factor rescale the gradient, so one rate can favour some cells. Here each cell
(T in {1, 2, 4, 8} x alpha in {0.25, 0.5, 0.75, 1}, and alpha = 0, hard labels) gets its own
rate from {1e-3, 3e-3, 1e-2}: one tuning run per rate with seed 100 (not an evaluation seed),
the rate with the best validation perplexity wins. The evaluation seeds 0, 1, 2 then train
at that rate. Every run: the lm-student (1 layer, d=64) on the first 10% of the training text,
the shipped lm-teacher's cached logits, at most 500 steps of 32 windows, a validation check
every 50 steps and the best checkpoint kept -- the set-up and the validation / test windows of
``benchmarks/capacity_gap.py`` (250 validation windows for every choice, 476 test windows).

Primary metric: test perplexity (lower is better). Also the teacher's NLL of the student's
samples (three fixed sampling draws, as in ``benchmarks/lm_divergences.py``). Planned
comparison: T = 4 against T = 1 at alpha = 0.5 (the results page's temperature row); the grid
itself is descriptive.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's distilkit
sys.path.insert(0, str(ROOT / "scripts"))
from _common import RESULTS, check, combine_runs, summarise, write_results  # noqa: E402
from capacity_gap import STUDENTS, context, train_selected  # noqa: E402
from lm_divergences import DRAWS, sample_metrics  # noqa: E402
from temperature_alpha import ALPHAS, TEMPERATURES, cell_data, cell_name  # noqa: E402

CELLS = [(None, 0.0)] + [(t, a) for t in TEMPERATURES for a in ALPHAS if a > 0]
LRS = [1e-3, 3e-3, 1e-2]
TUNE_SEED = 100
METRICS = ("perplexity", "teacher_nll", "valid_perplexity", "lr")
COMPARISONS = [(cell_name(4.0, 0.5), cell_name(1.0, 0.5), "T = 4 against T = 1 at alpha = 0.5")]


def train(ctx, temperature, alpha: float, seed: int, lr: float, steps: int, every: int):
    examples, targets = cell_data(ctx, temperature, alpha)
    return train_selected(ctx, STUDENTS["student d64"], seed, examples, targets, steps, every, lr)


def run_cell(ctx, temperature, alpha: float, seeds, lrs, steps: int, every: int):
    """Tune the cell's learning rate on validation data (seed 100), then train the seeds at it."""
    name = cell_name(temperature, alpha)
    tuning = []
    for lr in lrs:
        _, info = train(ctx, temperature, alpha, TUNE_SEED, lr, steps, every)
        tuning.append({"method": name, "lr": lr, "valid_perplexity": info["valid_perplexity"],
                       "best_step": info["best_step"]})
    chosen = min(tuning, key=lambda r: (r["valid_perplexity"], r["lr"]))["lr"]
    runs = []
    for seed in seeds:
        model, info = train(ctx, temperature, alpha, seed, chosen, steps, every)
        runs.append({"seed": seed, "method": name, "temperature": temperature, "alpha": alpha, "lr": chosen,
                     **info, "perplexity": round(ctx["dk"].perplexity(model, ctx["test"]), 4),
                     "teacher_nll": sample_metrics(ctx, model, seed, DRAWS)["teacher_nll"]})
        r = runs[-1]
        print(f"{name:<18} seed {seed} lr {chosen:g}: test ppl {r['perplexity']:.3f}, teacher NLL "
              f"{r['teacher_nll']:.3f} (valid {r['valid_perplexity']:.3f} at {r['best_step']})", flush=True)
    return tuning, runs


def cell_range(text: str) -> list:
    lo, _, hi = text.partition("-")
    idx = list(range(int(lo), int(hi or lo) + 1))
    if not idx or idx[-1] >= len(CELLS) or idx[0] < 0:
        raise SystemExit(f"--cells must lie in 0-{len(CELLS) - 1}, got {text!r}")
    return idx


def merge(paths, out: Path) -> dict:
    """One results file from runs made in several processes (some cells each)."""
    docs, runs, seeds = combine_runs(paths, [cell_name(t, a) for t, a in CELLS])
    tuning = [t for d in docs for t in d["tuning"]]
    return write_results(out, seeds, runs, summary={k: summarise(runs, k) for k in METRICS},
                         primary_metric="perplexity", tuning={"seed": TUNE_SEED, "runs": tuning},
                         comparisons=[{"a": a, "b": b, "isolates": why} for a, b, why in COMPARISONS],
                         setup=docs[0]["setup"], commands=[d["command"] for d in docs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two cells, tiny runs, direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cells", default=None, help=f"cells to run, as 'first-last' in 0-{len(CELLS) - 1} (default all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "temperature_alpha_lr.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE")
    a = ap.parse_args()
    if a.merge:
        doc = merge(a.merge, a.out)
        for m, s in doc["summary"]["perplexity"].items():
            print(f"{m:<18} test ppl {s['mean']:.3f} ± {s['std']:.3f}  lr {doc['summary']['lr'][m]['mean']:g}")
        print(f"wrote {a.out} ({len(doc['seeds'])} seeds)")
        return
    import torch

    torch.set_num_threads(a.threads)
    steps, every = (60, 20) if a.quick else (500, 50)
    lrs = [3e-3, 1e-2] if a.quick else LRS
    seeds = [0] if a.quick else a.seeds
    cells = [CELLS[0], (2.0, 0.75)] if a.quick else [CELLS[i] for i in (cell_range(a.cells) if a.cells else
                                                                      range(len(CELLS)))]
    ctx = context(a.quick)
    tuning, runs = [], []
    for t, alpha in cells:
        tu, ru = run_cell(ctx, t, alpha, seeds, lrs, steps, every)
        tuning += tu
        runs += ru
    if a.quick:
        problems: list = []
        check(all(math.isfinite(r["perplexity"]) and math.isfinite(r["teacher_nll"]) for r in runs),
              "every metric is finite", problems)
        chosen = {r["method"]: r["lr"] for r in runs}
        check(all(chosen[t["method"]] == min((u for u in tuning if u["method"] == t["method"]),
                                             key=lambda u: (u["valid_perplexity"], u["lr"]))["lr"] for t in tuning),
              "each cell trains at the rate with its best validation perplexity", problems)
        by = {r["method"]: r for r in runs}
        check(by[cell_name(2.0, 0.75)]["perplexity"] < by[cell_name(None, 0.0)]["perplexity"],
              "soft targets (T = 2, alpha = 0.75) beat hard labels on the same windows", problems)
        sys.exit(1 if problems else 0)
    write_results(a.out, seeds, runs, threads=a.threads, primary_metric="perplexity",
                  tuning=tuning, setup={"steps": steps, "every": every, "lrs": lrs, "tune_seed": TUNE_SEED,
                                        "batch_size": 32, "small_fraction": 0.1, "student": STUDENTS["student d64"],
                                        "valid_windows": len(ctx["valid"]), "test_windows": len(ctx["test"]),
                                        "draws": list(DRAWS)})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
