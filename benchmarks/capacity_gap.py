"""Capacity gap: teachers of clearly different quality, two student sizes, T in {1, 2}, and a
teacher-assistant chain against direct distillation (Mirzadeh et al., 2020).

    python benchmarks/capacity_gap.py --quick                  # CI: tiny runs, direction checks
    python benchmarks/capacity_gap.py --train-only             # the teachers and assistants into --work
    nice python benchmarks/capacity_gap.py --seeds 0 --out runs/gap/s0.json   # one process per seed
    python benchmarks/capacity_gap.py --merge runs/gap/s*.json # -> results/capacity_gap.json

Mirzadeh et al. report that past some gap in size a bigger, better teacher gives a worse
student, and that an intermediate "teacher assistant" (TA), distilled from the teacher and
then distilling the student, closes the gap.

Data (character-level text of ``load_text_corpus()``): teachers train on the first 90%;
students see only the first 10% of that (the regime where a teacher that read all of it has
something to give). The last 10% is cut into windows of 64 characters: the first 250 are the
**validation** windows, which every selection uses (teachers' and students' checkpoints), the
other 476 the **test** windows, used once per student for its perplexity. The shipped teacher
chose its checkpoint on the first 200 held-out windows, inside the validation part.

Teachers (trained by ``scripts/train_checkpoints.py``'s ``LM_TEACHER`` recipe, 1,600 steps,
best validation checkpoint, seed 0; kept in ``--work``):
small (1 layer, d=64), medium (2 layers, d=96), large (the shipped ``lm-teacher``, 6 layers,
d=128). Students: 1 layer, d=32 and d=64. The TA has the medium teacher's shape (2 layers,
d=96) but learns, like the students, from the large teacher on the students' 10% of the text,
once per temperature (seed 0, at most 1,000 steps, best validation checkpoint); students of
the chain then learn from the TA at the same temperature.

Every student: alpha = 1 (the divergence alone: forward KL at temperature T, scaled by T^2),
teacher logits cached once per teacher, batches of 32 windows, lr 3e-3 (the shared
language-model recipe), at most 1,000 steps with a validation check every 50 and the best
checkpoint kept. "No teacher" is the same student on the hard labels of the same windows.
Same seed = same initial weights and data order in every arm. Primary metric: test perplexity
(lower is better); the planned comparisons are in ``COMPARISONS`` and the file.
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
from _common import RESULTS, check, combine_runs, summarise, write_results  # noqa: E402
from lm_divergences import cached_logits, load  # noqa: E402
from train_checkpoints import LM_TEACHER  # noqa: E402

# teacher name -> its shape (None: the shipped lm-teacher); source name -> teacher name
SHAPES = {"1 layer d64": dict(n_layers=1, d_model=64), "2 layers d96": dict(n_layers=2, d_model=96),
          "6 layers d128 (shipped)": None}
TEACHERS = {"small teacher": "1 layer d64", "medium teacher": "2 layers d96",
            "large teacher": "6 layers d128 (shipped)"}
STUDENTS = {"student d32": dict(n_layers=1, d_model=32), "student d64": dict(n_layers=1, d_model=64)}
ASSISTANT = dict(n_layers=2, d_model=96)
CHAIN = "large teacher via TA"
CHAIN_ALL = "large teacher via TA (all text)"
SOURCES = ["no teacher", *TEACHERS, CHAIN, CHAIN_ALL]
TEMPERATURES = (1.0, 2.0)
VALID_WINDOWS = 250
METRICS = ("perplexity", "valid_perplexity", "best_step")


def get_teacher(ctx, name: str, work: Path, steps: int):
    """The named teacher (a key of ``SHAPES``): the shipped one, or one trained by LM_TEACHER's recipe
    with ``ctx["valid"]`` choosing its best step (cached in ``work``, resumed if stopped)."""
    import torch

    dk = ctx["dk"]
    if SHAPES[name] is None:
        return ctx["teacher"]
    slug = name.replace(" ", "_")
    path = work / f"{slug}-{steps}.safetensors"
    if path.exists():
        model, _, _ = dk.load_model(path)
        return model
    text_split = ctx["all"]
    torch.manual_seed(0)
    model = dk.make_model("lm-teacher", len(ctx["tok"]), **SHAPES[name])
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


def method(student: str, source: str, temperature=None) -> str:
    return f"{student}, {source}" + ("" if source == "no teacher" else f", T={temperature:g}")


def planned_comparisons():
    """(A, B, what A - B isolates); primary metric: test perplexity, lower is better."""
    out = []
    for s in STUDENTS:
        for t in TEMPERATURES:
            out += [(method(s, "large teacher", t), method(s, "medium teacher", t),
                     "the largest, best teacher against a medium one (the gap: positive if it hurts)"),
                    (method(s, "large teacher", t), method(s, "small teacher", t),
                     "the largest teacher against a small one"),
                    (method(s, "large teacher", t), method(s, "no teacher"),
                     "the largest teacher against hard labels on the same windows"),
                    (method(s, CHAIN, t), method(s, "large teacher", t),
                     "a teacher assistant between them against direct distillation")]
        out.append((method(s, "large teacher", 2.0), method(s, "large teacher", 1.0),
                    "T = 2 against T = 1, the largest teacher"))
    return out


def added_comparisons():
    """Comparisons added after the first results (the first TA, which reads only the students'
    10 % of the text, was weaker than every teacher): a TA that reads all the teacher's text."""
    return [(method(s, CHAIN_ALL, t), method(s, "large teacher", t),
             "a teacher assistant that read all the text against direct distillation")
            for s in STUDENTS for t in TEMPERATURES]


COMPARISONS = planned_comparisons()
ADDED = added_comparisons()


def comparison_records() -> list:
    """The comparisons as the results file stores them, each marked planned or added."""
    return [{"a": x, "b": y, "isolates": why, "planned": planned}
            for planned, group in ((True, COMPARISONS), (False, ADDED)) for x, y, why in group]


def context(quick: bool):
    ctx = load(LM_TEACHER["block"], 0.1)
    dk = ctx["dk"]
    text = dk.load_text_corpus()
    held = dk.lm_examples(ctx["tok"].encode(text[int(0.9 * len(text)):]), LM_TEACHER["block"])
    ctx["valid"], ctx["test"] = held[:VALID_WINDOWS], held[VALID_WINDOWS:]
    if quick:
        ctx["valid"], ctx["test"] = ctx["valid"][:60], ctx["test"][:120]
    return ctx


def train_selected(ctx, shape: dict, seed: int, examples, targets, steps: int, every: int, lr: float,
                   preset: str = "lm-student", curve: bool = False):
    """A fresh model of ``shape`` (weights from ``seed``) trained on ``examples`` for at most
    ``steps`` steps; the checkpoint with the best validation loss is kept. ``curve``: the info
    also holds every validation check as ``[step, perplexity]``."""
    import torch

    dk = ctx["dk"]
    cfg = dk.TrainConfig(steps=steps, batch_size=32, lr=lr, warmup_steps=min(100, steps // 5), seed=seed,
                         eval_every=every, restore_best=True, progress=False, device="cpu")
    torch.manual_seed(seed)
    model = dk.make_model(preset, len(ctx["tok"]), **shape)
    cpu = time.process_time()
    hist = dk.train(model, examples, config=cfg, targets=targets, valid_examples=ctx["valid"])
    best = min(range(len(hist.valid_loss)), key=hist.valid_loss.__getitem__)
    info = {"best_step": hist.valid_step[best], "valid_perplexity": round(math.exp(hist.valid_loss[best]), 4),
            "train_cpu_seconds": round(time.process_time() - cpu, 1)}
    if curve:
        info["valid_curve"] = [[s, round(math.exp(v), 4)] for s, v in zip(hist.valid_step, hist.valid_loss)]
    return model, info


def kd_targets(dk, temperature: float):
    return dk.CachedTeacherLogits(dk.KDConfig(alpha=1.0, temperature=temperature))


def get_assistant(ctx, temperature: float, work: Path, steps: int, every: int, lr: float, text: str = "small"):
    """The TA for ``temperature``: distilled from the large teacher on the students' windows
    (``text="small"``) or on all the teacher's training text (``"all"``); kept in ``work``."""
    dk = ctx["dk"]
    path = work / f"assistant{'-all' if text == 'all' else ''}-T{temperature:g}-{steps}.safetensors"
    if path.exists():
        model, _, meta = dk.load_model(path)
        model.eval()
        return model, meta["extra"]["info"]
    large = ctx["teachers"]["large teacher"]
    if text == "all":
        cache = ctx.setdefault("cached_by", {})
        if "large teacher (all text)" not in cache:
            cache["large teacher (all text)"] = dk.precompute_teacher_logits(large, ctx["all"], progress=False)
        examples = cache["large teacher (all text)"]
    else:
        examples = cached_logits(ctx, large, key="large teacher")
    model, info = train_selected(ctx, ASSISTANT, 0, examples, kd_targets(dk, temperature), steps, every, lr,
                                 preset="lm-teacher")
    info.update(params=dk.count_parameters(model), test_perplexity=round(dk.perplexity(model, ctx["test"]), 4))
    dk.save_model(model, path, ctx["tok"], extra={"info": info})  # written atomically
    print(f"assistant ({text} text) T={temperature:g}: valid ppl {info['valid_perplexity']:.3f}, test ppl "
          f"{info['test_perplexity']:.3f}, step {info['best_step']}", flush=True)
    return model, info


def run(ctx, student: str, source: str, temperature, seed: int, steps: int, every: int, lr: float) -> dict:
    dk = ctx["dk"]
    if source == "no teacher":
        examples, targets = ctx["small"], None
    else:
        chains = {CHAIN: "assistants", CHAIN_ALL: "assistants_all"}
        key = source if source not in chains else f"{source}, T={temperature:g}"
        teacher = ctx[chains[source]][temperature] if source in chains else ctx["teachers"][source]
        examples, targets = cached_logits(ctx, teacher, key=key), kd_targets(dk, temperature)
    model, info = train_selected(ctx, STUDENTS[student], seed, examples, targets, steps, every, lr)
    return {"seed": seed, "method": method(student, source, temperature), "student": student, "source": source,
            "temperature": temperature, "params": dk.count_parameters(model), **info,
            "perplexity": round(dk.perplexity(model, ctx["test"]), 4)}


def paired_summary(runs, comparisons=COMPARISONS + ADDED) -> list:
    """Each comparison's paired difference (A - B, test perplexity) with its 95% interval."""
    from distilkit.stats import compare

    by = {(r["method"], r["seed"]): r["perplexity"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = []
    for a, b, why in comparisons:
        pairs = [(by[a, s], by[b, s]) for s in seeds if (a, s) in by and (b, s) in by]
        if len(pairs) < 2:
            continue
        c = compare([x for x, _ in pairs], [y for _, y in pairs], higher_is_better=False)
        out.append({"a": a, "b": b, "isolates": why, "planned": (a, b, why) in COMPARISONS, "n": c.n, "diff": round(c.effect, 4),
                    "low": round(c.low, 4), "high": round(c.high, 4), "verdict": c.verdict})
    return out


def merge(paths, out: Path) -> dict:
    """One results file from runs made in several processes (some seeds, some sources each)."""
    methods = [method(st, src, t) for st in STUDENTS for src in SOURCES
               for t in ([None] if src == "no teacher" else TEMPERATURES)]
    docs, runs, seeds = combine_runs(paths, methods)
    assistants = {k: v for d in docs for k, v in d["assistants"].items()}
    teachers = {n: {k: v for d in docs for k, v in d["teachers"][n].items()} for n in docs[0]["teachers"]}
    doc = write_results(out, seeds, runs, summary={k: summarise(runs, k) for k in METRICS},
                        primary_metric="perplexity",
                        comparisons=comparison_records(),
                        teachers=teachers, assistants=assistants, paired=paired_summary(runs),
                        setup=docs[0]["setup"], commands=[d["command"] for d in docs])
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny runs and direction checks; writes nothing")
    ap.add_argument("--train-only", action="store_true", help="train (or resume) the teachers and assistants")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=None, help="student steps at most (default 1000)")
    ap.add_argument("--every", type=int, default=None, help="validation interval (default 50)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--sources", nargs="+", default=None, choices=SOURCES, help="run only these arms")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None,
                    help="where the teachers and assistants are kept (default .checkpoint_runs/; quick: a "
                         "temporary folder)")
    ap.add_argument("--out", type=Path, default=RESULTS / "capacity_gap.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE")
    a = ap.parse_args()
    if a.merge:
        doc = merge(a.merge, a.out)
        for c in doc["paired"]:
            print(f"{c['a']:<44} - {c['b']:<36} {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] {c['verdict']}")
        print(f"wrote {a.out} ({len(doc['seeds'])} seeds)")
        return
    import torch

    torch.set_num_threads(a.threads)
    steps, every = a.steps or (60 if a.quick else 1000), a.every or (20 if a.quick else 50)
    teacher_steps = 150 if a.quick else LM_TEACHER["steps"]
    ta_steps = 60 if a.quick else 1000
    if a.work is None:
        a.work = Path(tempfile.mkdtemp(prefix="capacity_gap-")) if a.quick else ROOT / ".checkpoint_runs"
    (a.work / "capacity_gap").mkdir(parents=True, exist_ok=True)
    ctx = context(a.quick)
    dk = ctx["dk"]
    names = ["small teacher", "large teacher"] if a.quick else list(TEACHERS)
    ctx["teachers"] = {n: get_teacher(ctx, TEACHERS[n], a.work / "capacity_gap", teacher_steps) for n in names}
    temperatures = (1.0,) if a.quick else TEMPERATURES
    sources = a.sources or ["no teacher", *names, CHAIN, *([] if a.quick else [CHAIN_ALL])]
    ctx["assistants"], ctx["assistants_all"], assistants = {}, {}, {}
    for t in temperatures:
        if CHAIN in sources or a.train_only:
            ctx["assistants"][t], assistants[f"T={t:g}"] = get_assistant(ctx, t, a.work / "capacity_gap", ta_steps,
                                                                         every, a.lr)
        if CHAIN_ALL in sources or a.train_only:
            ctx["assistants_all"][t], assistants[f"all text, T={t:g}"] = get_assistant(
                ctx, t, a.work / "capacity_gap", ta_steps, every, a.lr, text="all")
    # the students' windows are part of every teacher's training text: how well it fits them
    teachers = {n: {"params": dk.count_parameters(m), "valid_perplexity": round(dk.perplexity(m, ctx["valid"]), 4),
                    "test_perplexity": round(dk.perplexity(m, ctx["test"]), 4),
                    "student_windows_perplexity": round(dk.perplexity(m, ctx["small"]), 4)}
                for n, m in ctx["teachers"].items()}
    for n, info in teachers.items():
        print(f"{n:<16} {info['params']:>9,} params  valid ppl {info['valid_perplexity']:.3f}  "
              f"test ppl {info['test_perplexity']:.3f}", flush=True)
    if a.train_only:
        return
    students = ["student d32"] if a.quick else list(STUDENTS)
    seeds = [0] if a.quick else a.seeds
    runs = []
    for seed in seeds:
        for s in students:
            for src in sources:
                for t in ([None] if src == "no teacher" else temperatures):
                    runs.append(run(ctx, s, src, t, seed, steps, every, a.lr))
                    r = runs[-1]
                    print(f"seed {seed} {r['method']:<44} test ppl {r['perplexity']:.3f}  (valid "
                          f"{r['valid_perplexity']:.3f} at step {r['best_step']}, {r['train_cpu_seconds']:.0f} "
                          "CPU-s)", flush=True)
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(all(math.isfinite(r["perplexity"]) for r in runs), "every perplexity is finite", problems)
        check(teachers["large teacher"]["test_perplexity"] < teachers["small teacher"]["test_perplexity"],
              "the large teacher has the lower test perplexity", problems)
        check(by[method("student d32", "large teacher", 1.0)]["perplexity"]
              < by[method("student d32", "no teacher")]["perplexity"],
              "the large teacher's student beats hard labels on the same windows", problems)
        check(all(0 < r["best_step"] <= steps for r in runs), "every kept checkpoint is a validation checkpoint",
              problems)
        sys.exit(1 if problems else 0)
    write_results(a.out, seeds, runs, threads=a.threads, summary={k: summarise(runs, k) for k in METRICS},
                  primary_metric="perplexity",
                  comparisons=comparison_records(),
                  teachers=teachers, assistants=assistants,
                  paired=paired_summary(runs),
                  setup={"steps": steps, "every": every, "lr": a.lr, "batch_size": 32, "alpha": 1.0,
                         "temperatures": list(TEMPERATURES), "block": LM_TEACHER["block"], "small_fraction": 0.1,
                         "valid_windows": len(ctx["valid"]), "test_windows": len(ctx["test"]),
                         "students": STUDENTS, "assistant": {**ASSISTANT, "steps": ta_steps, "seed": 0},
                         "teacher_recipe": LM_TEACHER, "teacher_shapes": TEACHERS})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
