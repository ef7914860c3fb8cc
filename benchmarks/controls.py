"""Chapter 4's mechanism under Kim & Rush's (2016) controls, every budget chosen on validation data.

    python benchmarks/controls.py --quick                        # CI: tiny runs, direction checks
    python benchmarks/controls.py --tune --work runs/controls    # learning rate per method (seed 100)
    python benchmarks/controls.py --seeds 0 --work runs/controls --out runs/controls/s0.json
    python benchmarks/controls.py --merge runs/controls/s?.json  # -> results/controls.json

Same task, teacher (``d2t-teacher``) and student (``d2t-student``) as chapter 4 and
``quality.py``. What differs is the design.

**Same inputs** (the 400 labelled training inputs, as in Kim & Rush's Table 1):

* ``baseline`` -- hard labels on the human references;
* ``word KD, same inputs`` -- the references with the teacher's distributions (T = 1, alpha = 0.5);
* ``seq KD, same inputs`` -- the teacher's beam-5 output *replaces* each reference (hard labels);
* ``seq-inter, same inputs`` -- of the teacher's 5 beam candidates, the one with the highest
  sentence BLEU against the reference replaces it (Kim & Rush's Seq-Inter);
* ``word + seq KD, same inputs`` -- the teacher's beam outputs with its distributions (alpha = 0.5).

**Added inputs** (the separate effect of unlabelled inputs; the names of ``quality.py``): the 400
pairs plus the first 3,000 transfer inputs, labelled

* ``seq KD, greedy`` -- by the teacher's greedy output (hard labels);
* ``word + seq KD`` -- the same with the teacher's distributions (alpha = 0.5): chapter 4's student;
* ``more human data`` -- by one human-style reference each (what the teacher's labels stand in for);
* ``word + seq KD, soft only`` -- the teacher-labelled inputs with the distributions alone (alpha = 1,
  no hard labels): section 5.3's word-level student. Added after the first eight methods had run,
  with its own tuning runs and the two comparisons marked ``"added"``, both fixed before its runs.

**One budget rule for every method**: at most ``--max-steps`` optimizer steps of 64 examples, a
checkpoint every ``--every`` steps, and the checkpoint with the best validation BLEU (greedy, the
200 validation pairs, one reference each; ties go to the earlier one) is the one tested. The
learning rate of each method is chosen from ``--lrs`` by the same validation BLEU, in one
tuning run per method and rate with a seed (100) that is not an evaluation seed (``--tune``).
The test split is decoded once per run, for the selected checkpoint only.

Primary metric (fixed before the runs): test BLEU (greedy, 8 references per input); slot error
rate and repeated 4-gram rate are secondary. The planned comparisons are listed in
``COMPARISONS`` and written to the file.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import D2T_METRICS, RESULTS, check, kept, summarise, write_results  # noqa: E402

SAME = ["baseline", "word KD, same inputs", "seq KD, same inputs", "seq-inter, same inputs",
        "word + seq KD, same inputs"]
ADDED = ["seq KD, greedy", "word + seq KD", "more human data", "word + seq KD, soft only"]
METHODS = SAME + ADDED
TUNE_SEED = 100
# (A, B, what the difference A - B isolates); primary metric: test BLEU, higher is better
COMPARISONS = [
    ("seq KD, same inputs", "baseline", "the teacher's outputs instead of the references, same inputs"),
    ("seq-inter, same inputs", "baseline", "the teacher's candidate closest to the reference, same inputs"),
    ("word KD, same inputs", "baseline", "the teacher's distributions on the references, same inputs"),
    ("seq-inter, same inputs", "seq KD, same inputs", "choosing the candidate by the reference (Seq-Inter)"),
    ("word + seq KD, same inputs", "seq KD, same inputs", "the teacher's distributions on top of its outputs"),
    ("seq KD, greedy", "baseline", "3,000 more inputs, labelled by the teacher"),
    ("more human data", "baseline", "3,000 more inputs, labelled by people (the control)"),
    ("seq KD, greedy", "more human data", "teacher labels against human labels of the same inputs"),
    ("word + seq KD", "seq KD, greedy", "the teacher's distributions on top, with the added inputs"),
]
# planned with the soft-only method, before its runs (section 5.3's questions)
ADDED_COMPARISONS = [
    ("word + seq KD, soft only", "baseline", "the teacher's distributions alone, with the added inputs"),
    ("word + seq KD", "word + seq KD, soft only", "the hard labels next to the distributions (alpha 0.5 vs 1)"),
]
ALPHA = {"word + seq KD, soft only": 1.0}  # every other word-level method: 0.5


def planned_comparisons() -> list:
    return ([{"a": x, "b": y, "isolates": why} for x, y, why in COMPARISONS]
            + [{"a": x, "b": y, "isolates": why, "added": True} for x, y, why in ADDED_COMPARISONS])


def load(num_transfer: int, progress: bool, work=None, train_items=None):
    """The task, the teacher, and the teacher's targets (kept in ``work`` as JSON when given)."""
    import distilkit as dk
    from distilkit.data import DataToTextTask

    data = dk.make_data_to_text(seed=0)
    teacher, tok, _ = dk.load_teacher("d2t-teacher")
    teacher.eval()
    train = data.train[:train_items] if train_items else data.train
    ctx = {"dk": dk, "data": data, "teacher": teacher, "train": train, "teacher_seconds": {}}

    def saved(name, make):
        value, ctx["teacher_seconds"][name] = kept(Path(work) / f"{name}.json" if work else None, make)
        return value

    inputs = data.encode_inputs([mr for mr, _ in train])
    beams = saved(f"beam5-candidates-{len(train)}", lambda: dk.beam_candidates(
        teacher, inputs, max_new_tokens=80, beam_size=5))
    refs = [text for _, text in train]
    inter, changed = [], 0
    for cands, ref in zip(beams, refs):
        scores = [dk.sentence_bleu(data.tokenizer.decode(c), [ref]) for c in cands]
        best = max(range(len(cands)), key=lambda i: (scores[i], -i))  # ties: the teacher's ranking
        inter.append(cands[best])
        changed += best != 0
    eos = dk.adapters.adapt(teacher).eos_id
    ctx["labelled"] = data.encode_pairs(train)
    assert all(y[-1] == eos for _, y in ctx["labelled"]), "references end in <eos>"
    ctx["seq"] = [(list(x), list(b[0]) + [eos]) for (x, _), b in zip(ctx["labelled"], beams)]
    ctx["inter"] = [(list(x), list(c) + [eos]) for (x, _), c in zip(ctx["labelled"], inter)]
    ctx["inter_changed"] = changed
    mrs = data.transfer[:num_transfer]
    ctx["greedy"] = [(list(x), list(y)) for x, y in saved(
        f"greedy-{num_transfer}", lambda: dk.experiments.transfer_set(teacher, data, num_transfer,
                                                                      progress=progress))]
    rng = random.Random(12345)
    task = DataToTextTask()
    ctx["human"] = data.encode_pairs([(mr, task.realise(mr, rng)) for mr in mrs])
    return ctx


def examples_for(ctx, method: str):
    """(training examples, KDConfig or None) of one method; teacher logits cached in float16."""
    dk = ctx["dk"]
    base = {"baseline": "labelled", "word KD, same inputs": "labelled", "seq KD, same inputs": "seq",
            "word + seq KD, same inputs": "seq", "seq-inter, same inputs": "inter"}
    if method in base:
        examples = ctx[base[method]]
    elif method == "more human data":
        examples = ctx["labelled"] + ctx["human"]
    else:
        examples = ctx["labelled"] + ctx["greedy"]
    key = f"cached:{base.get(method, 'added')}"
    if method.startswith("word"):  # word KD, word + seq KD (same inputs or added)
        if key not in ctx:
            ctx[key] = dk.precompute_teacher_logits(ctx["teacher"], examples, progress=False)
        return ctx[key], dk.KDConfig(temperature=1.0, alpha=ALPHA.get(method, 0.5))
    return examples, None


def scores(ctx, model, items) -> dict:
    dk, tok = ctx["dk"], ctx["data"].tokenizer
    mrs = [mr for mr, _ in items]
    refs = [r if isinstance(r, list) else [r] for _, r in items]
    outs = [tok.decode(ids) for ids in dk.greedy(model, ctx["data"].encode_inputs(mrs), max_new_tokens=80)]
    return {"bleu": round(dk.corpus_bleu(outs, refs), 2), "ser": round(100 * dk.slot_error_rate(mrs, outs), 2),
            "repeat": round(dk.repeated_ngram_rate(outs), 2)}


def train_selected(ctx, student, examples, targets, seed: int, lr: float, max_steps: int, every: int,
                   batch_size: int, valid_items: int):
    """Train ``student`` (in place) for ``max_steps`` steps with a checkpoint every ``every``; put
    back the weights of the checkpoint with the best validation BLEU (ties: the earlier one).
    Returns (selected step, its validation BLEU, the validation curve, training seconds)."""
    from distilkit.checkpoint import read_checkpoint
    from distilkit.training.resume import checkpoint_files

    dk, data = ctx["dk"], ctx["data"]
    folder = Path(tempfile.mkdtemp(prefix="dk-controls-"))
    try:
        cfg = dk.TrainConfig(steps=max_steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, max_steps // 5),
                             seed=seed, progress=False, device="cpu", checkpoint_dir=str(folder),
                             checkpoint_every=every, keep_checkpoints=max_steps // every + 1, resume=False)
        t = time.perf_counter()
        dk.train(student, examples, config=cfg, targets=targets)
        seconds = time.perf_counter() - t
        curve, best = [], None
        for step, path in checkpoint_files(folder):
            tensors, _ = read_checkpoint(path)
            student.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            v = scores(ctx, student, data.valid[:valid_items])["bleu"]
            curve.append([step, v])
            if best is None or v > best[1]:
                best = (step, v, {k: t.clone() for k, t in student.state_dict().items()})
        student.load_state_dict(best[2])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return best[0], best[1], curve, seconds


def run(ctx, method: str, seed: int, lr: float, max_steps: int, every: int, preset: str, batch_size: int,
        valid_items: int, test_items: int, test: bool = True) -> dict:
    """Train ``method`` with ``seed``; select the checkpoint by validation BLEU; test it once."""
    import torch

    dk, data = ctx["dk"], ctx["data"]
    examples, kd = examples_for(ctx, method)
    torch.manual_seed(seed)
    student = dk.make_model(preset, len(data.tokenizer), **ctx.get("student_kwargs", {}))
    step, valid, curve, seconds = train_selected(ctx, student, examples, dk.CachedTeacherLogits(kd) if kd else None,
                                                 seed, lr, max_steps, every, batch_size, valid_items)
    out = {"seed": seed, "method": method, "lr": lr, "params": dk.count_parameters(student),
           "examples": len(examples), "selected_step": step, "valid_bleu": valid, "valid_curve": curve,
           "train_seconds": round(seconds, 1)}
    if test:
        out.update(scores(ctx, student, data.test[:test_items]))
    return out


def print_table(runs) -> None:
    print(f"\n{'method':<36}{'BLEU':>16}{'SER %':>16}   per seed (BLEU / SER / step)")
    for m in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == m]
        b, s = summarise(rows, "bleu")[m], summarise(rows, "ser")[m]
        per = ", ".join(f"{r['bleu']:.1f}/{r['ser']:.1f}/{r.get('selected_step', '-')}" for r in rows)
        print(f"{m:<36}{b['mean']:>8.2f} ± {b['std']:<5.2f}{s['mean']:>8.2f} ± {s['std']:<5.2f}   {per}")


def tune(ctx, a, lrs, methods) -> dict:
    """The learning rate of each method: the best validation BLEU of one tuning run per rate."""
    path = a.work / "tuning.json" if a.work else None
    done = json.loads(path.read_text()) if path and path.is_file() else {"runs": []}
    for m in methods:
        for lr in lrs:
            if any(r["method"] == m and r["lr"] == lr for r in done["runs"]):
                continue
            r = run(ctx, m, TUNE_SEED, lr, a.max_steps, a.every, a.student, a.batch_size, a.valid, a.test_items,
                    test=False)
            done["runs"].append(r)
            print(f"tune {m:<36} lr {lr:g}: valid BLEU {r['valid_bleu']:.2f} at step {r['selected_step']} "
                  f"({r['train_seconds']:.0f} s)", flush=True)
            if path:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(done, indent=1))
                tmp.replace(path)
    chosen = {}
    for m in methods:
        rows = [r for r in done["runs"] if r["method"] == m and r["lr"] in lrs]
        chosen[m] = max(rows, key=lambda r: (r["valid_bleu"], -r["lr"]))["lr"]
    return {"seed": TUNE_SEED, "lrs": lrs, "chosen": chosen, "runs": done["runs"]}


def merge(paths, out: Path) -> None:
    """One results file from runs made in several processes: each file holds some seeds and some
    methods; every (seed, method) must appear once, and the set-ups must agree."""
    from _common import command, machine

    docs = [json.loads(Path(p).read_text()) for p in paths]
    setups = {json.dumps({k: v for k, v in d["setup"].items() if k != "teacher_seconds"}, sort_keys=True)
              for d in docs}
    if len(setups) != 1:
        raise SystemExit(f"--merge: the files were made with different set-ups: {sorted(setups)}")
    runs, seen = [docs[0]["runs"][0]], set()
    for d in docs:
        for r in d["runs"]:
            if r["method"] == "teacher":
                continue
            if (r["seed"], r["method"]) in seen:
                raise SystemExit(f"--merge: seed {r['seed']} of {r['method']!r} appears twice")
            seen.add((r["seed"], r["method"]))
            runs.append(r)
    seeds = sorted({r["seed"] for r in runs[1:]})
    missing = [(s, m) for s in seeds for m in METHODS if (s, m) not in seen]
    if missing:
        raise SystemExit(f"--merge: missing runs {missing}")
    runs[1:] = sorted(runs[1:], key=lambda r: (r["seed"], METHODS.index(r["method"])))
    tuning = {"seed": TUNE_SEED, "lrs": docs[0]["tuning"]["lrs"], "chosen": {}, "runs": []}
    for d in docs:
        tuning["chosen"].update(d["tuning"]["chosen"])
        tuning["runs"] += [r for r in d["tuning"].get("runs", []) if r not in tuning["runs"]]
    keep = {k: docs[0][k] for k in ("primary_metric", "metric_definitions")}
    keep["comparisons"] = planned_comparisons()
    doc = {"command": command(), "machine": machine(), "torch": docs[0]["torch"], "seeds": seeds, "runs": runs,
           "summary": {k: summarise(runs, k) for k in ("bleu", "ser", "repeat", "selected_step")},
           **keep, "tuning": tuning, "setup": docs[0]["setup"], "commands": [d["command"] for d in docs],
           "machines": sorted({d["machine"] for d in docs})}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)
    print_table(runs)
    print(f"wrote {out} ({len(seeds)} seeds)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny runs and direction checks; writes nothing")
    ap.add_argument("--tune", action="store_true", help="only the learning-rate tuning runs (kept in --work)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--max-steps", type=int, default=None, help="optimizer steps at most (default 1000)")
    ap.add_argument("--every", type=int, default=None, help="checkpoint interval (default 100)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2], help="learning rates to choose from")
    ap.add_argument("--transfer", type=int, default=None, help="added inputs (default 3000)")
    ap.add_argument("--valid", type=int, default=200, help="validation pairs for the selection")
    ap.add_argument("--test-items", type=int, default=400)
    ap.add_argument("--student", default="d2t-student")
    ap.add_argument("--student-kwargs", type=json.loads, default={}, metavar="JSON",
                    help='settings of the student preset, e.g. \'{"embed_dim": 32, "hidden_dim": 64}\'')
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "controls.json")
    ap.add_argument("--work", type=Path, default=None, help="folder for the teacher's targets and the tuning runs")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE")
    a = ap.parse_args()
    if a.merge:
        merge(a.merge, a.out)
        return
    import torch

    torch.set_num_threads(a.threads)
    if a.quick:
        a.max_steps, a.every, a.batch_size, a.valid, a.test_items = a.max_steps or 120, a.every or 40, 32, 60, 60
        num_transfer, seeds, lrs, train_items = a.transfer or 200, [0], [1e-2], 120
        methods = a.methods or ["baseline", "seq KD, same inputs", "seq KD, greedy", "more human data"]
    else:
        a.max_steps, a.every = a.max_steps or 1000, a.every or 100
        num_transfer, seeds, lrs, train_items = a.transfer or 3000, a.seeds, a.lrs, None
        methods = a.methods or METHODS
    ctx = load(num_transfer, progress=not a.quick, work=a.work, train_items=train_items)
    ctx["student_kwargs"] = a.student_kwargs
    print(f"seq-inter picks a candidate other than the teacher's best for {ctx['inter_changed']} of "
          f"{len(ctx['train'])} inputs", flush=True)
    tuning = tune(ctx, a, lrs, methods) if len(lrs) > 1 else {"chosen": {m: lrs[0] for m in methods}, "lrs": lrs}
    if a.tune:
        print(json.dumps(tuning["chosen"], indent=1))
        return
    dk = ctx["dk"]
    teacher = {"seed": None, "method": "teacher", "params": dk.count_parameters(ctx["teacher"]),
               **scores(ctx, ctx["teacher"], ctx["data"].test[:a.test_items])}
    runs = [teacher]
    for seed in seeds:
        for m in methods:
            runs.append(run(ctx, m, seed, tuning["chosen"][m], a.max_steps, a.every, a.student, a.batch_size,
                            a.valid, a.test_items))
            r = runs[-1]
            print(f"seed {seed} {m:<36} BLEU {r['bleu']:6.2f}  SER {r['ser']:6.2f}%  step {r['selected_step']}"
                  f"  ({r['train_seconds']:.0f} s)", flush=True)
    print_table(runs)
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(teacher["bleu"] > by["baseline"]["bleu"] + 5, "the teacher beats the baseline by > 5 BLEU", problems)
        check(by["seq KD, same inputs"]["bleu"] > by["baseline"]["bleu"], "the teacher's outputs beat the references",
              problems)
        check(all(0 < r["selected_step"] <= a.max_steps for r in runs[1:]),
              "every run's checkpoint is one of its validation checkpoints", problems)
        sys.exit(1 if problems else 0)
    write_results(a.out, seeds, runs, threads=a.threads,
                  summary={k: summarise(runs, k) for k in ("bleu", "ser", "repeat", "selected_step")},
                  primary_metric="bleu",
                  metric_definitions={**D2T_METRICS,
                                      "selection": "checkpoint with the best validation BLEU (200 pairs, "
                                                   "1 reference each), every --every steps"},
                  comparisons=planned_comparisons(),
                  tuning=tuning,
                  setup={"max_steps": a.max_steps, "every": a.every, "batch_size": a.batch_size, "lrs": lrs,
                         "labelled_pairs": len(ctx["labelled"]), "transfer_inputs": num_transfer,
                         "student": a.student, **({"student_kwargs": a.student_kwargs} if a.student_kwargs else {}),
                         "valid_pairs": a.valid, "test_inputs": a.test_items,
                         "temperature": 1.0, "alpha": 0.5, "beam_size": 5,
                         "seq_inter_changed": ctx["inter_changed"], "teacher_seconds": ctx["teacher_seconds"]})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
