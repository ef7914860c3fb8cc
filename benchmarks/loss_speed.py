"""Time of ``dk.distillation_loss`` (forward + backward) against the plain PyTorch a user would write.

    python benchmarks/loss_speed.py               # (16, 31, 1024) and (4, 256, 32000), results/loss_speed.json
    python benchmarks/loss_speed.py --quick       # tiny shapes: values agree with the plain version (CI)
    python benchmarks/loss_speed.py --reps 15 --shapes 16,31,1024 --out /tmp/x.json

Variants, each forward + backward of the token mean over positions whose label is not -100
(the last 3 positions of every row are -100), T = 1, labels given, alpha = 1 (divergence only):

* ``plain``          -- forward KL: two ``log_softmax``, ``F.kl_div(log_q[keep], log_p[keep],
  log_target=True, reduction="sum") / keep.sum()``; JSD: the generalised JSD written as TRL's
  ``GKDTrainer.generalized_jsd_loss`` defines it (mixture ``logsumexp(stack([log_q + log(1 - beta),
  log_p + log(beta)]))``, ``beta * KL(p || m) + (1 - beta) * KL(q || m)`` with ``F.kl_div``, the
  masked entries dropped by indexing, the sum divided by the count) -- beta weights the teacher in
  both packages;
* ``distilkit``      -- ``dk.distillation_loss(s, t, labels, alpha=1.0, divergence=...,
  check_values=True)`` (the default: NaN / +inf / label checks, one host read);
* ``distilkit_nocheck`` -- the same with ``check_values=False`` (what the training loop uses).

One thread. Variants run interleaved (each repeat runs every variant once, in a rotating order),
and a repeat's ratio is distilkit's time over the plain time *of the same repeat*; the report is
the median ratio over repeats with its min-max spread, for wall time and for the thread's CPU
time (the machine may be shared: CPU time is less disturbed by other jobs). The load average
before and after is recorded.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import RESULTS, command, machine  # noqa: E402

import distilkit as dk  # noqa: E402

SHAPES = ((16, 31, 1024), (4, 256, 32000))
DIVERGENCES = ("forward_kl", "jsd")
BETA = 0.5


def plain_forward_kl(student, teacher, labels):
    keep = labels != -100
    log_q = F.log_softmax(student.float(), dim=-1)
    log_p = F.log_softmax(teacher.float(), dim=-1)
    return F.kl_div(log_q[keep], log_p[keep], log_target=True, reduction="sum") / keep.sum()


def plain_jsd(student, teacher, labels, beta=BETA):
    log_q = F.log_softmax(student.float(), dim=-1)
    log_p = F.log_softmax(teacher.float(), dim=-1)
    b = torch.tensor(beta, dtype=log_q.dtype)
    log_m = torch.logsumexp(torch.stack([log_q + torch.log1p(-b), log_p + torch.log(b)]), dim=0)
    kl_teacher = F.kl_div(log_m, log_p, reduction="none", log_target=True)  # KL(p || m)
    kl_student = F.kl_div(log_m, log_q, reduction="none", log_target=True)  # KL(q || m)
    jsd = b * kl_teacher + (1 - b) * kl_student
    mask = labels != -100
    return jsd[mask].sum() / mask.sum().clamp_min(1)


PLAIN = {"forward_kl": plain_forward_kl, "jsd": plain_jsd}


def variants(divergence):
    def dk_loss(check):
        return lambda s, t, y: dk.distillation_loss(s, t, y, alpha=1.0, divergence=divergence, beta=BETA,
                                                    check_values=check)
    return {"plain": PLAIN[divergence], "distilkit": dk_loss(True), "distilkit_nocheck": dk_loss(False)}


def case(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=g) * 2
    teacher = torch.randn(*shape, generator=g) * 2
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    labels[..., -3:] = -100
    return student, teacher, labels


def step(fn, student, teacher, labels):
    s = student.detach().requires_grad_(True)
    loss = fn(s, teacher, labels)
    loss.backward()
    return loss.detach(), s.grad


def time_variant(fn, student, teacher, labels, inner):
    w0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(inner):
        step(fn, student, teacher, labels)
    return (time.perf_counter() - w0) / inner, (time.thread_time() - c0) / inner


def agreement(divergence, shape, seed=0):
    """Largest absolute differences (value, student gradient) of each distilkit variant from plain."""
    student, teacher, labels = case(shape, seed)
    v = variants(divergence)
    ref_value, ref_grad = step(v["plain"], student, teacher, labels)
    out = {}
    for name in ("distilkit", "distilkit_nocheck"):
        value, grad = step(v[name], student, teacher, labels)
        out[name] = {"value_diff": abs(float(value) - float(ref_value)),
                     "grad_diff": float((grad - ref_grad).abs().max())}
    return float(ref_value), out


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(divergence, shape, reps, target_s):
    student, teacher, labels = case(shape)
    v = variants(divergence)
    for fn in v.values():  # warm-up, and a first time to size the inner loop
        step(fn, student, teacher, labels)
    once = time_variant(v["plain"], student, teacher, labels, 1)[0]
    inner = max(1, int(round(target_s / max(once, 1e-6))))
    names = list(v)
    times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            wall, cpu = time_variant(v[n], student, teacher, labels, inner)
            times[n]["wall"].append(wall)
            times[n]["cpu"].append(cpu)
    ratios = {}
    for n in ("distilkit", "distilkit_nocheck"):
        ratios[n] = {clock: summary([a / b for a, b in zip(times[n][clock], times["plain"][clock])])
                     for clock in ("wall", "cpu")}
    return {"divergence": divergence, "shape": list(shape), "reps": reps, "inner": inner,
            "seconds": {n: {c: summary(t[c]) for c in t} for n, t in times.items()},
            "ratio_to_plain": ratios}


def quick() -> int:
    problems = []
    for divergence in DIVERGENCES:
        for shape in ((2, 5, 7), (3, 4, 50)):
            ref, diffs = agreement(divergence, shape)
            for name, d in diffs.items():
                ok = d["value_diff"] <= 1e-5 and d["grad_diff"] <= 1e-5
                print(f"  [{'ok' if ok else 'FAILED'}] {divergence} {shape} {name}: value {ref:.6f}, "
                      f"|diff| value {d['value_diff']:.1e}, gradient {d['grad_diff']:.1e}")
                if not ok:
                    problems.append((divergence, shape, name))
    r = measure("forward_kl", (2, 5, 7), reps=2, target_s=0.001)
    print(f"  [ok] timing runs: median ratio {r['ratio_to_plain']['distilkit']['wall']['median']:.2f} (tiny shape)")
    if problems:
        print("FAILED:", problems)
        return 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes: agreement with the plain version only")
    ap.add_argument("--reps", type=int, default=9, help="interleaved repeats per (shape, divergence)")
    ap.add_argument("--target", type=float, default=0.2, help="seconds per timed sample (sets the inner loop)")
    ap.add_argument("--shapes", nargs="*", default=None, help="shapes as B,S,V (default: the two of issue 17)")
    ap.add_argument("--divergences", nargs="*", default=list(DIVERGENCES))
    ap.add_argument("--out", type=Path, default=RESULTS / "loss_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        return quick()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    load_before = os.getloadavg()
    runs = []
    for shape in shapes:
        for divergence in args.divergences:
            r = measure(divergence, shape, args.reps, args.target)
            r["plain_value"], r["agreement"] = agreement(divergence, shape)
            runs.append(r)
            rr = r["ratio_to_plain"]
            print(f"{divergence:10s} {str(shape):18s} " + "  ".join(
                f"{n}: wall {rr[n]['wall']['median']:.3f} [{rr[n]['wall']['min']:.2f}-{rr[n]['wall']['max']:.2f}]"
                f" cpu {rr[n]['cpu']['median']:.3f} [{rr[n]['cpu']['min']:.2f}-{rr[n]['cpu']['max']:.2f}]"
                for n in rr), flush=True)
    doc = {"command": command(), "machine": machine(1), "torch": torch.__version__,
           "distilkit": dk.__version__, "load_average_before": load_before,
           "load_average_after": os.getloadavg(), "runs": runs}
    import json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} (load average {load_before} -> {doc['load_average_after']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
