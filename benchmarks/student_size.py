"""Student size: how much of the teacher a student of each size keeps, with and without KD.

    python benchmarks/student_size.py --quick     # CI: one seed, two sizes, short runs, direction checks
    nice python benchmarks/student_size.py        # full: seeds 0 1 2 -> results/student_size.json

Set-up (chapter 5): the shipped ``d2t-teacher``, the 400 labelled pairs and the first 2,000
transfer inputs described by the teacher (greedy). Three student sizes -- ``tiny``
(``d2t-tiny``), ``small`` (``d2t-student`` with embed 32 / hidden 64) and ``student``
(``d2t-student``) -- each trained twice from the same initial weights: ``hard labels`` (the 400
pairs) and ``KD`` (the 400 pairs + the teacher-labelled transfer set, the teacher's
distributions at T = 1, alpha = 0.5: word + sequence-level KD). 400 steps of 16 examples, lr
1e-2. The methods are named ``<size>, <hard labels | KD>``; every row also carries ``size``
and ``kd`` for plotting.

Per (method, seed): BLEU (the primary metric) and slot error rate (%) of greedy outputs on
the 400 test inputs. A record of a fixed budget (``DESIGN``); its planned comparisons, KD
against hard labels at each size, are written with their paired 95% intervals.

The book reads ``results/student_size_selected.json`` instead: the same three sizes under the
rule of ``benchmarks/controls.py`` (learning rate from {3e-3, 1e-2} by one tuning run with seed
100, at most 1,000 steps of 64, the checkpoint with the best validation BLEU, 5 seeds; "KD" is
controls.py's "word + seq KD", with 3,000 teacher-labelled inputs). The ``student`` size is
controls.py's own runs; the other two come from

    nice python benchmarks/controls.py --methods baseline "word + seq KD" --student d2t-tiny \
        --work runs/ss/tiny-work --out runs/ss/tiny.json
    nice python benchmarks/controls.py --methods baseline "word + seq KD" --student d2t-student \
        --student-kwargs '{"embed_dim": 32, "hidden_dim": 64}' --work runs/ss/small-work --out runs/ss/small.json
    python benchmarks/student_size.py --from-controls runs/ss/tiny.json runs/ss/small.json results/controls.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import (  # noqa: E402
    RESULTS,
    check,
    merge_results,
    paired_comparisons,
    summarise,
    update_results,
    write_results,
)
from quality import evaluate, load, run  # noqa: E402

SIZES = {"tiny": ("d2t-tiny", {}), "small": ("d2t-student", dict(embed_dim=32, hidden_dim=64)),
         "student": ("d2t-student", {})}
KINDS = {"hard labels": "baseline", "KD": "word + seq KD"}  # quality.py's methods
PRIMARY_METRIC = "bleu"
DESIGN = ("a fixed budget: 400 steps of 16 for every student, final weights, no validation data; the "
          "book's size comparison is student_size_selected.json (--from-controls)")


def comparisons(sizes) -> list:
    """Fixed before the runs: KD against hard labels at each size, BLEU, paired by seed."""
    return [{"a": f"{s}, KD", "b": f"{s}, hard labels", "metric": PRIMARY_METRIC, "higher_is_better": True}
            for s in sizes]


def from_controls(paths, out: Path) -> dict:
    """One student-size file from controls.py results files (one per size, same rule): their
    "baseline" and "word + seq KD" runs, named ``<size>, hard labels`` / ``<size>, KD``."""
    import json

    wanted = {"baseline": "hard labels", "word + seq KD": "KD"}
    runs, tuning, setups, commands, seeds = [], {}, {}, [], None
    for p in paths:
        d = json.loads(Path(p).read_text())
        st = d["setup"]
        size = next(n for n, (preset, kw) in SIZES.items()
                    if preset == st["student"] and kw == st.get("student_kwargs", {}))
        if size in setups:
            raise SystemExit(f"--from-controls: two files for the size {size!r}")
        rule = {k: st[k] for k in ("max_steps", "every", "batch_size", "lrs", "labelled_pairs", "transfer_inputs",
                                   "valid_pairs", "test_inputs", "temperature", "alpha")}
        setups[size] = rule
        if d["tuning"]["seed"] in d["seeds"]:
            raise SystemExit("--from-controls: the tuning seed is an evaluation seed")
        got = sorted({r["seed"] for r in d["runs"] if r["method"] in wanted})
        if seeds is not None and got != seeds:
            raise SystemExit(f"--from-controls: the files have different seeds: {seeds} and {got}")
        seeds = got
        if not runs:
            runs.append(next(r for r in d["runs"] if r["method"] == "teacher"))
        for r in d["runs"]:
            if r["method"] in wanted:
                runs.append({**r, "method": f"{size}, {wanted[r['method']]}", "size": size,
                             "kd": wanted[r["method"]] == "KD"})
        tuning[size] = {"seed": d["tuning"]["seed"], "chosen": {wanted[m]: lr for m, lr in d["tuning"]["chosen"].items()
                                                                 if m in wanted}}
        commands.append(d["command"])
    if len({json.dumps(v, sort_keys=True) for v in setups.values()}) != 1:
        raise SystemExit(f"--from-controls: the files follow different rules: {setups}")
    order = [s for s in SIZES if s in setups]
    runs[1:] = sorted(runs[1:], key=lambda r: (r["seed"], order.index(r["size"]), r["kd"]))
    return write_results(out, seeds, runs, summary={k: summarise(runs[1:], k) for k in ("bleu", "ser", "repeat")},
                         primary_metric="bleu", tuning=tuning, commands=commands,
                         setup={**next(iter(setups.values())),
                                "sizes": {s: {"preset": SIZES[s][0], **SIZES[s][1]} for s in order}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one seed, two sizes, short runs (the hard-label control for "
                                                         "the larger size only); writes nothing")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per student (default 400; quick 200)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--transfer", type=int, default=None, help="transfer inputs (default 2000; quick 500)")
    ap.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "student_size.json")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder that keeps the teacher's transfer-set outputs for later runs")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="FILE",
                    help="combine results files of single-seed runs (same set-up) into --out")
    ap.add_argument("--from-controls", type=Path, nargs="+", default=None, metavar="FILE",
                    help="build results/student_size_selected.json from controls.py files, one per student size")
    a = ap.parse_args()
    if a.from_controls:
        doc = from_controls(a.from_controls, RESULTS / "student_size_selected.json")
        for m, v in doc["summary"]["bleu"].items():
            print(f"{m:<22} BLEU {v['mean']:6.2f} ± {v['std']:.2f} (n={v['n']})")
        return
    if a.merge:
        doc = merge_results(a.merge, a.out, ("bleu", "ser"))
        sizes = list(dict.fromkeys(r["size"] for r in doc["runs"] if r["seed"] is not None))
        doc = update_results(a.out, primary_metric=PRIMARY_METRIC, design=DESIGN, comparisons=comparisons(sizes),
                             paired=paired_comparisons(doc["runs"], doc["seeds"], comparisons(sizes)))
        for m, s in doc["summary"]["bleu"].items():
            print(f"{m:<22} BLEU {s['mean']:6.2f} ± {s['std']:.2f} (n={s['n']})")
        print(f"wrote {a.out} ({len(doc['seeds'])} seeds)")
        return
    import torch

    torch.set_num_threads(a.threads)
    steps = a.steps or (200 if a.quick else 400)
    num_transfer = a.transfer or (500 if a.quick else 2000)
    seeds = [0] if a.quick else a.seeds
    sizes = a.sizes or (["tiny", "student"] if a.quick else list(SIZES))
    test_items = 100 if a.quick else 400
    ctx = load(num_transfer, list(KINDS.values()), progress=not a.quick, work=a.work)
    dk = ctx["dk"]
    runs = [{"seed": None, "method": "teacher", "params": dk.count_parameters(ctx["teacher"]),
             **evaluate(ctx, ctx["teacher"], test_items)}]
    print(f"teacher: {runs[0]['params']:,} params, BLEU {runs[0]['bleu']}, SER {runs[0]['ser']}%", flush=True)
    for seed in seeds:
        for size in sizes:
            preset, overrides = SIZES[size]
            for kind, method in KINDS.items():
                if a.quick and kind != "KD" and size != sizes[-1]:
                    continue  # quick: the smaller size is only compared with the larger, distilled
                r = run(ctx, method, seed, steps, a.lr, preset, test_items, batch_size=a.batch_size, **overrides)
                r.update(method=f"{size}, {kind}", size=size, kd=kind == "KD")
                runs.append(r)
                print(f"seed {seed} {r['method']:<20} {r['params']:>8,} params  BLEU {r['bleu']:6.2f}  "
                      f"SER {r['ser']:6.2f}%  ({r['train_seconds']:.0f} s)", flush=True)
    if a.quick:
        by = {r["method"]: r for r in runs}
        problems: list = []
        check(all(runs[0]["bleu"] > r["bleu"] + 5 for r in runs[1:] if not r["kd"]),
              "the teacher beats every hard-label student by > 5 BLEU", problems)
        check(by["student, KD"]["bleu"] > by["student, hard labels"]["bleu"],
              "KD beats hard labels for the largest student", problems)
        check(by["student, KD"]["bleu"] > by["tiny, KD"]["bleu"],
              "the distilled largest student beats the distilled smallest one", problems)
        sys.exit(1 if problems else 0)
    write_results(a.out, seeds, runs, threads=a.threads, summary={k: summarise(runs, k) for k in ("bleu", "ser")},
                  primary_metric=PRIMARY_METRIC, design=DESIGN, comparisons=comparisons(sizes),
                  paired=paired_comparisons(runs, seeds, comparisons(sizes)) if len(seeds) > 1 else [],
                  setup={"steps": steps, "lr": a.lr, "batch_size": a.batch_size, "labelled_pairs": len(ctx["labelled"]),
                         "transfer_inputs": num_transfer, "test_inputs": test_items, "temperature": 1.0, "alpha": 0.5,
                         "sizes": {s: {"preset": SIZES[s][0], **SIZES[s][1]} for s in sizes}})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
