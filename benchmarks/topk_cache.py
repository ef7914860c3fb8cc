"""Offline KD from a top-k teacher cache vs a live teacher, on the data-to-text task.

    python benchmarks/topk_cache.py --quick                       # CI: seconds, no file
    nice python benchmarks/topk_cache.py --work runs/topk         # full: k 1 8 32 128, 5 seeds

Set-up: chapter 4's recipe. The shipped ``d2t-teacher`` and a fresh ``d2t-student``; the
training examples are the 400 labelled pairs plus the teacher's greedy descriptions of 3,000
unlabelled transfer inputs. For every k the teacher runs once and writes a float16 cache
(:func:`distilkit.cache_teacher_logits`); each student is then trained with ``dk.distill``
either from the cache (no teacher in memory) or from the live teacher (full logits), with
``alpha = 1`` (the teacher's signal alone, so whatever the cache drops shows), T = 1.

**The rule, fixed before the runs.** Every student gets the same budget: at most
``--max-steps`` steps of 64 examples at learning rate 0.01 (the rate ``controls.py`` chose on
validation data for word + seq KD on these inputs), a checkpoint every ``--every`` steps, and
the checkpoint with the lowest validation NLL (the 200 validation pairs; ties: the earlier
one). A seed fixes the student's initial weights and the batch order, the same for every arm.

* Primary metric: **test NLL** (nats per token of the 8 x 400 test references, teacher
  forcing); a cache is meant to lose nothing, so the claim is *no difference*, decided by two
  one-sided tests against the margin ``MARGINS["test_nll"]`` = 0.02 nats (a 2% change in
  perplexity), fixed before the runs.
* Secondary: greedy test BLEU (400 inputs, 8 references), margin 1.0 BLEU; slot errors.
* Each cache size is compared with the live teacher (``COMPARISONS``), paired by seed.

Per run: cache bytes per target token, training CPU seconds (each process uses one thread,
so CPU time is not inflated by a busy machine; the speed-up is live / cache CPU time), the
process's peak resident memory growth, the validation curve and the selected checkpoint.
Every run is its own process; with ``--work`` the caches and each finished run are kept
there, so an interrupted run resumes where it stopped.
"""
import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's distilkit, installed or not
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import check, paired_comparisons, write_results  # noqa: E402

PRIMARY_METRIC = "test_nll"
MARGINS = {"test_nll": 0.02, "test_bleu": 1.0}  # fixed before the runs; see the docstring
LR = 0.01


def comparisons(ks) -> list:
    """Every cache size against the live teacher, on the primary and the secondary metric."""
    return [{"a": f"cache k={k}", "b": "live", "metric": m, "margin": MARGINS[m],
             "higher_is_better": m == "test_bleu", "primary": m == PRIMARY_METRIC}
            for k in ks for m in ("test_nll", "test_bleu")]


def arm(method: str, k) -> str:
    return "live" if method == "live" else f"cache k={k}"


# ---------------------------------------------------------------------------- one run (child)
def run_one(work: Path, method: str, k: int, seed: int, a) -> dict:
    import torch

    import distilkit as dk
    from distilkit.checkpoint import read_checkpoint
    from distilkit.data import linearize_mr, load_tokenizer
    from distilkit.training.resume import checkpoint_files

    torch.set_num_threads(1)
    spec = json.loads((work / "examples.json").read_text())
    train_ex = [tuple(p) for p in spec["train"]]
    valid_ex = [tuple(p) for p in spec["valid"]]
    test_ex = [tuple(p) for p in spec["test_pairs"]]
    tok = load_tokenizer(work / "tokenizer.json")
    kd = dk.KDConfig(temperature=1.0, alpha=spec["alpha"])
    folder = Path(tempfile.mkdtemp(prefix="dk-topk-"))
    cfg = dk.TrainConfig(steps=a.max_steps, batch_size=a.batch_size, lr=LR,
                         warmup_steps=min(50, a.max_steps // 5), seed=seed, progress=False, device="cpu",
                         checkpoint_dir=str(folder), checkpoint_every=a.every,
                         keep_checkpoints=a.max_steps // a.every + 1, resume=False)
    torch.manual_seed(seed)
    student = dk.make_model("d2t-student", len(tok))
    source = dk.load_teacher("d2t-teacher")[0] if method == "live" else dk.load_teacher_cache(work / f"cache-k{k}")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, cpu = time.perf_counter(), time.process_time()
    try:
        dk.distill(student, source, train_ex, kd=kd, config=cfg)
        seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        curve, best = [], None
        for step, path in checkpoint_files(folder):  # choose on validation data only
            tensors, _ = read_checkpoint(path)
            student.load_state_dict({n[6:]: v for n, v in tensors.items() if n.startswith("model.")})
            nll = math.log(dk.perplexity(student, valid_ex))
            curve.append([step, round(nll, 5)])
            if best is None or nll < best[1]:
                best = (step, nll, {n: v.clone() for n, v in student.state_dict().items()})
        student.load_state_dict(best[2])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    items = [(mr, refs) for mr, refs in spec["test"][: a.test_items]]
    data = type("Split", (), {})()
    data.test, data.tokenizer = items, tok
    data.encode_inputs = lambda mrs: [tok.encode(linearize_mr(mr)) for mr in mrs]
    scores = dk.bleu_and_ser(student, data, "test")
    test_nll = math.log(dk.perplexity(student, test_ex))
    return {"seed": seed, "method": arm(method, k), "top_k": k if method == "cache" else None,
            "params": dk.count_parameters(student), "lr": LR,
            "train_seconds": round(seconds, 2), "train_cpu_seconds": round(cpu_seconds, 2),
            "steps_per_cpu_s": round(a.max_steps / cpu_seconds, 3),
            "peak_rss_growth_mib": round((peak - base) / 1024, 1),
            "valid_curve": curve, "selected_step": best[0], "valid_nll": round(best[1], 5),
            "test_nll": round(test_nll, 5), "test_perplexity": round(math.exp(test_nll), 4),
            "test_bleu": round(scores["bleu"], 2), "test_slot_error_rate": round(scores["slot_error_rate"], 4)}


# ---------------------------------------------------------------------------- set-up (parent)
def prepare(work: Path, num_transfer: int, ks, alpha: float) -> dict:
    """The examples, the tokenizer and one cache per k, in ``work``; kept there for a rerun."""
    done = work / "setup.json"
    if done.is_file():
        setup = json.loads(done.read_text())
        if setup["transfer_inputs"] == num_transfer and setup["alpha"] == alpha \
                and sorted(map(int, setup["caches"])) == sorted(ks):
            print(f"reusing the examples and caches in {work}")
            return setup
        raise SystemExit(f"--work {work} holds another set-up ({done}); give an empty folder")
    import torch

    import distilkit as dk
    from distilkit.experiments import transfer_set

    torch.set_num_threads(1)
    data = dk.make_data_to_text(seed=0)
    teacher, tok, _ = dk.load_teacher("d2t-teacher")
    if tok != data.tokenizer:
        raise SystemExit("the shipped teacher's tokenizer differs from the task's; retrain it")
    train_ex = data.encode_pairs(data.train) + transfer_set(teacher, data, num_transfer, progress=False)
    test_pairs = data.encode_pairs([(mr, ref) for mr, refs in data.test for ref in refs])
    tok.save(work / "tokenizer.json")
    (work / "examples.json").write_text(json.dumps({
        "train": train_ex, "valid": data.encode_pairs(data.valid), "test": data.test,
        "test_pairs": test_pairs, "alpha": alpha}))
    caches = {}
    for k in ks:
        t = time.perf_counter()
        cache = dk.cache_teacher_logits(teacher, train_ex, work / f"cache-k{k}", top_k=k,
                                        batch_size=128, progress=False)
        caches[str(k)] = {"bytes_per_token": round(cache.bytes_per_token, 2), "num_tokens": cache.num_tokens,
                          "write_seconds": round(time.perf_counter() - t, 2), "nbytes": cache.nbytes}
        print(f"cache k={k:>3}: {cache.num_tokens} tokens, {cache.bytes_per_token:.1f} bytes/token, "
              f"written in {caches[str(k)]['write_seconds']:.1f} s", flush=True)
    vocab = len(tok)
    setup = {"vocab_size": vocab, "train_examples": len(train_ex), "labelled_pairs": len(data.train),
             "transfer_inputs": num_transfer, "valid_pairs": len(data.valid),
             "test_reference_pairs": len(test_pairs), "alpha": alpha, "caches": caches,
             "full_logits_bytes_per_token_fp16": 2 * vocab, "full_logits_bytes_per_token_fp32": 4 * vocab}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(setup, indent=1))
    os.replace(tmp, done)
    return setup


def _child(a, work: Path, method: str, k: int, seed: int) -> dict:
    """One run in its own process; its result is kept in ``work/runs`` (atomically) and read
    back instead of rerun."""
    kept = work / "runs" / f"{arm(method, k).replace(' ', '_')}-s{seed}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    cmd = [sys.executable, __file__, "--child", str(work), method, str(k), str(seed),
           "--max-steps", str(a.max_steps), "--every", str(a.every), "--batch-size", str(a.batch_size),
           "--test-items", str(a.test_items)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{method} k={k} seed={seed} failed:\n{out.stderr[-3000:]}")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_suffix(".tmp")
    tmp.write_text(json.dumps(run))
    os.replace(tmp, kept)
    print(f"seed {seed} {arm(method, k):<12} step {run['selected_step']:>4}  test NLL {run['test_nll']:.4f}  "
          f"BLEU {run['test_bleu']:6.2f}  SER {run['test_slot_error_rate']:.3f}  "
          f"{run['train_cpu_seconds']:6.1f} CPU s", flush=True)
    return run


def paired(runs, seeds, ks) -> list:
    """The planned comparisons, paired by seed (``distilkit.stats.compare``, unadjusted)."""
    return paired_comparisons(runs, seeds, comparisons(ks))


def _summary(runs, setup) -> list:
    rows = []
    methods = list(dict.fromkeys(r["method"] for r in sorted(runs, key=lambda r: (r["top_k"] or 0))))
    live_speed = statistics.mean(r["steps_per_cpu_s"] for r in runs if r["method"] == "live")
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        k = rs[0]["top_k"]
        row = {"method": method, "top_k": k, "n": len(rs)}
        for m in ("test_nll", "test_perplexity", "test_bleu", "test_slot_error_rate", "selected_step",
                  "steps_per_cpu_s", "peak_rss_growth_mib"):
            vals = [r[m] for r in rs]
            row[m] = [round(statistics.mean(vals), 4), round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0]
        row["speedup_vs_live"] = round(row["steps_per_cpu_s"][0] / live_speed, 2)
        row["bytes_per_token"] = setup["caches"][str(k)]["bytes_per_token"] if k else None
        rows.append(row)
    return rows


def _print(rows, pairs, setup) -> None:
    print(f"\nvocab {setup['vocab_size']}; full logits would take {setup['full_logits_bytes_per_token_fp16']} "
          f"bytes/token (fp16)")
    print(f"{'teacher signal':<14}{'bytes/tok':>10}{'speed-up':>10}{'test NLL':>18}{'test BLEU':>16}{'step':>8}")
    for r in rows:
        bpt = "-" if r["bytes_per_token"] is None else f"{r['bytes_per_token']:.1f}"
        print(f"{r['method']:<14}{bpt:>10}{r['speedup_vs_live']:>9.2f}x"
              f"{r['test_nll'][0]:>11.4f} ± {r['test_nll'][1]:.4f}{r['test_bleu'][0]:>9.2f} ± {r['test_bleu'][1]:.2f}"
              f"{r['selected_step'][0]:>8.0f}")
    print("\npaired by seed, A - B, 95% interval; 'no difference' needs the 90% interval inside the margin")
    for p in pairs:
        print(f"{p['a']:<12} - {p['b']:<5} {p['metric']:<10} {p['diff']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]"
              f"  margin {p['margin']}  {p['verdict']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke run: k 1 8, two seeds, a few steps, no file")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100, help="checkpoint interval (validation NLL)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--transfer", type=int, default=3000, help="teacher-labelled transfer inputs")
    ap.add_argument("--alpha", type=float, default=1.0, help="KD weight (1 = the teacher signal alone)")
    ap.add_argument("--test-items", type=int, default=400, help="test MRs decoded for BLEU")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    ap.add_argument("--work", help="keep the caches and finished runs here (resumable); default: a temporary folder")
    ap.add_argument("--out", help="write the JSON here (full runs: results/topk_cache.json)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        work, method, k, seed = a.child
        print(json.dumps(run_one(Path(work), method, int(k), int(seed), a)))
        return
    if a.quick:
        a.seeds, a.ks, a.max_steps, a.every, a.batch_size = [0, 1], [1, 8], 8, 4, 16
        a.transfer, a.test_items, a.out = 20, 20, None
    elif a.out is None:
        a.out = str(ROOT / "results" / "topk_cache.json")
    if len(a.seeds) < 2:
        raise SystemExit(f"--seeds: the paired comparisons need >= 2 seeds, got {a.seeds}")
    if a.max_steps % a.every:
        raise SystemExit(f"--max-steps ({a.max_steps}) must be a multiple of --every ({a.every})")
    t0 = time.perf_counter()
    tmp = None if a.work else tempfile.TemporaryDirectory(prefix="topk_cache_")
    work = Path(a.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        setup = prepare(work, a.transfer, a.ks, a.alpha)
        jobs = [(m, k, s) for s in a.seeds for m, k in [("live", 0)] + [("cache", k) for k in a.ks]]
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            runs = list(pool.map(lambda j: _child(a, work, *j), jobs))
    finally:
        if tmp is not None:
            tmp.cleanup()
    pairs = paired(runs, a.seeds, a.ks)
    rows = _summary(runs, setup)
    _print(rows, pairs, setup)
    if a.quick:  # the mechanism at any budget: more of the teacher kept, closer to the live teacher
        by = {(r["method"], r["seed"]): r for r in runs}
        gap = {k: [abs(by[f"cache k={k}", s]["test_nll"] - by["live", s]["test_nll"]) for s in a.seeds]
               for k in (1, 8)}
        problems: list = []
        check(max(gap[8]) < min(gap[1]), "a top-8 cache's student is closer to the live one than a top-1's",
              problems)
        check(all(by["cache k=1", s]["test_nll"] > by["live", s]["test_nll"] for s in a.seeds),
              "a top-1 cache (the teacher's top token alone) teaches less than the live teacher", problems)
        check(all(abs(c["bytes_per_token"] - (4 * int(k) + 4)) < 1 for k, c in setup["caches"].items()),
              "a cache costs 4 bytes per kept entry plus 4 per token", problems)
        check(all(r["selected_step"] in [s for s, _ in r["valid_curve"]] for r in runs),
              "every run's checkpoint is one of its validation checks", problems)
        if problems:
            raise SystemExit(1)
        return
    setup = {**setup, "teacher": "d2t-teacher (shipped)", "student": "d2t-student", "max_steps": a.max_steps,
             "every": a.every, "batch_size": a.batch_size, "lr": LR, "temperature": 1.0, "cache_dtype": "float16",
             "test_items": a.test_items, "selection": "lowest validation NLL among the checkpoints (earliest on ties)",
             "wall_seconds": round(time.perf_counter() - t0, 1)}
    write_results(Path(a.out), a.seeds, runs, threads=1, setup=setup, primary_metric=PRIMARY_METRIC,
                  margins=MARGINS, comparisons=comparisons(a.ks), paired=pairs, summary=rows)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
