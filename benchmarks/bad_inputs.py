"""Every bad input in distilkit's hardening table and the first line of the error it gets.

    python benchmarks/bad_inputs.py            # one line per row: input -> error
    python benchmarks/bad_inputs.py --markdown # the same as a Markdown table

The table lives in tests/_bad_inputs.py; tests/test_hardening.py asserts each row (exception
type, the message names the argument and the expectation, the error is distilkit's own and not
a deep torch error). Rows marked "safe" are inputs with a documented safe meaning (an
all-padding batch, a teacher with requires_grad=True). Exits with status 1 if any row fails.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import torch  # noqa: E402

torch.set_num_threads(1)

from _bad_inputs import CASES, Context, run_cases  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = run_cases(CASES, Context(Path(tmp)))
    failed = [o for o in outcomes if o.problems]
    if args.markdown:
        print("| # | input | outcome | message (first line) |\n|---|---|---|---|")
    for i, o in enumerate(outcomes, 1):
        line = o.first_line.replace(tmp, "<tmp>")
        if args.markdown:
            print(f"| {i} | `{o.case.input}` | {o.kind} | {line.replace('|', '&#124;')} |")
        else:
            flag = "" if not o.problems else "  <-- FAILS: " + "; ".join(o.problems)
            print(f"{i:2d}. {o.case.input}\n    -> {o.kind}: {line}{flag}")
    print(f"\n{len(outcomes)} bad inputs, {len(outcomes) - len(failed)} give a clear error or a "
          f"documented safe behaviour, {len(failed)} fail")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
