"""Peak memory, time and agreement of the distillation loss: plain PyTorch, distilkit's
``distillation_loss`` on materialised logits, and ``linear_distillation_loss`` from hidden states.

    python benchmarks/loss_memory.py                  # vocab 32k, hidden 512, 4,096 and 8,192 tokens, 3 repeats
    python benchmarks/loss_memory.py --quick          # small sizes, in-process: agreement only (CI)
    python benchmarks/loss_memory.py --tokens 2048 --vocab 8192 --hidden 256 --chunk 256 --json

Variants, each forward + backward of ``0.5 * KL(p || q) + 0.5 * CE`` (T = 1, every label counts),
with student logits ``hidden @ W.T`` and teacher logits from fixed teacher hidden states:

* ``reference`` -- plain PyTorch written inline: two matmuls, ``F.kl_div`` on two log-softmaxes,
  ``F.cross_entropy``;
* ``plain``     -- ``distillation_loss(hidden @ W.T, teacher_hidden @ W_t.T, labels)``;
* ``chunked``   -- ``linear_distillation_loss(hidden, W, None, (teacher_hidden, W_t, None), labels)``
  with its default settings (or ``--chunk``).

Each variant runs in a fresh subprocess (one thread). Peak memory is the growth of the child's
peak resident set (``ru_maxrss``) over its resident set once the inputs exist; time is the median
CPU time of ``--reps`` forward + backward passes (CPU time, not wall time: the machine is shared). The reference child stores its gradients, and the other
children report the largest absolute difference of theirs (w.r.t. the student's hidden states and
output weight) from them. Full mode writes ``results/loss_memory.json``.
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

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("reference", "plain", "chunked")


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(variant: str, tokens: int, vocab: int, hidden: int, chunk, reps: int, ref: str) -> dict:
    import torch
    import torch.nn.functional as F

    import distilkit as dk

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(tokens, hidden, generator=g).requires_grad_(True)
    ws = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).requires_grad_(True)
    ht = torch.randn(tokens, hidden, generator=g)
    wt = torch.randn(vocab, hidden, generator=g) * hidden**-0.5
    labels = torch.randint(0, vocab, (tokens,), generator=g)

    def reference():
        student_logits, teacher_logits = hs @ ws.T, ht @ wt.T
        log_q = F.log_softmax(student_logits, dim=-1)
        log_p = F.log_softmax(teacher_logits, dim=-1)
        soft = F.kl_div(log_q, log_p, log_target=True, reduction="sum") / tokens
        hard = F.cross_entropy(student_logits, labels)
        return 0.5 * soft + 0.5 * hard

    def plain():
        return dk.distillation_loss(hs @ ws.T, ht @ wt.T, labels)

    def chunked():
        return dk.linear_distillation_loss(hs, ws, None, (ht, wt, None), labels, chunk_size=chunk)

    fn = {"reference": reference, "plain": plain, "chunked": chunked}[variant]
    # one call on 16 tokens first: the libraries' one-off set-up (kernels, thread pools,
    # allocator arenas) is not part of the loss's own memory
    warm = (hs[:16].detach().requires_grad_(True), ht[:16], labels[:16])
    if variant == "chunked":
        dk.linear_distillation_loss(warm[0], ws, None, (warm[1], wt, None), warm[2],
                                    chunk_size=chunk).backward()
    elif variant == "plain":
        dk.distillation_loss(warm[0] @ ws.T, warm[1] @ wt.T, warm[2]).backward()
    else:
        lq = F.log_softmax(warm[0] @ ws.T, -1)
        (F.kl_div(lq, F.log_softmax(warm[1] @ wt.T, -1), log_target=True, reduction="sum")
         + F.cross_entropy(warm[0] @ ws.T, warm[2])).backward()
    ws.grad = None
    base = _rss_mib()  # the inputs exist; nothing else is allocated yet
    seconds, cpu = [], []
    for _ in range(reps):
        hs.grad = ws.grad = None
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = fn()
        loss.backward()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = _max_rss_mib() - base
    row = {"variant": variant, "loss": float(loss.detach()), "peak_mib": round(peak, 1),
           "seconds": round(statistics.median(cpu), 3), "wall_seconds": round(statistics.median(seconds), 3),
           "all_cpu_seconds": [round(s, 3) for s in cpu], "torch": torch.__version__,
           "chunk": chunk if chunk is not None else dk.losses.default_chunk_size(vocab)}
    if variant == "reference":
        torch.save({"loss": float(loss.detach()), "hidden": hs.grad, "weight": ws.grad}, ref)
    else:
        want = torch.load(ref)
        row["loss_diff"] = abs(float(loss.detach()) - want["loss"])
        row["max_grad_diff_hidden"] = float((hs.grad - want["hidden"]).abs().max())
        row["max_grad_diff_weight"] = float((ws.grad - want["weight"]).abs().max())
        row["max_grad_hidden"] = float(want["hidden"].abs().max())
        row["max_grad_weight"] = float(want["weight"].abs().max())
    return row


def measure_once(tokens: int, vocab: int, hidden: int, chunk, reps: int, env: dict) -> dict:
    """One child process per variant: ``{variant: row}``."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "reference.pt")
        for variant in VARIANTS:  # the reference first: the others compare with its gradients
            cmd = [sys.executable, __file__, "--child", variant, "--tokens", str(tokens), "--vocab",
                   str(vocab), "--hidden", str(hidden), "--reps", str(reps), "--ref", ref]
            if chunk is not None:
                cmd += ["--chunk", str(chunk)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"variant {variant} failed:\n{out.stderr}")
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def measure(tokens: int, vocab: int, hidden: int, chunk, reps: int, env: dict, repeats: int = 1) -> dict:
    """``repeats`` independent measurements (fresh children each time); every row reports the
    median peak and time over them, and keeps each repeat's values in ``*_repeats``."""
    every = [measure_once(tokens, vocab, hidden, chunk, reps, env) for _ in range(repeats)]
    rows = {}
    for variant in VARIANTS:
        runs = [e[variant] for e in every]
        worst = max(runs, key=lambda r: r.get("loss_diff", 0.0))  # agreement: the worst repeat
        rows[variant] = {**worst, "peak_mib": statistics.median(r["peak_mib"] for r in runs),
                         "seconds": statistics.median(r["seconds"] for r in runs),
                         "peak_mib_repeats": [r["peak_mib"] for r in runs],
                         "seconds_repeats": [r["seconds"] for r in runs]}
    plain, chunked, reference = rows["plain"], rows["chunked"], rows["reference"]
    pct = lambda a, b: round(100 * a["peak_mib"] / max(b["peak_mib"], 1e-9), 1)  # noqa: E731
    times = lambda a, b: round(a["seconds"] / b["seconds"], 2)  # noqa: E731
    return {
        "tokens": tokens, "vocab": vocab, "hidden": hidden, "repeats": repeats,
        "chunk": chunked["chunk"],
        "one_logits_tensor_mib": round(tokens * vocab * 4 / 2**20, 1),
        # rows[0] is distilkit's plain loss and rows[1] the chunked one (chapter 5 reads them so)
        "rows": [plain, chunked, reference],
        "memory_ratio": round(plain["peak_mib"] / max(chunked["peak_mib"], 1e-9), 2),
        "same_loss": all(abs(e["plain"]["loss"] - e["chunked"]["loss"]) < 1e-4 and e["plain"]["loss_diff"] < 1e-4
                         for e in every),
        "chunked_memory_pct_of_plain": pct(chunked, plain),
        "chunked_time_x_plain": times(chunked, plain),
        "plain_memory_pct_of_reference": pct(plain, reference),
        "plain_time_x_reference": times(plain, reference),
        "plain_peak_in_logits_tensors": round(plain["peak_mib"] / (tokens * vocab * 4 / 2**20), 2),
        "reference_peak_in_logits_tensors": round(reference["peak_mib"] / (tokens * vocab * 4 / 2**20), 2),
    }


def print_table(result: dict) -> None:
    r = result
    print(f"\ntokens={r['tokens']} vocab={r['vocab']} hidden={r['hidden']} chunk={r['chunk']}; "
          f"one fp32 logits tensor = {r['one_logits_tensor_mib']:.0f} MiB")
    print(f"  {'variant':<10}{'peak MiB':>10}{'cpu s':>9}{'loss':>13}{'|dloss|':>10}"
          f"{'max|dg_h|':>11}{'max|dg_W|':>11}")
    for row in r["rows"]:
        diffs = (f"{row['loss_diff']:>10.1e}{row['max_grad_diff_hidden']:>11.1e}"
                 f"{row['max_grad_diff_weight']:>11.1e}" if "loss_diff" in row else f"{'(ref)':>10}")
        print(f"  {row['variant']:<10}{row['peak_mib']:>10.1f}{row['seconds']:>9.2f}{row['loss']:>13.6f}{diffs}")
    print(f"  chunked vs plain:   memory {r['chunked_memory_pct_of_plain']}% of plain, "
          f"time {r['chunked_time_x_plain']}x plain")
    print(f"  plain vs reference: memory {r['plain_memory_pct_of_reference']}% of reference, "
          f"time {r['plain_time_x_reference']}x reference; peak = {r['plain_peak_in_logits_tensors']} "
          f"logits tensors (reference {r['reference_peak_in_logits_tensors']})")


def check_agreement(result: dict, rtol: float = 1e-4) -> list:
    """Problems (empty when fine): loss and gradients of plain and chunked vs the reference."""
    problems = []
    for row in result["rows"]:
        if "loss_diff" not in row:
            continue
        if row["loss_diff"] > rtol * max(1.0, abs(row["loss"])):
            problems.append(f"{row['variant']}: loss differs by {row['loss_diff']:.3g}")
        for key in ("hidden", "weight"):
            if row[f"max_grad_diff_{key}"] > rtol * row[f"max_grad_{key}"]:
                problems.append(f"{row['variant']}: gradient w.r.t. {key} differs by "
                                f"{row[f'max_grad_diff_{key}']:.3g} (largest entry {row[f'max_grad_{key}']:.3g})")
    return problems


def quick_check() -> list:
    """Loss and gradients of every variant against the reference, in-process, at small sizes,
    for the default chunk and for a chunk that does not divide the token count."""
    rows, problems = [], []
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "reference.pt")
        for variant, chunk in [("reference", None), ("plain", None), ("chunked", None), ("chunked", 37)]:
            rows.append(run_child(variant, 512, 2048, 64, chunk, 1, ref))
    for row in rows[1:]:
        print(f"  {row['variant']:<9} chunk {str(row['chunk']):>5}: loss {row['loss']:.6f} "
              f"(|d| {row['loss_diff']:.1e}), max |d grad| hidden {row['max_grad_diff_hidden']:.1e}, "
              f"weight {row['max_grad_diff_weight']:.1e}")
    problems += check_agreement({"rows": rows})
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=None, help="chunk size (default: the loss's default)")
    ap.add_argument("--reps", type=int, default=3, help="forward + backward passes per variant")
    ap.add_argument("--repeats", type=int, default=None,
                    help="independent measurements, each in fresh children (default 3; with --json 1); "
                         "rows report the median and keep every repeat")
    ap.add_argument("--quick", action="store_true", help="small sizes; exit 1 if the variants disagree")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--out", default=None, help="results file (full mode: results/loss_memory.json)")
    ap.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                    help="run the children with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (a fixed threshold: "
                         "freed blocks above it go back to the system at once, so RSS follows the "
                         "tensors instead of the heap glibc keeps; default: glibc's own setting)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_child(a.child, a.tokens[0], a.vocab, a.hidden, a.chunk, a.reps, a.ref)))
        return
    if a.quick:  # agreement only: the three variants in this one process (the sizes are too small
        # for memory figures to mean anything), so that it fits a CI budget
        problems = quick_check()
        print("quick check: plain and chunked agree with the reference" if not problems else
              "DISAGREEMENT:\n  " + "\n  ".join(problems))
        sys.exit(1 if problems else 0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if a.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(a.mmap_threshold)
    repeats = a.repeats or (1 if a.json else 3)
    if repeats < 1:
        ap.error(f"--repeats expects a positive number; got {repeats}")
    runs = [measure(t, a.vocab, a.hidden, a.chunk, a.reps, env, repeats) for t in a.tokens]
    document = {"command": " ".join(["python", "benchmarks/loss_memory.py", *sys.argv[1:]]),
                "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
                           f"{platform.system()} {platform.release()}; one torch thread per child; "
                           "time = median CPU seconds of the child (the machine is shared); "
                           f"MALLOC_MMAP_THRESHOLD_={env.get('MALLOC_MMAP_THRESHOLD_', 'unset (glibc default)')}",
                "torch": runs[0]["rows"][0]["torch"], "repeats": repeats, "runs": runs}
    if a.json:
        print(json.dumps(runs[0] if len(runs) == 1 else document))
    else:
        for r in runs:
            print_table(r)
    out = a.out or (None if (a.quick or a.json) else str(ROOT / "results" / "loss_memory.json"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out).with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1) + "\n")
        tmp.replace(out)
        if not a.json:
            print(f"\nwrote {out}")
    problems = [p for r in runs for p in check_agreement(r)]
    if problems:
        print("DISAGREEMENT:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
