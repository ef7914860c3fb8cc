"""Helpers the book's chapters share: one call at the top of a notebook fixes seeds, threads
and the run size, so every executed output is reproducible, and decides whether training
shows progress bars (yes for a person at a notebook, no when the notebook is executed
unattended to produce the book's stored outputs). The results files are read here; the rule
that decides a comparison (``compare``, a paired t interval over seeds) and the correction for
many comparisons (``holm``) live in :mod:`distilkit.stats` and are re-exported here."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from .stats import Comparison, compare, holm  # the book's decision rule, defined in distilkit.stats
from .training import resolve_device

__all__ = ["NotebookSetup", "setup", "progress_wanted", "load_results", "metric_by_method", "mean_std", "mean_sd",
           "interval", "Comparison", "compare", "holm", "table", "Table"]

_FALSE = ("0", "false", "no", "off")


@dataclass
class NotebookSetup:
    seed: int
    device: torch.device
    full: bool  #: True when DISTILKIT_FULL=1: chapters train longer / larger (meant for a GPU)
    progress: bool = True  #: pass as ``progress=`` to training calls: bars only for a person

    def scale(self, small, full):
        """``small`` for the CI-sized run, ``full`` when DISTILKIT_FULL=1."""
        return full if self.full else small


def progress_wanted() -> bool:
    """Whether progress bars should be shown in the current run.

    ``DISTILKIT_PROGRESS=0`` / ``1`` decides when set.  Otherwise bars are shown, except in
    a Jupyter kernel whose current cell was sent by a client that cannot answer ``input()``:
    that is how the unattended executors (``jupyter execute``/nbclient, nbval, the book
    build) run cells, while JupyterLab, Notebook, VS Code and Colab all accept input.  A
    progress bar there would only store the executing machine's timings in the page.
    """
    env = os.environ.get("DISTILKIT_PROGRESS", "").strip().lower()
    if env:
        return env not in _FALSE
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: tqdm draws text bars on stderr
        return True
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:  # plain Python or terminal IPython
        return True
    # ipykernel records, for the request being executed, whether the client allows stdin.
    return bool(getattr(kernel, "_allow_stdin", True))


def setup(seed: int = 0, threads: int = 1) -> NotebookSetup:
    """Seed Python, NumPy and torch; use ``threads`` CPU threads (1 keeps results bitwise
    reproducible however many cores the machine has); pick the device. With the environment
    variable ``DISTILKIT_FULL=1`` chapters switch to their full-size runs on the best device;
    otherwise they run on the CPU at CI size. ``progress`` of the result says whether to draw
    progress bars (see :func:`progress_wanted`)."""
    full = os.environ.get("DISTILKIT_FULL", "0").strip().lower() not in ("",) + _FALSE
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    device = resolve_device("auto") if full else torch.device("cpu")
    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.grid": True,
                                    "grid.alpha": 0.3, "axes.spines.top": False,
                                    "axes.spines.right": False})
    except ImportError:  # matplotlib is only in the book extra
        pass
    return NotebookSetup(seed=seed, device=device, full=full, progress=progress_wanted())


# ---------------------------------------------------------------------------- results as data
def load_results(name: str) -> dict:
    """The experiment results file ``results/<name>.json`` of the book's repository, written by
    ``benchmarks/<script>.py`` in full mode: ``{"command", "machine", "torch", "seeds", "runs"}``.

    Looked for beside the package's source checkout, then in the working directory and its
    parents (a notebook runs from ``book/``). Raises ``FileNotFoundError`` naming the script
    that writes it."""
    import json
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    for folder in [here, Path.cwd(), *Path.cwd().parents]:
        path = folder / "results" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"results/{name}.json not found; it is written by the full mode of the "
                            f"script in benchmarks/ (see its --help)")


def metric_by_method(runs, metric: str) -> dict:
    """``{method: [value per seed, in seed order]}`` of one metric from a results file's runs."""
    out: dict = {}
    for r in sorted(runs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0)):
        if r.get(metric) is not None:
            out.setdefault(r["method"], []).append(float(r[metric]))
    return out


def mean_std(values) -> dict:
    """``{"mean", "std", "n"}`` of per-seed values (sample standard deviation; 0 for one value)."""
    import statistics

    v = [float(x) for x in values]
    if not v:
        raise ValueError("values must not be empty")
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def mean_sd(values, digits: int = 1) -> str:
    """``"58.1 ± 1.6"``: the mean ± sample standard deviation of per-seed values, as the book
    prints them."""
    m = mean_std(values)
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def interval(c: Comparison, digits: int = 1) -> str:
    """``"+1.9 [-1.0, +4.7]"``: a comparison's mean per-seed difference and its interval."""
    return f"{c.effect:+.{digits}f} [{c.low:+.{digits}f}, {c.high:+.{digits}f}]"


_NUM = r"[+\-−]?\d[\d,]*(?:\.\d+)?"
_NUMBER_CELL = re.compile(
    rf"^{_NUM}\s*(?:%|×|x)?(?:\s*±\s*{_NUM}\s*%?)?(?:\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*\])?$")


class Table:
    """Rows shown as one table: HTML in a notebook or the built book, aligned text elsewhere.

    Made by :func:`table`. A cell that ends with a ``Table`` shows a single output block, where a
    loop of ``print`` calls (one per row, between training steps) becomes several."""

    def __init__(self, rows, columns, caption, formats):
        self.rows, self.columns, self.caption, self.formats = rows, columns, caption, formats

    def _cells(self):
        out = []
        for row in self.rows:
            cells = []
            for c in self.columns:
                v = row.get(c, "")
                fmt = self.formats.get(c)
                if v is None:
                    cells.append("–")
                elif fmt and isinstance(v, (int, float)):
                    cells.append(format(v, fmt))
                elif isinstance(v, float):
                    cells.append(f"{v:.2f}")
                elif isinstance(v, int) and not isinstance(v, bool):
                    cells.append(f"{v:,}")
                else:
                    cells.append(str(v))
            out.append(cells)
        return out

    @staticmethod
    def _numeric(text: str) -> bool:
        """A number, with an optional unit (%, ×), spread (± 1.2) or interval ([-1.0, +2.0])."""
        return bool(_NUMBER_CELL.match(text.strip()))

    def _right(self, cells) -> list:
        """Columns whose every filled cell is a number are right-aligned."""
        return [bool(cells) and all(self._numeric(r[i]) for r in cells if r[i] not in ("", "–"))
                for i in range(len(self.columns))]

    def __repr__(self) -> str:
        cells = self._cells()
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        right = self._right(cells)

        def line(items):
            return "  ".join(x.rjust(w) if r else x.ljust(w) for x, w, r in zip(items, widths, right)).rstrip()

        lines = ([self.caption] if self.caption else []) + [line(self.columns), line(["-" * w for w in widths])]
        return "\n".join(lines + [line(r) for r in cells])

    def _repr_html_(self) -> str:
        import html

        cells = self._cells()
        right = self._right(cells)

        def td(tag, x, r):
            style = "text-align:right;white-space:nowrap" if r else "text-align:left"  # numbers stay on one line
            return f'<{tag} style="{style}">{html.escape(x)}</{tag}>'

        head = "".join(td("th", c, r) for c, r in zip(self.columns, right))
        body = "".join("<tr>" + "".join(td("td", x, r) for x, r in zip(row, right)) + "</tr>" for row in cells)
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (f'<table class="dk-table">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def table(rows, columns=None, caption: str = "", formats=None) -> Table:
    """One table from ``rows``: a list of dicts (``columns`` picks and orders the keys; default:
    the first row's keys) or of lists (``columns`` names them). ``formats`` maps a column to a
    format spec (``{"BLEU": ".1f"}``); floats default to two decimals, ints get thousands
    separators, ``None`` shows as a dash."""
    if isinstance(rows, dict) or not isinstance(rows, (list, tuple)):
        raise TypeError(f"rows must be a list of dicts or of lists, got {type(rows).__name__}")
    rows = list(rows)
    if rows and all(isinstance(r, dict) for r in rows):
        columns = list(columns) if columns is not None else list(rows[0])
    elif all(isinstance(r, (list, tuple)) for r in rows):
        if columns is None:
            raise ValueError("columns must name the fields when rows are lists")
        columns = list(columns)
        bad = [i for i, r in enumerate(rows) if len(r) != len(columns)]
        if bad:
            raise ValueError(f"rows[{bad[0]}] has {len(rows[bad[0]])} fields, columns names {len(columns)}")
        rows = [dict(zip(columns, r)) for r in rows]
    else:
        raise TypeError("rows must be all dicts or all lists")
    formats = dict(formats or {})
    unknown = [c for c in formats if c not in columns]
    if unknown:
        raise ValueError(f"formats names column(s) {unknown} that are not in columns {columns}")
    return Table(rows, [str(c) for c in columns], caption, formats)
