"""Where does the data-to-text student's gain come from? Chapter 4's experiment with controls.

    python benchmarks/quality.py --quick      # CI: one seed, short runs, direction checks
    nice python benchmarks/quality.py         # full: seeds 0 1 2 -> results/quality.json

Set-up (as chapter 4 and the README): the shipped ``d2t-teacher`` (trained on 40,000 pairs the
students never see) and ``d2t-student`` models; every student has the same 400 labelled pairs
and the same optimizer budget (steps, batch 64 -- 32 in quick mode --, lr, warm-up 50, final
weights). The unlabelled transfer inputs are the first ``--transfer`` inputs of ``data.transfer``.

Methods, each isolating one mechanism:

* ``baseline`` -- hard labels on the 400 pairs;
* ``word KD, same inputs`` -- the teacher's distributions on the 400 pairs (T = 1, alpha = 0.5);
* ``seq KD, greedy`` -- 400 pairs + the teacher's greedy descriptions of the transfer inputs,
  as hard labels (alpha = 0: Kim & Rush's sequence-level KD);
* ``seq KD, beam 5`` -- the same with the teacher's beam-5 descriptions;
* ``word + seq KD`` -- the greedy transfer set with the teacher's distributions (alpha = 0.5);
* ``word + seq KD, soft only`` -- the same with alpha = 1 (no hard labels at all);
* ``more human data`` -- 400 pairs + one human description of each transfer input, hard
  labels (what the teacher's labels stand in for).

Per (method, seed): greedy BLEU (the primary metric), slot error rate (%) and repeated 4-gram
rate (% of outputs that say a clause twice) on the 400 test inputs (8 references each),
parameters, training seconds. ``teacher`` is evaluated once (it has no seed). The planned
comparisons (``comparisons``) are written to the file with their paired 95% intervals.

A record of a fixed budget (``DESIGN``): nothing here is chosen on validation data, so the book
decides its claims from ``benchmarks/controls.py``; the README quotes this file as the quick
start's reference at a fixed budget.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import (  # noqa: E402
    D2T_METRICS,
    RESULTS,
    check,
    kept,
    merge_results,
    paired_comparisons,
    summarise,
    update_results,
    write_results,
)

METHODS = ["baseline", "word KD, same inputs", "seq KD, greedy", "seq KD, beam 5", "word + seq KD",
           "word + seq KD, soft only", "more human data"]
QUICK = ["baseline", "seq KD, greedy", "word + seq KD"]
PRIMARY_METRIC = "bleu"
DESIGN = ("a fixed budget: every student trains the same number of steps and is scored with its final "
          "weights; no validation data is used, so the budget is not tuned for any method. "
          "benchmarks/controls.py chooses learning rates and checkpoints on validation data instead.")


def comparisons(methods) -> list:
    """Fixed before the runs: every method against the baseline, then the teacher's labels
    against human ones, beam against greedy outputs, and the distributions added to the outputs;
    BLEU, paired by seed."""
    pairs = [(m, "baseline") for m in methods if m != "baseline"]
    pairs += [("seq KD, greedy", "more human data"), ("seq KD, beam 5", "seq KD, greedy"),
              ("word + seq KD", "seq KD, greedy")]
    return [{"a": a, "b": b, "metric": PRIMARY_METRIC, "higher_is_better": True}
            for a, b in pairs if a in methods and b in methods]


def load(num_transfer: int, methods, progress: bool, work=None):
    """The task, the teacher and the transfer sets. With ``work`` (a folder), the teacher's
    greedy and beam outputs are kept there as JSON and reused by later runs (one per seed)."""
    import distilkit as dk
    from distilkit.data import DataToTextTask

    data = dk.make_data_to_text(seed=0)
    teacher, tok, _ = dk.load_teacher("d2t-teacher")
    teacher.eval()
    ctx = {"dk": dk, "data": data, "teacher": teacher, "labelled": data.encode_pairs(data.train),
           "teacher_seconds": {}}
    mrs = data.transfer[:num_transfer]

    def labels(name, make):
        path = Path(work) / f"{name}-{num_transfer}.json" if work else None
        pairs, ctx["teacher_seconds"][name] = kept(path, make, key="pairs")
        return [(list(x), list(y)) for x, y in pairs]

    ctx["greedy"] = labels("greedy", lambda: dk.experiments.transfer_set(teacher, data, num_transfer,
                                                                         progress=progress))
    if "seq KD, beam 5" in methods:
        ctx["beam"] = labels("beam5", lambda: dk.sequence_level_data(
            teacher, data.encode_inputs(mrs), method="beam", beam_size=5, progress=progress))
    rng = random.Random(12345)
    task = DataToTextTask()
    ctx["human"] = data.encode_pairs([(mr, task.realise(mr, rng)) for mr in mrs])
    return ctx


def examples_for(ctx, method: str):
    """(training examples, KDConfig or None) of one method; teacher logits cached in float16."""
    dk, lab = ctx["dk"], ctx["labelled"]

    def cached(name, examples):
        if name not in ctx:
            ctx[name] = dk.precompute_teacher_logits(ctx["teacher"], examples, progress=False)
        return ctx[name]

    if method == "baseline":
        return lab, None
    if method == "word KD, same inputs":
        return cached("cached_labelled", lab), dk.KDConfig(temperature=1.0, alpha=0.5)
    if method == "seq KD, greedy":
        return lab + ctx["greedy"], None
    if method == "seq KD, beam 5":
        return lab + ctx["beam"], None
    if method == "word + seq KD":
        return cached("cached_transfer", lab + ctx["greedy"]), dk.KDConfig(temperature=1.0, alpha=0.5)
    if method == "word + seq KD, soft only":
        return cached("cached_transfer", lab + ctx["greedy"]), dk.KDConfig(temperature=1.0, alpha=1.0)
    if method == "more human data":
        return lab + ctx["human"], None
    raise ValueError(f"unknown method {method!r}")


def evaluate(ctx, model, test_items: int) -> dict:
    dk, data = ctx["dk"], ctx["data"]
    items = data.test[:test_items]
    mrs, refs = [mr for mr, _ in items], [r for _, r in items]
    outs = [data.tokenizer.decode(ids) for ids in dk.greedy(model, data.encode_inputs(mrs), max_new_tokens=80)]
    return {"bleu": round(dk.corpus_bleu(outs, refs), 2), "ser": round(100 * dk.slot_error_rate(mrs, outs), 2),
            "repeat": round(dk.repeated_ngram_rate(outs), 2)}


def run(ctx, method: str, seed: int, steps: int, lr: float, preset: str, test_items: int, batch_size: int = 64,
        **overrides) -> dict:
    import torch

    dk = ctx["dk"]
    examples, kd = examples_for(ctx, method)
    cfg = dk.TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps // 5), seed=seed,
                         progress=False, device="cpu", restore_best=False)
    torch.manual_seed(seed)
    student = dk.make_model(preset, len(ctx["data"].tokenizer), **overrides)
    t = time.perf_counter()
    if kd is None:
        dk.train(student, examples, config=cfg)
    else:
        dk.train(student, examples, config=cfg, targets=dk.CachedTeacherLogits(kd))
    seconds = time.perf_counter() - t
    return {"seed": seed, "method": method, "params": dk.count_parameters(student), "steps": steps,
            "examples": len(examples), "train_seconds": round(seconds, 1), **evaluate(ctx, student, test_items)}


def print_table(runs) -> None:
    print(f"\n{'method':<28}{'BLEU':>18}{'SER %':>18}   per seed (BLEU / SER)")
    for m in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == m]
        b, s = summarise(rows, "bleu")[m], summarise(rows, "ser")[m]
        per = ", ".join(f"{r['bleu']:.1f}/{r['ser']:.1f}" for r in rows)
        print(f"{m:<28}{b['mean']:>10.2f} ± {b['std']:<5.2f}{s['mean']:>10.2f} ± {s['std']:<5.2f}   {per}")


def merge(paths, out: Path) -> None:
    doc = merge_results(paths, out, ("bleu", "ser", "repeat"))
    methods = list(dict.fromkeys(r["method"] for r in doc["runs"] if r["seed"] is not None))
    doc = update_results(out, primary_metric=PRIMARY_METRIC, design=DESIGN,
                         metric_definitions=D2T_METRICS, comparisons=comparisons(methods),
                         paired=paired_comparisons(doc["runs"], doc["seeds"], comparisons(methods)))
    print_table(doc["runs"])
    print(f"wrote {out} ({len(doc['seeds'])} seeds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, short runs, direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per student (default 500; quick 150)")
    ap.add_argument("--batch-size", type=int, default=None, help="examples per step (default 64; quick 32)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--transfer", type=int, default=None, help="transfer inputs (default 3000; quick 300)")
    ap.add_argument("--student", default="d2t-student", help="student preset")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder that keeps the teacher's transfer-set outputs for later runs")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                    help="combine results files of single-seed runs (same set-up) into --out")
    a = ap.parse_args()
    if a.merge:
        merge(a.merge, a.out)
        return
    import torch

    torch.set_num_threads(a.threads)
    steps = a.steps or (150 if a.quick else 500)
    batch_size = a.batch_size or (32 if a.quick else 64)
    num_transfer = a.transfer or (300 if a.quick else 3000)
    seeds = [0] if a.quick else a.seeds
    methods = a.methods or (QUICK if a.quick else METHODS)
    test_items = 100 if a.quick else 400
    ctx = load(num_transfer, methods, progress=not a.quick, work=a.work)
    dk = ctx["dk"]
    teacher = {"seed": None, "method": "teacher", "params": dk.count_parameters(ctx["teacher"]),
               **evaluate(ctx, ctx["teacher"], test_items)}
    print(f"teacher: {teacher['params']:,} params, BLEU {teacher['bleu']}, SER {teacher['ser']}%", flush=True)
    runs = [teacher]
    for seed in seeds:
        for m in methods:
            runs.append(run(ctx, m, seed, steps, a.lr, a.student, test_items, batch_size=batch_size))
            r = runs[-1]
            print(f"seed {seed} {m:<26} BLEU {r['bleu']:6.2f}  SER {r['ser']:6.2f}%  ({r['train_seconds']:.0f} s)",
                  flush=True)
    print_table(runs)
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(teacher["bleu"] > by["baseline"]["bleu"] + 5, "the teacher beats the baseline by > 5 BLEU", problems)
        check(by["word + seq KD"]["bleu"] > by["baseline"]["bleu"],
              "word + sequence-level KD beats the baseline", problems)
        check(by["seq KD, greedy"]["bleu"] > by["baseline"]["bleu"],
              "training on the teacher's outputs beats the baseline", problems)
        sys.exit(1 if problems else 0)
    write_results(a.out, seeds, runs, threads=a.threads,
                  summary={k: summarise(runs, k) for k in ("bleu", "ser", "repeat")},
                  primary_metric=PRIMARY_METRIC, design=DESIGN,
                  metric_definitions=D2T_METRICS, comparisons=comparisons(methods),
                  paired=paired_comparisons(runs, seeds, comparisons(methods)) if len(seeds) > 1 else [],
                  setup={"steps": steps, "lr": a.lr, "batch_size": batch_size, "labelled_pairs": len(ctx["labelled"]),
                         "transfer_inputs": num_transfer, "student": a.student, "test_inputs": test_items,
                         "temperature": 1.0, "teacher_decoding_seconds": ctx["teacher_seconds"]})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
