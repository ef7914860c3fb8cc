"""Does the data-to-text teacher cope with every input size? Slot errors by number of attributes.

    python benchmarks/teacher_coverage.py                                # the shipped d2t-teacher
    python benchmarks/teacher_coverage.py --before old.safetensors --before-source "git show REV:PATH"
    python benchmarks/teacher_coverage.py --quick                        # CI: 10 inputs per size

A user can give ``distilkit generate --model d2t-teacher`` a meaning representation with one
attribute besides the name, or all eight; the students' task draws three to seven. For each
teacher checkpoint this decodes (greedy, as the book does) ``data.test_by_size[k]`` -- 50 test
MRs with exactly ``k`` attributes besides the name, 8 references each, none seen in any training
split -- and reports per size: the slot error rate (%), the share of outputs that mention an
attribute the input does not have (invented attributes), BLEU, and the repeated 4-gram rate; and
the same on the 400-input test split the book's tables use.

The results file compares the shipped teacher with the one it replaced (trained on 3 to 7
attributes only), which is in the repository's history:
``git show 0360e05:distilkit/checkpoints/d2t-teacher.safetensors > runs/old/d2t-teacher.safetensors``.

The primary metric, fixed before the run, is the slot error rate by size; "covers its inputs"
means the rate on 1- and 2-attribute inputs is no higher than on the students' 3-7 range plus
2 points. A teacher has no seed: one decode per checkpoint (greedy decoding is deterministic).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's distilkit
from _common import RESULTS, write_results  # noqa: E402

MARGIN_POINTS = 2.0
EXAMPLE_MR = {"name": "the eagle", "food": "thai"}  # the input of the report that started this


def decode(model, data, mrs):
    import distilkit as dk

    outs = dk.generate(model, data.encode_inputs(mrs), method="greedy", max_new_tokens=80)
    return [data.tokenizer.decode(x) for x in outs]


def score(model, data, items) -> dict:
    import distilkit as dk
    from distilkit.data import extract_slots

    mrs = [mr for mr, _ in items]
    refs = [r for _, r in items]
    outs = decode(model, data, mrs)
    invented = sum(any(a not in mr for a in extract_slots(o)) for mr, o in zip(mrs, outs))
    return {"n": len(items), "ser": round(100 * dk.slot_error_rate(mrs, outs), 2),
            "invented_pct": round(100 * invented / len(items), 2),
            "bleu": round(dk.corpus_bleu(outs, refs), 2),
            "repeated_4gram_pct": round(dk.repeated_ngram_rate(outs), 2)}


def evaluate(label: str, source: str, data, per_size: int, provenance: str = "") -> dict:
    import distilkit as dk

    path = None if source == "d2t-teacher" else source
    model, _, meta = dk.load_teacher("d2t-teacher", path=path)
    model.eval()
    by_size = {str(k): score(model, data, items[:per_size]) for k, items in data.test_by_size.items()}
    row = {"teacher": label, "checkpoint": provenance or source, "params": dk.count_parameters(model),
           "test": score(model, data, data.test[: per_size * 8]), "by_size": by_size,
           "example": {"mr": EXAMPLE_MR, "output": decode(model, data, [EXAMPLE_MR])[0]}}
    small = [by_size[k]["ser"] for k in ("1", "2")]
    usual = [by_size[str(k)]["ser"] for k in range(3, 8)]
    row["small_vs_usual_ser_points"] = round(sum(small) / len(small) - sum(usual) / len(usual), 2)
    row["covers_small_inputs"] = row["small_vs_usual_ser_points"] <= MARGIN_POINTS
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="an earlier d2t-teacher checkpoint (.safetensors) to report beside the shipped one")
    ap.add_argument("--before-source", default="", help="where --before comes from (recorded instead of its path)")
    ap.add_argument("--quick", action="store_true", help="10 inputs per size, no results file unless --out")
    ap.add_argument("--out", type=Path, help="results file (default: results/teacher_coverage.json; none in --quick)")
    args = ap.parse_args(argv)
    import torch

    import distilkit as dk

    torch.set_num_threads(1)
    data = dk.make_data_to_text(seed=0)
    per_size = 10 if args.quick else len(data.test_by_size[1])
    rows = []
    if args.before:
        rows.append(evaluate("before", args.before, data, per_size, args.before_source))
    rows.append(evaluate("shipped", "d2t-teacher", data, per_size))
    for r in rows:
        sizes = "  ".join(f"{k}:{v['ser']:.1f}" for k, v in r["by_size"].items())
        print(f"{r['teacher']:8s} SER % by attributes {sizes} | test BLEU {r['test']['bleu']:.1f} "
              f"SER {r['test']['ser']:.1f}% | {r['example']['output']!r}")
    out = args.out or (None if args.quick else RESULTS / "teacher_coverage.json")
    if out:
        write_results(out, seeds=[], runs=rows, primary_metric="ser by input size (%)",
                      primary_metric_definition="slot error rate, greedy decoding, on test_by_size[k] "
                      "(k attributes besides the name); covers_small_inputs: mean SER at k = 1, 2 at most "
                      f"{MARGIN_POINTS} points above the mean at k = 3..7 (margin fixed before the run)",
                      setup={"per_size": per_size, "test_inputs": per_size * 8, "decoding": "greedy",
                             "max_new_tokens": 80, "data_seed": 0})
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
