"""Distilling a character-level language model: which divergence, off- or on-policy.

    python benchmarks/lm_divergences.py --quick     # CI: one seed, short runs, direction checks
    nice python benchmarks/lm_divergences.py        # full: seeds 0 1 2 -> results/lm_divergences.json

Set-up: the shipped ``lm-teacher`` (``scripts/train_checkpoints.py --only lm``: 6 layers, d=128,
trained on the first 90% of ``load_text_corpus()``) and fresh ``lm-student`` models (1 layer,
d=64). Each student sees only the first 10% of the training text (the regime where a teacher
that read all of it has something to give); the control "hard labels (all text)" gives the
student the whole 90% with hard labels instead -- more human data, no teacher.

Methods (alpha = 1: the divergence alone, T = 1, teacher logits cached once in float16 for the
off-policy ones): forward KL, reverse KL, JSD(0.5), total variation, skew forward KL(0.1),
and on-policy JSD(0.5) with GKD's lambda = 0.5 (half the batches are the student's own
continuations of the window's first half, scored by the live teacher).

Per (method, seed): held-out perplexity (teacher forcing on the last 10% of the text); the
teacher's per-character NLL of the student's samples (32 held-out prompts of 16 characters,
48 sampled characters at temperature 1 -- 64 in all, the models' training window); distinct-2
(distinct word bigrams / all bigrams over the samples) and self-BLEU (Texygen's: the mean
sentence BLEU of each sample against the other 31), each the mean over three sampling draws
whose seeds (``DRAWS``) are the same for every method and every training seed, so sampling
noise does not ride on the training seed; training wall and CPU seconds. Rows "teacher" and "held-out text" give the same
sample metrics for the teacher's own samples and for the real continuations.

Decoding speed of the pair, measured in one run: greedy with the KV cache, 100 new tokens,
batch 1 (5 prompts one at a time) and batch 32, teacher and student interleaved, median of
3 repeats.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import RESULTS, check, command, machine, merge_results, summarise, update_results, write_results  # noqa: E402

OFF_POLICY = {
    "forward KL": dict(divergence="forward_kl"),
    "reverse KL": dict(divergence="reverse_kl"),
    "JSD(0.5)": dict(divergence="jsd", beta=0.5),
    "TVD": dict(divergence="tvd"),
    "skew KL(0.1)": dict(divergence="skew_forward_kl", beta=0.1),
}
ON_POLICY = {"on-policy JSD(0.5)": dict(divergence="jsd", beta=0.5)}
HARD = {"hard labels (10% text)": "small", "hard labels (all text)": "all"}
METHODS = [*HARD, *OFF_POLICY, *ON_POLICY]
# chapter 8's findings, fixed before the runs: (A, B, the metrics of the claim's parts, the claim);
# primary metric: held-out perplexity, with the teacher's NLL of samples where the claim is about them
COMPARISONS = [
    ("forward KL", "hard labels (10% text)", ["perplexity", "teacher_nll"], "KD beats hard labels on the same text"),
    ("forward KL", "hard labels (all text)", ["perplexity"], "KD on 10% of the text against hard labels on all"),
    ("reverse KL", "forward KL", ["teacher_nll", "perplexity"],
     "MiniLLM: better samples (teacher NLL) at the price of perplexity"),
    ("on-policy JSD(0.5)", "JSD(0.5)", ["perplexity", "teacher_nll"], "GKD: on-policy beats off-policy"),
]
PROMPT, NEW, SAMPLES = 16, 48, 32  # 64 characters: no position beyond the training window
DRAWS = (10_000, 10_001, 10_002)  # sampling seeds, the same for every training seed and method


def load(block: int, small_fraction: float, teacher_path=None):
    import distilkit as dk

    teacher, tok, meta = dk.load_teacher("lm-teacher", path=teacher_path)
    teacher.eval()
    text = dk.load_text_corpus()
    split = int(0.9 * len(text))
    train_ids, held_ids = tok.encode(text[:split]), tok.encode(text[split:])
    small = dk.lm_examples(train_ids[: int(small_fraction * len(train_ids))], block)
    return {
        "dk": dk, "teacher": teacher, "tok": tok, "meta": meta, "block": block,
        "small": small, "all": dk.lm_examples(train_ids, block),
        "held": dk.lm_examples(held_ids, block)[:400],
        # prompts: evenly spaced held-out windows; the next NEW characters are the real text
        "prompts": [held_ids[i: i + PROMPT + NEW]
                    for i in range(0, len(held_ids) - PROMPT - NEW, (len(held_ids) - PROMPT - NEW) // SAMPLES)
                    ][:SAMPLES],
    }


def sample_metrics(ctx, model, seed: int, draws=None) -> dict:
    """Samples of ``model`` from the shared prompts, scored by the teacher and for diversity.

    ``draws``: sampling seeds, the same for every model and training seed (the sampling noise
    is then independent of the training seed); each metric is the mean over the draws, and
    the stored samples are the first draw's. None: one draw with seed 1000 + ``seed`` (the
    older scripts' rule)."""
    import torch

    dk, tok, teacher = ctx["dk"], ctx["tok"], ctx["teacher"]
    prompts = [p[:PROMPT] for p in ctx["prompts"]]
    draws = [1000 + seed] if draws is None else list(draws)
    scores, first = [], None
    for draw in ([None] if model is None else draws):
        if model is None:  # the real continuations
            conts = [p[PROMPT:] for p in ctx["prompts"]]
        else:
            g = torch.Generator().manual_seed(draw)
            conts = dk.sample(model, prompts, max_new_tokens=NEW, temperature=1.0, generator=g)
        windows = [p + c for p, c in zip(prompts, conts) if c]
        batch = dk.collate_lm(windows)
        batch.labels[:, : PROMPT - 1] = dk.IGNORE_INDEX  # score the continuation only
        with torch.no_grad():
            logits = teacher(batch)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                batch.labels.reshape(-1), ignore_index=dk.IGNORE_INDEX)
        texts = [tok.decode(c) for c in conts]
        bigrams, distinct = 0, set()
        for t in texts:
            words = t.split()
            pairs = list(zip(words, words[1:]))
            bigrams += len(pairs)
            distinct.update(pairs)
        # self-BLEU: the mean sentence BLEU of each sample against the others (Texygen)
        scores.append((float(nll), len(distinct) / max(bigrams, 1), dk.self_bleu(texts)))
        first = first or [tok.decode(prompts[i]) + " || " + texts[i] for i in range(3)]
    nll, d2, sb = (statistics.fmean(v) for v in zip(*scores))
    return {"teacher_nll": round(nll, 4), "distinct_2": round(d2, 4), "self_bleu": round(sb, 2), "samples": first}


def cached_logits(ctx, teacher=None, key: str = "shipped"):
    """The student's training windows (``ctx["small"]``) with ``teacher``'s logits (default: the
    shipped teacher), computed once per ``key``."""
    cache = ctx.setdefault("cached_by", {})
    if key not in cache:
        cache[key] = ctx["dk"].precompute_teacher_logits(ctx["teacher"] if teacher is None else teacher,
                                                         ctx["small"], progress=False)
    return cache[key]


def train_lm_student(ctx, seed: int, steps: int, lr: float, examples, targets=None):
    """A fresh ``lm-student`` (weights from ``seed``) trained by the recipe every language-model
    benchmark shares: batches of 32 windows, warm-up min(100, steps / 5), the last step's weights.
    ``targets`` as for ``dk.train`` (None: hard labels). Returns (student, wall s, CPU s)."""
    import torch

    dk = ctx["dk"]
    cfg = dk.TrainConfig(steps=steps, batch_size=32, lr=lr, warmup_steps=min(100, steps // 5), seed=seed,
                         progress=False, device="cpu", restore_best=False)
    torch.manual_seed(seed)
    student = dk.make_model("lm-student", len(ctx["tok"]))
    t, cpu = time.perf_counter(), time.process_time()
    dk.train(student, examples, config=cfg, targets=targets)
    return student, time.perf_counter() - t, time.process_time() - cpu


def run(ctx, method: str, seed: int, steps: int, lr: float) -> dict:
    dk = ctx["dk"]
    if method in HARD:
        examples, targets = ctx[HARD[method]], None
    elif method in OFF_POLICY:
        kd = dk.KDConfig(alpha=1.0, temperature=1.0, **OFF_POLICY[method])
        examples, targets = cached_logits(ctx), dk.CachedTeacherLogits(kd)
    else:
        kd = dk.KDConfig(alpha=1.0, temperature=1.0, **ON_POLICY[method])
        examples, targets = ctx["small"], dk.OnPolicyTargets(ctx["teacher"], kd, lam=0.5)
    student, seconds, cpu_seconds = train_lm_student(ctx, seed, steps, lr, examples, targets)
    row = {"seed": seed, "method": method, "params": dk.count_parameters(student), "steps": steps,
           "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
           "perplexity": round(dk.perplexity(student, ctx["held"]), 4), **sample_metrics(ctx, student, seed, DRAWS)}
    ctx.setdefault("students", {})[method, seed] = student
    return row


def speed(ctx, student, reps: int = 7, new: int = 100) -> dict:
    """Greedy decoding speed of teacher and student, interleaved: each repeat times the teacher
    and then the student on the same prompts (batch 1: five prompts one at a time; batch 32), so
    a load that comes and goes hits both alike; the per-repeat ratio student / teacher is the
    paired measurement, its median the figure and its range the spread. The load average before
    and after says how quiet the machine was. ``profile``: per generated token at batch 1, the
    time inside the model's forward and the rest (the decoding loop's fixed cost per token,
    which no smaller student removes and which therefore caps the speed-up)."""
    import os

    import torch

    dk, teacher = ctx["dk"], ctx["teacher"]
    prompts = [p[:16] for p in ctx["prompts"]]
    times = {(who, b): [] for who in ("teacher", "student") for b in (1, 32)}
    load_before = os.getloadavg()
    for model in (teacher, student):  # warm-up
        model.eval()
        dk.greedy(model, prompts[:2], max_new_tokens=5, stop_at_eos=False)
    with torch.no_grad():
        for _ in range(reps):
            for who, model in (("teacher", teacher), ("student", student)):
                t = time.perf_counter()
                for p in prompts[:5]:
                    dk.greedy(model, [p], max_new_tokens=new, stop_at_eos=False)
                times[who, 1].append(5 * new / (time.perf_counter() - t))
                t = time.perf_counter()
                dk.greedy(model, prompts[:32], max_new_tokens=new, stop_at_eos=False)
                times[who, 32].append(32 * new / (time.perf_counter() - t))
        profile = {who: forward_share(dk, model, prompts[:5], new) for who, model in
                   (("teacher", teacher), ("student", student))}
    load_after = os.getloadavg()
    out = {f"{who}_tokens_per_s_batch{b}": round(statistics.median(v), 1) for (who, b), v in times.items()}
    for b in (1, 32):
        ratios = [s / t for s, t in zip(times["student", b], times["teacher", b])]
        out[f"speedup_batch{b}"] = round(statistics.median(ratios), 2)
        out[f"speedup_batch{b}_per_repeat"] = [round(r, 2) for r in ratios]
        out[f"speedup_batch{b}_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
    out.update(teacher_params=dk.count_parameters(teacher), student_params=dk.count_parameters(student),
               new_tokens=new, repeats=reps, all_tokens_per_s={f"{w} batch {b}": [round(x, 1) for x in v]
                                                               for (w, b), v in times.items()},
               load_average_before=[round(x, 2) for x in load_before],
               load_average_after=[round(x, 2) for x in load_after], profile_batch1=profile)
    t_ms, fixed_ms = profile["teacher"]["ms_per_token"], profile["student"]["other_ms_per_token"]
    out["speedup_batch1_cap"] = round(t_ms / fixed_ms, 1) if fixed_ms > 0 else None
    out["student_params_pct_of_teacher"] = round(100 * out["student_params"] / out["teacher_params"], 1)
    return out


def forward_share(dk, model, prompts, new: int) -> dict:
    """Per generated token at batch 1: all time, time inside the model's own ``start`` / ``step``
    (the forward passes greedy decoding calls; ``model.forward`` is not on that path), and the
    rest (the decoding loop's per-token cost)."""
    inside = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                inside[0] += time.perf_counter() - t0
        return wrapper

    model.start, model.step = timed(model.start), timed(model.step)  # instance attributes shadow the methods
    try:
        t = time.perf_counter()
        for p in prompts:
            dk.greedy(model, [p], max_new_tokens=new, stop_at_eos=False)
        total = time.perf_counter() - t
    finally:
        del model.start, model.step
    if inside[0] == 0.0:
        raise RuntimeError("the profile saw no time inside start/step: greedy did not call them")
    n = len(prompts) * new
    return {"ms_per_token": round(1000 * total / n, 3), "forward_ms_per_token": round(1000 * inside[0] / n, 3),
            "other_ms_per_token": round(1000 * (total - inside[0]) / n, 3)}


def print_table(runs) -> None:
    cols = ["perplexity", "teacher_nll", "distinct_2", "self_bleu", "train_seconds"]
    print(f"\n{'method':<26}" + "".join(f"{c:>22}" for c in cols))
    for m in dict.fromkeys(r["method"] for r in runs):
        cells = []
        for c in cols:
            s = summarise([r for r in runs if r["method"] == m], c).get(m)
            cells.append(f"{s['mean']:>12.3f} ± {s['std']:<7.3f}" if s else f"{'-':>22}")
        print(f"{m:<26}" + "".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, short runs, direction checks; writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None,
                    help="student steps (default 500; quick: 300, and 30 for the on-policy student, "
                         "which the quick checks only run)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--small-fraction", type=float, default=0.1)
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (default: the shipped lm-teacher)")
    ap.add_argument("--out", type=Path, default=RESULTS / "lm_divergences.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                    help="combine results files of single-seed runs (same set-up) into --out; the "
                         "speed measurement is the first file's")
    ap.add_argument("--speed-only", action="store_true",
                    help="measure only the decoding speed (a fresh lm-student: the speed does not depend "
                         "on the weights) and store it, with this command, in --out's \"speed\"")
    ap.add_argument("--no-speed", action="store_true",
                    help="skip the decoding speed (for per-seed runs on a busy machine; measure it with "
                         "--speed-only on a quiet one)")
    a = ap.parse_args()
    if a.speed_only:
        import json

        import torch

        torch.set_num_threads(a.threads)
        ctx = load(a.block, a.small_fraction, a.teacher)
        torch.manual_seed(0)
        spd = speed(ctx, ctx["dk"].make_model("lm-student", len(ctx["tok"])))
        spd.update(command=command(), machine=machine(a.threads))
        update_results(a.out, speed=spd)
        print(json.dumps(spd, indent=1))
        return
    if a.merge:
        doc = merge_results(a.merge, a.out, ("perplexity", "teacher_nll", "distinct_2", "self_bleu"),
                            first=("speed", "primary_metric", "comparisons"))
        print_table(doc["runs"])
        print(f"wrote {a.out} ({len(doc['seeds'])} seeds)")
        return
    import torch

    torch.set_num_threads(a.threads)
    steps = a.steps or (300 if a.quick else 500)
    seeds = [0] if a.quick else a.seeds
    methods = a.methods or (["hard labels (10% text)", "forward KL", "on-policy JSD(0.5)"] if a.quick else METHODS)
    ctx = load(a.block, a.small_fraction, a.teacher)
    dk = ctx["dk"]
    teacher_ppl = dk.perplexity(ctx["teacher"], ctx["held"])
    print(f"teacher {dk.count_parameters(ctx['teacher']):,} params, held-out perplexity {teacher_ppl:.3f}; "
          f"student windows {len(ctx['small'])} (10% text) / {len(ctx['all'])} (all)")
    runs = []
    for seed in seeds:
        runs.append({"seed": seed, "method": "held-out text", **sample_metrics(ctx, None, seed, DRAWS)})
        runs.append({"seed": seed, "method": "teacher", "params": dk.count_parameters(ctx["teacher"]),
                     "perplexity": round(teacher_ppl, 4), **sample_metrics(ctx, ctx["teacher"], seed, DRAWS)})
        for m in methods:
            # quick mode: the on-policy student (sampling at every other step) only has to run
            runs.append(run(ctx, m, seed, min(steps, 30) if a.quick and m in ON_POLICY else steps, a.lr))
            r = runs[-1]
            print(f"seed {seed} {m:<24} ppl {r['perplexity']:.3f}  teacher NLL {r['teacher_nll']:.3f}  "
                  f"distinct-2 {r['distinct_2']:.3f}  self-BLEU {r['self_bleu']:.1f}  {r['steps']} steps  "
                  f"{r['train_seconds']:.0f} s", flush=True)
    ref = next(m for m in ("forward KL", *methods) if (m, seeds[0]) in ctx["students"])
    spd = None if a.no_speed and not a.quick else speed(ctx, ctx["students"][ref, seeds[0]], reps=1 if a.quick else 7,
                                                        new=30 if a.quick else 100)
    print_table(runs)
    if spd is not None:
        print(f"\ndecoding (greedy, KV cache): student {spd['student_params_pct_of_teacher']}% of the teacher's "
              f"parameters; speed-up {spd['speedup_batch1']}x at batch 1, {spd['speedup_batch32']}x at batch 32")
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(all(math.isfinite(r.get("perplexity", 0.0)) and math.isfinite(r["teacher_nll"]) for r in runs),
              "every metric is finite", problems)
        check(teacher_ppl < by["hard labels (10% text)"]["perplexity"],
              "the teacher beats the hard-label student on held-out perplexity", problems)
        check(by["forward KL"]["perplexity"] < by["hard labels (10% text)"]["perplexity"],
              "forward-KL KD beats hard labels on the same 10% of the text", problems)
        check(spd["speedup_batch1"] > 1.0, "the student decodes faster than the teacher at batch 1", problems)
        sys.exit(1 if problems else 0)
    summary = {k: summarise(runs, k) for k in ("perplexity", "teacher_nll", "distinct_2", "self_bleu")}
    write_results(a.out, seeds, runs, threads=a.threads, **({} if spd is None else {"speed": spd}), summary=summary,
                  primary_metric="perplexity",
                  comparisons=[{"a": x, "b": y, "metrics": m, "claim": c} for x, y, m, c in COMPARISONS],
                  setup={"steps": steps, "lr": a.lr, "block": a.block, "batch_size": 32,
                         "small_fraction": a.small_fraction, "small_windows": len(ctx["small"]),
                         "all_windows": len(ctx["all"]), "held_out_windows": len(ctx["held"]),
                         "teacher": ctx["meta"].get("extra", {}).get("info", {}),
                         "prompt_chars": PROMPT, "sampled_chars": NEW, "samples": SAMPLES})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
