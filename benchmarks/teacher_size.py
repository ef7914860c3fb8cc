"""Teacher size: one student, teachers of several sizes (the capacity-gap question).

    python benchmarks/teacher_size.py --quick        # CI: a briefly trained 1-layer teacher vs the shipped one
    python benchmarks/teacher_size.py --train-only   # train (or resume) the extra teachers into --work
    nice python benchmarks/teacher_size.py           # full: seeds 0 1 2 -> results/teacher_size.json

Mirzadeh et al. (2020) report that a student does not always learn best from the largest
teacher: past some gap in size, a bigger, better teacher gives a worse student. Here one
student (``lm-student``, 1 layer d=64, the first 10% of the training text, forward KL at
alpha = 1, T = 1, 500 steps: the set-up of ``benchmarks/lm_divergences.py``) learns from
teachers of 1 layer d=64 (the student's own size), 2 layers d=96, 4 layers d=128 and the
shipped ``lm-teacher`` (6 layers d=128). Every teacher is trained by the same recipe as the
shipped one (``scripts/train_checkpoints.py``'s ``LM_TEACHER``: 1,600 steps of 32 windows on
the first 90% of the text, best validation checkpoint), seed 0; the extra teachers are saved in
``--work`` and reused (a stopped training resumes there).

Per (teacher, seed): the teacher's parameters and held-out perplexity, the student's held-out
perplexity and the shipped teacher's NLL of the student's samples (one fixed judge for every
row). The row "no teacher" is the student on hard labels (the same 10% of the text).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's distilkit
sys.path.insert(0, str(ROOT / "scripts"))
from _common import RESULTS, check, merge_results, summarise, write_results  # noqa: E402
from lm_divergences import cached_logits, load, sample_metrics, train_lm_student  # noqa: E402
from train_checkpoints import LM_TEACHER  # noqa: E402

SHIPPED = "6 layers d128 (shipped)"
TEACHERS = {"1 layer d64": dict(n_layers=1, d_model=64), "2 layers d96": dict(n_layers=2, d_model=96),
            "4 layers d128": dict(n_layers=4, d_model=128), SHIPPED: None}
METRICS = ("perplexity", "teacher_nll", "teacher_perplexity")


def get_teacher(ctx, name: str, work: Path, steps: int):
    """The named teacher: the shipped one, or one trained by LM_TEACHER's recipe (cached in ``work``)."""
    import torch

    dk = ctx["dk"]
    if TEACHERS[name] is None:
        return ctx["teacher"]
    slug = name.replace(" ", "_")
    path = work / f"{slug}-{steps}.safetensors"
    if path.exists():
        model, _, _ = dk.load_model(path)
        return model
    text_split = ctx["all"]
    torch.manual_seed(0)
    model = dk.make_model("lm-teacher", len(ctx["tok"]), **TEACHERS[name])
    cfg = dk.TrainConfig(steps=steps, batch_size=LM_TEACHER["batch_size"], lr=LM_TEACHER["lr"],
                         warmup_steps=min(100, steps // 5), eval_every=100, restore_best=True, seed=0,
                         checkpoint_dir=str(work / f"{slug}-{steps}.run"), checkpoint_every=100,
                         progress=False, device="cpu")
    t = time.perf_counter()
    hist = dk.train(model, text_split, config=cfg, valid_examples=ctx["valid"])
    dk.save_model(model, path, ctx["tok"], extra={"info": {
        "params": dk.count_parameters(model), "steps": steps, "seconds": round(time.perf_counter() - t, 1),
        "best_valid_loss": round(hist.best_valid_loss, 4)}})
    print(f"trained teacher {name}: {dk.count_parameters(model):,} params in {time.perf_counter() - t:.0f} s",
          flush=True)
    model.eval()
    return model


def distil(ctx, teacher, name: str, seed: int, steps: int, lr: float) -> dict:
    dk = ctx["dk"]
    if teacher is None:
        examples, targets = ctx["small"], None
    else:
        examples = cached_logits(ctx, teacher, key=name)
        targets = dk.CachedTeacherLogits(dk.KDConfig(alpha=1.0, temperature=1.0))
    student, _, cpu_seconds = train_lm_student(ctx, seed, steps, lr, examples, targets)
    row = {"seed": seed, "method": name, "params": dk.count_parameters(student), "steps": steps,
           "train_cpu_seconds": round(cpu_seconds, 1),
           "perplexity": round(dk.perplexity(student, ctx["held"]), 4),
           "teacher_nll": sample_metrics(ctx, student, seed)["teacher_nll"]}
    if teacher is not None:
        row.update(teacher_params=dk.count_parameters(teacher),
                   teacher_perplexity=round(ctx["teacher_ppl"][name], 4))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the 1-layer teacher (150 steps) and the shipped one, one seed, short runs, direction "
                         "checks; writes no results")
    ap.add_argument("--train-only", action="store_true", help="train (or resume) the extra teachers, then stop")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="student steps (default 500; quick: 300)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--teachers", nargs="+", default=None, choices=list(TEACHERS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None,
                    help="where the extra teachers are trained and kept (default .checkpoint_runs/teacher_size; "
                         "quick: a temporary folder)")
    ap.add_argument("--out", type=Path, default=RESULTS / "teacher_size.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                    help="combine results files of single-seed runs (same set-up) into --out")
    a = ap.parse_args()
    if a.merge:
        doc = merge_results(a.merge, a.out, METRICS)
        for m, s in doc["summary"]["perplexity"].items():
            print(f"{m:<26} student perplexity {s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})")
        print(f"wrote {a.out} ({len(doc['seeds'])} seeds)")
        return
    import torch

    torch.set_num_threads(a.threads)
    steps = a.steps or (300 if a.quick else 500)
    teacher_steps = 150 if a.quick else LM_TEACHER["steps"]
    seeds = [0] if a.quick else a.seeds
    names = a.teachers or (["1 layer d64", SHIPPED] if a.quick else list(TEACHERS))
    ctx = load(LM_TEACHER["block"], 0.1)
    dk = ctx["dk"]
    text = dk.load_text_corpus()
    # the validation windows train_checkpoints.lm uses to pick the best step
    ctx["valid"] = dk.lm_examples(ctx["tok"].encode(text[int(0.9 * len(text)):]), LM_TEACHER["block"])[:200]
    if a.work is None:
        a.work = Path(tempfile.mkdtemp(prefix="teacher_size-")) if a.quick else ROOT / ".checkpoint_runs" / "teacher_size"
    a.work.mkdir(parents=True, exist_ok=True)
    teachers = {n: get_teacher(ctx, n, a.work, teacher_steps) for n in names}
    if a.train_only:
        return
    ctx["teacher_ppl"] = {n: dk.perplexity(m, ctx["held"]) for n, m in teachers.items()}
    for n, m in teachers.items():
        print(f"teacher {n:<24} {dk.count_parameters(m):>9,} params  held-out perplexity {ctx['teacher_ppl'][n]:.3f}")
    runs = []
    for seed in seeds:
        runs.append(distil(ctx, None, "no teacher", seed, steps, a.lr))
        # quick mode distils from the 1-layer teacher only: the shipped teacher's student is
        # lm_divergences' forward-KL student, which that script's quick mode checks
        distil_from = {n: m for n, m in teachers.items() if not (a.quick and n == SHIPPED)}
        for n, m in distil_from.items():
            runs.append(distil(ctx, m, n, seed, steps, a.lr))
        for r in runs[-len(distil_from) - 1:]:
            print(f"seed {seed} {r['method']:<26} student ppl {r['perplexity']:.3f}  "
                  f"judge NLL {r['teacher_nll']:.3f}  {r['train_cpu_seconds']:.0f} CPU-s", flush=True)
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(all(math.isfinite(r["perplexity"]) for r in runs), "every perplexity is finite", problems)
        check(ctx["teacher_ppl"][SHIPPED] < ctx["teacher_ppl"]["1 layer d64"],
              "the larger teacher has the lower held-out perplexity", problems)
        check(all(by[n]["perplexity"] < by["no teacher"]["perplexity"] for n in distil_from),
              "the small teacher (trained on all the text) beats hard labels on 10% of it", problems)
        sys.exit(1 if problems else 0)
    write_results(a.out, seeds, runs, threads=a.threads, summary={k: summarise(runs, k) for k in METRICS},
                  setup={"steps": steps, "lr": a.lr, "block": LM_TEACHER["block"], "batch_size": 32,
                         "small_fraction": 0.1, "teacher_recipe": LM_TEACHER, "teachers": {
                             n: {"params": dk.count_parameters(m), "held_out_perplexity":
                                 round(ctx["teacher_ppl"][n], 4), "shape": TEACHERS[n] or "lm-teacher preset"}
                             for n, m in teachers.items()}})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
