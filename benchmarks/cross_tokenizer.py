"""Distilling across tokenizers: a character-level student, a BPE teacher.

    python benchmarks/cross_tokenizer.py --quick   # CI: one seed, short runs, direction checks
    nice python benchmarks/cross_tokenizer.py      # full: seeds 0 1 2 -> results/cross_tokenizer.json

Set-up: the student is a fresh ``lm-student`` (1 layer, d=64) over the characters of the
shipped ``lm-teacher``'s tokenizer. It sees only the first 10% of the training text (the first
90% of ``load_text_corpus()``), cut into 64-character windows (a window whose BPE tokenization
is longer than the GPT-2 teacher's 32 positions + 1 is cut at the end of its 33rd token). The
*cross-tokenizer teacher* is the shipped ``gpt2-pydoc`` (a Hugging Face GPT-2 with a 1,024-token
byte-level BPE tokenizer, trained on the whole 90%); the *same-tokenizer teacher* (the upper
bound) is the shipped character-level ``lm-teacher`` (trained on the same 90%).

Methods, the same student budget (steps, batch of 32 windows, learning rate, paired seeds: the
same seed gives the same initial weights and the same order of windows):

* ``hard labels``                  the windows' own next characters;
* ``teacher text (sequence-level)`` the GPT-2 teacher's text as targets, no logits: for each
  window, its first 16 characters and the teacher's sampled continuation (temperature 1), cut
  to 64 characters; hard labels on that text;
* ``ULD``      ``KDConfig(cross_tokenizer="uld")`` from the GPT-2 teacher;
* ``align``    ``KDConfig(cross_tokenizer="align")`` from the GPT-2 teacher;
* ``same-tokenizer KD``  forward-KL KD from the character-level ``lm-teacher``.

All KD methods: alpha = 0.5, T = 1. Primary metric, fixed before running: **bits per character**
on held-out text (the last 10% of the corpus, 64-character windows, cut as above): the total
NLL in bits divided by the characters scored (:func:`distilkit.bits_per_character`). Secondary:
the teachers' bits per character of the student's samples (32 held-out prompts of 16
characters, 48 sampled characters at temperature 1, the same sampling seed for every method),
judged by each teacher; the training seconds per step (live teachers, one thread).
Paired differences over seeds with a 95% t-interval; a verdict only where it excludes zero.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import RESULTS, check, command, machine, summarise, update_results, write_results  # noqa: E402

METHODS = ["hard labels", "teacher text (sequence-level)", "ULD", "align", "same-tokenizer KD"]
PRIMARY = "bits_per_char"
WINDOW, PROMPT, NEW, SAMPLES = 64, 16, 48, 32
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired(runs, a: str, b: str, metric: str) -> dict:
    """``a - b`` per seed, its mean and 95% t-interval; a verdict only when it excludes zero."""
    by = {(r["method"], r["seed"]): r[metric] for r in runs if r.get(metric) is not None}
    seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
    d = [by[a, s] - by[b, s] for s in seeds]
    mean = statistics.fmean(d)
    half = T_975[len(d) - 1] * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("inf")
    lo, hi = mean - half, mean + half
    verdict = "inconclusive" if lo <= 0 <= hi else (f"{a} lower" if hi < 0 else f"{a} higher")
    return {"a": a, "b": b, "metric": metric, "seeds": seeds, "diffs": [round(x, 4) for x in d],
            "mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)], "verdict": verdict}


def fit(text: str, tok, max_tokens: int) -> str:
    """``text`` cut at the end of its ``max_tokens``-th token of ``tok`` (unchanged if shorter)."""
    from distilkit.tokenalign import encode_with_spans

    ids, spans = encode_with_spans(tok, text)
    return text if len(ids) <= max_tokens else text[: spans[max_tokens - 1][1]]


def load(small_fraction: float):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import distilkit as dk

    folder = Path(dk.__file__).parent / "checkpoints" / "gpt2-pydoc"
    bpe_tok = AutoTokenizer.from_pretrained(folder)
    bpe = AutoModelForCausalLM.from_pretrained(folder).eval()
    char_teacher, char_tok, _ = dk.load_teacher("lm-teacher")
    char_teacher.eval()
    limit = bpe.config.n_positions + 1
    text = dk.load_text_corpus()
    split = int(0.9 * len(text))
    train_text = text[: int(small_fraction * split)]
    held_text = text[split:]
    windows = lambda t: [fit(t[i: i + WINDOW], bpe_tok, limit) for i in range(0, len(t) - WINDOW + 1, WINDOW)]  # noqa: E731
    held = windows(held_text)[:400]
    step = (len(held_text) - PROMPT - NEW) // SAMPLES
    prompts = [held_text[i: i + PROMPT] for i in range(0, len(held_text) - PROMPT - NEW, step)][:SAMPLES]
    torch.manual_seed(0)
    return {"dk": dk, "bpe": bpe, "bpe_tok": bpe_tok, "char": char_teacher, "char_tok": char_tok,
            "train": windows(train_text), "held": held, "prompts": prompts, "limit": limit}


def teacher_text(ctx, seed: int = 0):
    """Sequence-level data: each window's first PROMPT characters + the BPE teacher's sampled
    continuation (temperature 1), cut to WINDOW characters and to the teacher's length."""
    import torch

    dk, tok = ctx["dk"], ctx["bpe_tok"]
    if "seq" in ctx:
        return ctx["seq"]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(ctx["train"]), 64):
        prompts = [w[:PROMPT] for w in ctx["train"][i: i + 64]]
        ids = [tok(p)["input_ids"] for p in prompts]
        for p, x in zip(prompts, ids):
            cont = dk.sample(ctx["bpe"], [x], max_new_tokens=ctx["limit"] - 1 - len(x), temperature=1.0,
                              generator=g)[0]
            text = (p + tok.decode(cont))[:WINDOW]
            out.append(fit(text, tok, ctx["limit"]))
    ctx["seq"] = out
    return out


def sample_scores(ctx, student, seed: int) -> dict:
    """Both teachers' bits per character of the student's continuations of the held-out prompts."""
    import torch

    dk, tok = ctx["dk"], ctx["char_tok"]
    g = torch.Generator().manual_seed(1000 + seed)
    conts = dk.sample(student, [tok.encode(p) for p in ctx["prompts"]], max_new_tokens=NEW, temperature=1.0,
                      generator=g)
    pairs = [(p, tok.decode(c)) for p, c in zip(ctx["prompts"], conts)]
    bpe_pairs = [(p, fit(p + c, ctx["bpe_tok"], ctx["limit"])[len(p):]) for p, c in pairs]
    return {"judge_char_teacher_bpc": round(dk.bits_per_character(ctx["char"], tok, pairs), 4),
            "judge_bpe_teacher_bpc": round(dk.bits_per_character(ctx["bpe"], ctx["bpe_tok"], bpe_pairs), 4),
            "samples": [p + " || " + c for p, c in pairs[:3]]}


def run(ctx, method: str, seed: int, steps: int, lr: float, evaluate: bool = True) -> dict:
    import torch

    dk, tok = ctx["dk"], ctx["char_tok"]
    cfg = dk.TrainConfig(steps=steps, batch_size=32, lr=lr, warmup_steps=min(100, steps // 5), seed=seed,
                         progress=False, device="cpu", restore_best=False)
    torch.manual_seed(seed)
    student = dk.make_model("lm-student", len(tok))
    ids = lambda texts: [tok.encode(t) for t in texts]  # noqa: E731
    t0, c0 = time.perf_counter(), time.process_time()
    extra = {}
    if method == "hard labels":
        dk.train(student, ids(ctx["train"]), config=cfg)
    elif method == "teacher text (sequence-level)":
        dk.train(student, ids(teacher_text(ctx)), config=cfg)
    elif method in ("ULD", "align"):
        kd = dk.KDConfig(alpha=0.5, cross_tokenizer=method.lower())
        targets = dk.CrossTokenizerTargets(ctx["bpe"], kd, student_tokenizer=tok, teacher_tokenizer=ctx["bpe_tok"])
        dk.train(student, ctx["train"], config=cfg, targets=targets)
        extra["positions"] = dict(targets.position_counts)
        if targets.vocab_map is not None:
            vm = targets.vocab_map
            extra["vocab_map"] = {"exact": vm.exact, "by_prefix": vm.by_prefix, "unmatched": vm.unmatched}
    else:
        dk.distill(student, ctx["char"], ids(ctx["train"]), kd=dk.KDConfig(alpha=0.5), config=cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not evaluate:
        return {"train_seconds": seconds}
    return {"seed": seed, "method": method, "steps": steps, "train_seconds": round(seconds, 2),
            "train_cpu_seconds": round(cpu, 2), "seconds_per_step": round(seconds / steps, 4),
            PRIMARY: round(dk.bits_per_character(student, tok, ctx["held"]), 4),
            **sample_scores(ctx, student, seed), **extra}


def step_cost(ctx, methods, reps: int = 3, short: int = 10, long: int = 40) -> dict:
    """Seconds per training step of each method without its fixed costs (loading, tokenizing
    the texts once): ``(time of `long` steps - time of `short` steps) / (long - short)``, the
    methods interleaved, the median of ``reps`` repeats; and each relative to same-tokenizer KD."""
    times = {m: [] for m in methods}
    teacher_text(ctx)  # made once, before any timing
    for _ in range(reps):
        for m in methods:
            t = {}
            for n in (short, long):
                t[n] = run(ctx, m, 0, n, 3e-3, evaluate=False)["train_seconds"]
            times[m].append((t[long] - t[short]) / (long - short))
    per_step = {m: round(statistics.median(v), 5) for m, v in times.items()}
    ref = per_step["same-tokenizer KD"]
    return {"seconds_per_step": per_step, "relative_to_same_tokenizer_kd": {m: round(v / ref, 3) for m, v in per_step.items()},
            "all_seconds_per_step": {m: [round(x, 5) for x in v] for m, v in times.items()},
            "how": f"(time of {long} steps - time of {short} steps) / {long - short}, methods interleaved, "
                   f"median of {reps} repeats, one thread, live teachers"}


def print_table(runs) -> None:
    cols = [PRIMARY, "judge_char_teacher_bpc", "judge_bpe_teacher_bpc", "seconds_per_step"]
    print(f"\n{'method':<32}" + "".join(f"{c:>26}" for c in cols))
    for m in dict.fromkeys(r["method"] for r in runs):
        cells = []
        for c in cols:
            s = summarise([r for r in runs if r["method"] == m], c).get(m)
            cells.append(f"{s['mean']:>16.4f} ± {s['std']:<7.4f}" if s else f"{'-':>26}")
        print(f"{m:<32}" + "".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, short runs, direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="student steps (default 300; quick: 60)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--small-fraction", type=float, default=0.1)
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    ap.add_argument("--out", type=Path, default=RESULTS / "cross_tokenizer.json")
    ap.add_argument("--cost-only", action="store_true",
                    help="measure only the cost per step (step_cost) and store it, with this command, in --out's "
                         "\"cost\"")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if a.cost_only:
        import json

        cost = step_cost(load(a.small_fraction), METHODS)
        cost.update(command=command(), machine=machine(1))
        update_results(a.out, cost=cost)
        print(json.dumps(cost, indent=1))
        return
    steps = a.steps or (60 if a.quick else 300)
    seeds = [0] if a.quick else a.seeds
    methods = a.methods or (["hard labels", "ULD", "align", "same-tokenizer KD"] if a.quick else METHODS)
    ctx = load(a.small_fraction)
    if a.quick:
        ctx["held"] = ctx["held"][:100]
    dk = ctx["dk"]
    teachers = {"char teacher (lm-teacher)": (ctx["char"], ctx["char_tok"]),
                "BPE teacher (gpt2-pydoc)": (ctx["bpe"], ctx["bpe_tok"])}
    teacher_rows = [{"seed": None, "method": name, "params": dk.count_parameters(m),
                     PRIMARY: round(dk.bits_per_character(m, t, ctx["held"]), 4)} for name, (m, t) in teachers.items()]
    for r in teacher_rows:
        print(f"{r['method']}: {r['params']:,} params, held-out {r[PRIMARY]:.4f} bits/char")
    runs = list(teacher_rows)
    for seed in seeds:
        for m in methods:
            runs.append(run(ctx, m, seed, steps, a.lr))
            r = runs[-1]
            print(f"seed {seed} {m:<30} {r[PRIMARY]:.4f} bits/char  judges {r['judge_char_teacher_bpc']:.3f} / "
                  f"{r['judge_bpe_teacher_bpc']:.3f}  {r['seconds_per_step']:.3f} s/step", flush=True)
    print_table([r for r in runs if r["seed"] is not None])
    student_runs = [r for r in runs if r["seed"] is not None]
    ref = summarise(student_runs, "seconds_per_step")["same-tokenizer KD"]["mean"]
    cost = {m: round(s["mean"] / ref, 3) for m, s in summarise(student_runs, "seconds_per_step").items()}
    print("\ncost per step relative to same-tokenizer KD:", cost)
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(all(math.isfinite(r[PRIMARY]) for r in runs), "every bits-per-character value is finite", problems)
        check(by["same-tokenizer KD"][PRIMARY] < by["hard labels"][PRIMARY],
              "same-tokenizer KD beats hard labels on held-out bits per character", problems)
        check(by["align"]["positions"]["aligned"] > 0 and by["align"]["positions"]["paired"] > 0,
              "align finds both aligned and paired (ULD) positions", problems)
        check(by["char teacher (lm-teacher)"][PRIMARY] < by["hard labels"][PRIMARY],
              "the character-level teacher beats the hard-label student", problems)
        sys.exit(1 if problems else 0)
    comparisons = [("align", "hard labels"), ("ULD", "hard labels"), ("teacher text (sequence-level)", "hard labels"),
                   ("same-tokenizer KD", "hard labels"), ("align", "ULD"), ("same-tokenizer KD", "align"),
                   ("align", "teacher text (sequence-level)")]
    metrics = (PRIMARY, "judge_char_teacher_bpc", "judge_bpe_teacher_bpc")
    pairs = [paired(student_runs, x, y, m) for m in metrics for x, y in comparisons]
    for p in pairs:
        if p["metric"] == PRIMARY:
            print(f"{p['a']} - {p['b']}: {p['mean']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] {p['verdict']}")
    write_results(a.out, seeds, runs, primary_metric=PRIMARY,
                  primary_metric_definition="held-out total NLL in bits / characters scored (fixed before running)",
                  summary={m: summarise(student_runs, m) for m in (*metrics, "seconds_per_step")},
                  paired=pairs, cost_per_step_vs_same_tokenizer_kd=cost,
                  setup={"steps": steps, "lr": a.lr, "batch_size": 32, "window_chars": WINDOW,
                         "small_fraction": a.small_fraction, "train_windows": len(ctx["train"]),
                         "held_out_windows": len(ctx["held"]), "alpha": 0.5, "temperature": 1.0,
                         "prompt_chars": PROMPT, "sampled_chars": NEW, "samples": SAMPLES,
                         "student": "lm-student (1 layer, d=64), characters",
                         "cross_teacher": "gpt2-pydoc (HF GPT-2, 1,024 BPE tokens)",
                         "same_teacher": "lm-teacher (6 layers, d=128, characters)"})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
