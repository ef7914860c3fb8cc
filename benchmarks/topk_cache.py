"""Offline KD from a top-k teacher cache vs a live teacher, on the data-to-text task.

    python benchmarks/topk_cache.py --quick                # CI smoke run: seconds, no file
    nice python benchmarks/topk_cache.py                   # full: k in 1 8 32 128, 3 seeds
    nice python benchmarks/topk_cache.py --seeds 0 1 2 3 --steps 300 --out results/topk_cache.json

Set-up: the shipped d2t teacher (``distilkit/checkpoints/d2t-teacher.safetensors``) and a
fresh ``d2t-student``; the training examples are the labelled pairs plus teacher-labelled
transfer inputs (the teacher's greedy outputs, as in chapter 4). For every k the teacher runs
once and writes a float16 cache (:func:`distilkit.cache_teacher_logits`); each student is then
trained with ``dk.distill`` either from the cache (no teacher in memory) or from the live
teacher (full logits). Every training run is its own process, so its peak memory is its own.

Printed and stored per run: cache bytes per target token, training time (wall and CPU
seconds; each process uses one thread, and the speed-up is taken from CPU time, which a
shared machine's load does not inflate), the process's peak resident memory, and the
student's quality -- held-out perplexity on the validation references and greedy BLEU /
slot error rate on the test split.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's distilkit, installed or not


# ---------------------------------------------------------------------------- one run (child)
def run_one(work: Path, method: str, k: int, seed: int, steps: int, batch_size: int,
            test_items: int) -> dict:
    import torch

    import distilkit as dk
    from distilkit.data import linearize_mr, load_tokenizer

    torch.set_num_threads(1)
    spec = json.loads((work / "examples.json").read_text())
    train_ex = [tuple(p) for p in spec["train"]]
    valid_ex = [tuple(p) for p in spec["valid"]]
    tok = load_tokenizer(work / "tokenizer.json")
    kd = dk.KDConfig(temperature=1.0, alpha=spec["alpha"])
    cfg = dk.TrainConfig(steps=steps, batch_size=batch_size, lr=3e-3, warmup_steps=min(50, steps // 5),
                         seed=seed, progress=False, device="cpu")
    torch.manual_seed(seed)
    student = dk.make_model("d2t-student", len(tok))
    if method == "live":
        teacher = dk.load_teacher("d2t-teacher")[0]
        source = teacher
    else:
        source = dk.load_teacher_cache(work / f"cache-k{k}")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, cpu = time.perf_counter(), time.process_time()
    dk.distill(student, source, train_ex, kd=kd, config=cfg)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    items = [(mr, refs) for mr, refs in spec["test"][:test_items]]
    data = type("Split", (), {})()
    data.test, data.tokenizer = items, tok
    data.encode_inputs = lambda mrs: [tok.encode(linearize_mr(mr)) for mr in mrs]
    scores = dk.bleu_and_ser(student, data, "test")
    return {"seed": seed, "method": method, "params": dk.count_parameters(student),
            "top_k": k if method == "cache" else None, "steps": steps, "batch_size": batch_size,
            "train_seconds": round(seconds, 2), "train_cpu_seconds": round(cpu_seconds, 2),
            "steps_per_cpu_s": round(steps / cpu_seconds, 3),
            "peak_rss_growth_mib": round((peak - base) / 1024, 1),
            "valid_perplexity": round(dk.perplexity(student, valid_ex), 4),
            "test_bleu": round(scores["bleu"], 2), "test_slot_error_rate": round(scores["slot_error_rate"], 4)}


# ---------------------------------------------------------------------------- set-up (parent)
def prepare(work: Path, num_transfer: int, ks, alpha: float) -> dict:
    import torch

    import distilkit as dk
    from distilkit.experiments import transfer_set

    torch.set_num_threads(1)
    data = dk.make_data_to_text(seed=0)
    teacher, tok, _ = dk.load_teacher("d2t-teacher")
    if tok != data.tokenizer:
        raise SystemExit("the shipped teacher's tokenizer differs from the task's; retrain it")
    train_ex = data.encode_pairs(data.train) + transfer_set(teacher, data, num_transfer, progress=False)
    tok.save(work / "tokenizer.json")
    (work / "examples.json").write_text(json.dumps({
        "train": train_ex, "valid": data.encode_pairs(data.valid), "test": data.test, "alpha": alpha}))
    caches = {}
    for k in ks:
        t = time.perf_counter()
        cache = dk.cache_teacher_logits(teacher, train_ex, work / f"cache-k{k}", top_k=k,
                                        batch_size=128, progress=False)
        caches[k] = {"bytes_per_token": round(cache.bytes_per_token, 2), "num_tokens": cache.num_tokens,
                     "write_seconds": round(time.perf_counter() - t, 2), "nbytes": cache.nbytes}
        print(f"cache k={k:>3}: {cache.num_tokens} tokens, {cache.bytes_per_token:.1f} bytes/token, "
              f"written in {caches[k]['write_seconds']:.1f} s", flush=True)
    vocab = len(tok)
    return {"vocab_size": vocab, "train_examples": len(train_ex), "caches": caches,
            "full_logits_bytes_per_token_fp16": 2 * vocab, "full_logits_bytes_per_token_fp32": 4 * vocab}


def _child(args, work, method, k, seed) -> dict:
    cmd = [sys.executable, __file__, "--child", str(work), method, str(k), str(seed),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--test-items", str(args.test_items)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{method} k={k} seed={seed} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs, setup) -> list:
    rows = []
    keys = sorted({(r["method"], r["top_k"] or 0) for r in runs}, key=lambda x: (x[0] != "live", x[1]))
    live_speed = statistics.mean(r["steps_per_cpu_s"] for r in runs if r["method"] == "live")
    for method, k in keys:
        rs = [r for r in runs if r["method"] == method and (r["top_k"] or 0) == k]
        row = {"method": method, "top_k": k or None, "n": len(rs)}
        for m in ("valid_perplexity", "test_bleu", "test_slot_error_rate", "steps_per_cpu_s", "peak_rss_growth_mib"):
            vals = [r[m] for r in rs]
            row[m] = [round(statistics.mean(vals), 4), round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0]
        row["speedup_vs_live"] = round(row["steps_per_cpu_s"][0] / live_speed, 2)
        row["bytes_per_token"] = setup["caches"][k]["bytes_per_token"] if method == "cache" else None
        rows.append(row)
    return rows


def _pm(row, metric, places) -> str:
    mean, std = row[metric]
    return f"{mean:.{places}f} ± {std:.{places}f}"


def _print(rows, setup) -> None:
    print(f"\nvocab {setup['vocab_size']}; full logits would take {setup['full_logits_bytes_per_token_fp16']} "
          f"bytes/token (fp16), {setup['full_logits_bytes_per_token_fp32']} (fp32)")
    print(f"{'method':<12}{'bytes/tok':>10}{'steps/cpu-s':>16}{'speed-up':>10}{'valid ppl':>18}"
          f"{'test BLEU':>16}{'SER':>16}")
    for r in rows:
        name = "live (full)" if r["method"] == "live" else f"cache k={r['top_k']}"
        bpt = "-" if r["bytes_per_token"] is None else f"{r['bytes_per_token']:.1f}"
        print(f"{name:<12}{bpt:>10}{_pm(r, 'steps_per_cpu_s', 2):>16}{r['speedup_vs_live']:>9.2f}x"
              f"{_pm(r, 'valid_perplexity', 3):>18}{_pm(r, 'test_bleu', 2):>16}"
              f"{_pm(r, 'test_slot_error_rate', 3):>16}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke run: k 1 8, one seed, a few steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--transfer", type=int, default=400, help="teacher-labelled transfer inputs")
    ap.add_argument("--alpha", type=float, default=1.0, help="KD weight (1 = the teacher signal alone)")
    ap.add_argument("--test-items", type=int, default=100, help="test MRs decoded for BLEU")
    ap.add_argument("--out", help="write the JSON here (full runs: results/topk_cache.json)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        work, method, k, seed = a.child
        print(json.dumps(run_one(Path(work), method, int(k), int(seed), a.steps, a.batch_size,
                                 a.test_items)))
        return
    if a.quick:
        a.seeds, a.ks, a.steps, a.transfer, a.test_items = [0], [1, 8], 4, 20, 20
    elif a.out is None:
        a.out = str(ROOT / "results" / "topk_cache.json")
    if len(a.seeds) < 3 and not a.quick:
        print("note: fewer than 3 seeds; the std is not meaningful", file=sys.stderr)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="topk_cache_") as tmp:
        work = Path(tmp)
        setup = prepare(work, a.transfer, a.ks, a.alpha)
        runs = []
        for seed in a.seeds:
            for method, k in [("live", 0)] + [("cache", k) for k in a.ks]:
                r = _child(a, work, method, k, seed)
                runs.append(r)
                print(f"seed {seed} {method:<5} k={k:<3} {r['train_seconds']:7.1f} s  "
                      f"ppl {r['valid_perplexity']:.3f}  BLEU {r['test_bleu']:.2f}  "
                      f"SER {r['test_slot_error_rate']:.3f}", flush=True)
    rows = _summary(runs, setup)
    _print(rows, setup)
    import torch

    result = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/topk_cache.py"] + sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
                   f"{platform.system()} {platform.release()}, 1 torch thread per process".replace("  ", " "),
        "torch": torch.__version__,
        "seeds": a.seeds,
        "setup": {**setup, "teacher": "d2t-teacher (shipped)", "student": "d2t-student",
                  "steps": a.steps, "batch_size": a.batch_size, "alpha": a.alpha, "temperature": 1.0,
                  "cache_dtype": "float16", "test_items": a.test_items,
                  "wall_seconds": round(time.perf_counter() - t0, 1)},
        "runs": runs,
        "summary": rows,
    }
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
