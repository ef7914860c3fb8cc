"""Data-to-text with a decoder-only student: which positions should the loss score?

    nice python benchmarks/d2t_causal.py            # full: seeds 0 1 2 -> results/d2t_causal.json
    python benchmarks/d2t_causal.py --quick         # one seed, short runs, direction checks; writes nothing

Set-up (chapter 10): the shipped causal teacher ``d2t-lm-teacher`` (a 2-layer ``TransformerLM``
trained by ``scripts/train_checkpoints.py --only d2t-lm`` on 40,000 chat turns the students never
see) and an ``lm-student`` (1 layer, d_model 64; ~16% of the teacher's parameters). One chat turn
per pair: the prompt ``user : <linearized MR> assistant :``, the completion the description +
``<eos>``. As in ``benchmarks/quality.py``, every student has the 400 labelled pairs plus the
teacher's greedy descriptions of the first ``--transfer`` unlabelled inputs, and the same
optimizer budget (steps, batch 64, lr, warm-up 50, final weights -- fixed before any run, no
choice made on test data). Methods:

* ``hard labels`` -- the baseline: cross-entropy on the completion tokens only;
* ``KD, completion only`` -- word-level KD (T = 1, alpha = 0.5) from the teacher's stored logits,
  scored on the completion positions only (the pairs);
* ``KD, whole sequence`` -- the same texts as plain sequences (prompt + completion): the prompt
  tokens are scored too, by both the hard and the soft term;
* ``labelled only`` -- a reference, not one of the compared methods: hard labels on the 400 pairs
  alone (what the student can do without the teacher).

Paired by seed: the same seed gives the same initial weights and the same batch order. Primary
metric, fixed in advance: greedy BLEU on the 400 test inputs (8 references each); also the slot
error rate (%) and BLEU on the 200 validation inputs. Paired differences (KD whole sequence -
KD completion only; KD completion only - hard labels) get 95% t-intervals over the seeds.
Also written: a few test inputs decoded by the causal students (seed 0) beside a seq2seq
``d2t-student`` trained with the same budget on the same data (``word + seq KD`` of quality.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import RESULTS, check, summarise, write_results  # noqa: E402

METHODS = ["hard labels", "KD, completion only", "KD, whole sequence", "labelled only"]
PRIMARY = "bleu"
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
EXAMPLES = 4  # test inputs decoded side by side


def load(num_transfer: int, progress: bool) -> dict:
    import distilkit as dk
    from distilkit.experiments import d2t_lm_pairs, d2t_lm_prompt

    data = dk.make_data_to_text(seed=0)
    teacher, tok, meta = dk.load_teacher("d2t-lm-teacher")
    teacher.eval()
    t = time.perf_counter()
    mrs = data.transfer[:num_transfer]
    prompts = [d2t_lm_prompt(tok, mr) for mr in mrs]
    greedy = [None] * len(prompts)
    by_len: dict = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for idx in by_len.values():
        for j in range(0, len(idx), 256):
            chunk = idx[j : j + 256]
            for i, ids in zip(chunk, dk.greedy(teacher, [prompts[i] for i in chunk], max_new_tokens=80)):
                greedy[i] = (prompts[i], list(ids) + [tok.eos_id])
    seconds = round(time.perf_counter() - t, 1)
    if progress:
        print(f"teacher labelled {len(mrs)} transfer inputs in {seconds} s", flush=True)
    labelled = d2t_lm_pairs(tok, data.train)
    return {"dk": dk, "data": data, "teacher": teacher, "tok": tok, "labelled": labelled, "greedy": greedy,
            "teacher_seconds": seconds, "teacher_info": meta.get("extra", {}).get("info", {})}


def examples_for(ctx, method: str):
    dk, lab, kd = ctx["dk"], ctx["labelled"], dk_kd(ctx)
    if method == "labelled only":
        return lab, None
    if method == "hard labels":
        return lab + ctx["greedy"], None
    if method == "KD, completion only":
        if "cached_pairs" not in ctx:
            ctx["cached_pairs"] = dk.precompute_teacher_logits(ctx["teacher"], lab + ctx["greedy"], progress=False)
        return ctx["cached_pairs"], kd
    if method == "KD, whole sequence":
        if "cached_whole" not in ctx:
            whole = [list(p) + list(c) for p, c in lab + ctx["greedy"]]
            ctx["cached_whole"] = dk.precompute_teacher_logits(ctx["teacher"], whole, progress=False)
        return ctx["cached_whole"], kd
    raise ValueError(f"unknown method {method!r}")


def dk_kd(ctx):
    return ctx["dk"].KDConfig(temperature=1.0, alpha=0.5)


def evaluate(ctx, model, test_items: int, valid_items: int) -> dict:
    from distilkit.experiments import evaluate_d2t_lm

    data, tok = ctx["data"], ctx["tok"]
    test = evaluate_d2t_lm(model, tok, data.test[:test_items])
    valid = evaluate_d2t_lm(model, tok, data.valid[:valid_items])
    return {"bleu": round(test["bleu"], 2), "ser": round(100 * test["slot_error_rate"], 2),
            "valid_bleu": round(valid["bleu"], 2), "valid_ser": round(100 * valid["slot_error_rate"], 2),
            "examples": test["outputs"][:EXAMPLES]}


def run(ctx, method, seed, steps, lr, batch_size, test_items, valid_items, preset, overrides) -> dict:
    import torch

    dk = ctx["dk"]
    examples, kd = examples_for(ctx, method)
    cfg = dk.TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps // 5), seed=seed,
                         progress=False, device="cpu", restore_best=False)
    torch.manual_seed(seed)
    student = dk.make_model(preset, len(ctx["tok"]), **overrides)
    t = time.perf_counter()
    if kd is None:
        dk.train(student, examples, config=cfg)
    else:
        dk.train(student, examples, config=cfg, targets=dk.CachedTeacherLogits(kd))
    seconds = time.perf_counter() - t
    return {"seed": seed, "method": method, "params": dk.count_parameters(student), "steps": steps,
            "examples": len(examples), "train_seconds": round(seconds, 1),
            **evaluate(ctx, student, test_items, valid_items)}


def paired(runs, a: str, b: str, metric: str) -> dict:
    """``a - b`` per seed, mean and 95% t-interval; a verdict only if the interval excludes 0."""
    by = {(r["method"], r["seed"]): r[metric] for r in runs if r["seed"] is not None}
    seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
    d = [by[(a, s)] - by[(b, s)] for s in seeds]
    mean = statistics.fmean(d)
    half = T95[len(d) - 1] * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("inf")
    lo, hi = mean - half, mean + half
    verdict = (f"{a} higher" if lo > 0 else f"{a} lower" if hi < 0 else "no verdict (interval includes 0)")
    return {"a": a, "b": b, "metric": metric, "seeds": seeds, "differences": [round(x, 2) for x in d],
            "mean": round(mean, 2), "ci95": [round(lo, 2), round(hi, 2)], "verdict": verdict}


def seq2seq_beside(steps: int, lr: float, batch_size: int, num_transfer: int, test_items: int) -> dict:
    """A seq2seq d2t-student (quality.py's ``word + seq KD``, seed 0, same budget) and its first
    test outputs, for the side-by-side examples."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import quality

    ctx = quality.load(num_transfer, ["word + seq KD"], progress=False)
    dk, data = ctx["dk"], ctx["data"]
    examples, kd = quality.examples_for(ctx, "word + seq KD")
    cfg = dk.TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps // 5), seed=0,
                         progress=False, device="cpu", restore_best=False)
    torch.manual_seed(0)
    student = dk.make_model("d2t-student", len(data.tokenizer))
    t = time.perf_counter()
    dk.train(student, examples, config=cfg, targets=dk.CachedTeacherLogits(kd))
    seconds = round(time.perf_counter() - t, 1)
    items = data.test[:test_items]
    mrs, refs = [mr for mr, _ in items], [r for _, r in items]
    outs = [data.tokenizer.decode(ids) for ids in dk.greedy(student, data.encode_inputs(mrs), max_new_tokens=80)]
    return {"method": "seq2seq d2t-student, word + seq KD (quality.py recipe)", "seed": 0, "steps": steps,
            "lr": lr, "params": dk.count_parameters(student), "train_seconds": seconds,
            "bleu": round(dk.corpus_bleu(outs, refs), 2), "ser": round(100 * dk.slot_error_rate(mrs, outs), 2),
            "examples": outs[:EXAMPLES]}


def print_table(runs) -> None:
    print(f"\n{'method':<24}{'BLEU':>16}{'SER %':>16}   per seed (BLEU / SER)")
    for m in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == m]
        b, s = summarise(rows, "bleu")[m], summarise(rows, "ser")[m]
        per = ", ".join(f"{r['bleu']:.1f}/{r['ser']:.1f}" for r in rows)
        print(f"{m:<24}{b['mean']:>8.2f} ± {b['std']:<5.2f}{s['mean']:>8.2f} ± {s['std']:<5.2f}   {per}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, short runs, direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per student (default 500; quick 100)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--transfer", type=int, default=None, help="transfer inputs (default 3000; quick 300)")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    ap.add_argument("--no-seq2seq", action="store_true", help="skip the seq2seq student beside")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "d2t_causal.json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    steps = a.steps or (100 if a.quick else 500)
    num_transfer = a.transfer or (300 if a.quick else 3000)
    seeds = [0] if a.quick else a.seeds
    methods = a.methods or (METHODS[:3] if a.quick else METHODS)
    test_items, valid_items = (100, 50) if a.quick else (400, 200)
    preset, overrides = "lm-student", {"max_len": 128}
    ctx = load(num_transfer, progress=True)
    dk = ctx["dk"]
    teacher = {"seed": None, "method": "teacher", "params": dk.count_parameters(ctx["teacher"]),
               **evaluate(ctx, ctx["teacher"], test_items, valid_items)}
    print(f"teacher: {teacher['params']:,} params, BLEU {teacher['bleu']}, SER {teacher['ser']}%", flush=True)
    runs = [teacher]
    for seed in seeds:
        for m in methods:
            runs.append(run(ctx, m, seed, steps, a.lr, a.batch_size, test_items, valid_items, preset, overrides))
            r = runs[-1]
            print(f"seed {seed} {m:<22} BLEU {r['bleu']:6.2f}  SER {r['ser']:6.2f}%  valid BLEU {r['valid_bleu']:6.2f}"
                  f"  ({r['train_seconds']:.0f} s)", flush=True)
    print_table(runs)
    comparisons = [paired(runs, "KD, whole sequence", "KD, completion only", k) for k in ("bleu", "ser")] + \
                  [paired(runs, "KD, completion only", "hard labels", k) for k in ("bleu", "ser")] \
        if len(seeds) > 1 else []
    for c in comparisons:
        print(f"{c['a']} - {c['b']} ({c['metric']}): {c['mean']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] "
              f"-> {c['verdict']}")
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(teacher["bleu"] > by["hard labels"]["bleu"], "the teacher beats the hard-label student", problems)
        check(by["KD, completion only"]["bleu"] > 20, "the KD student writes descriptions (BLEU > 20)", problems)
        check(teacher["ser"] < 10, "the shipped teacher gets < 10% of the slots wrong", problems)
        sys.exit(1 if problems else 0)
    beside = None if a.no_seq2seq else seq2seq_beside(steps, 1e-2, a.batch_size, num_transfer, test_items)
    data = ctx["data"]
    write_results(a.out, seeds, runs, threads=a.threads, primary_metric="test BLEU (bleu)",
                  summary={k: summarise(runs, k) for k in ("bleu", "ser", "valid_bleu", "valid_ser")},
                  comparisons=comparisons,
                  examples={"mrs": [data.test[i][0] for i in range(EXAMPLES)],
                            "references": [data.test[i][1][0] for i in range(EXAMPLES)],
                            "seq2seq": beside},
                  setup={"steps": steps, "lr": a.lr, "batch_size": a.batch_size, "warmup_steps": min(50, steps // 5),
                         "weights": "final", "labelled_pairs": len(ctx["labelled"]), "transfer_inputs": num_transfer,
                         "student": preset, "student_overrides": overrides, "teacher": "d2t-lm-teacher",
                         "teacher_info": ctx["teacher_info"], "test_inputs": test_items, "valid_inputs": valid_items,
                         "temperature": 1.0, "alpha": 0.5, "teacher_decoding_seconds": ctx["teacher_seconds"]})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
