"""The book's notebooks are committed *executed*, cleanly, so that what a reader sees is what
nbval re-checks. nbval compares stored outputs with a fresh run -- a cell committed with no
output compares as "nothing to check", so an unexecuted notebook would pass it silently. This
module checks the committed files themselves, for every ``book/*.ipynb``:

* valid JSON and a valid nbformat-4 notebook;
* every code cell with source was executed (``execution_count`` set), top to bottom in one
  fresh kernel (counts 1, 2, 3, ...);
* a cell that must show something has stored outputs: it prints / displays, draws a figure
  (then an ``image/png`` is stored, or a widget that holds it), or ends in an expression that is not a call (a call may
  return None and show nothing) and not silenced with ``;``;
* no ``error`` output, no ``Traceback`` in stream output;
* no memory address (``0x`` + 6 or more hex digits) in text outputs;
* no leaked object reprs: ``<Figure size``, ``<matplotlib.``, ``<Line2D``, ``<Axes`` in stream
  text, in an ``execute_result``, or in a ``display_data`` that has no image (a figure's
  ``display_data`` carries ``<Figure size ...>`` as its text/plain fallback next to the PNG:
  that one is not shown and is fine);
* every ``# NBVAL_IGNORE_OUTPUT`` / ``# NBVAL_SKIP`` marker (or nbval tag) is followed by a
  comment line saying why.

Skipped while ``book/`` has no notebook.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))

ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
LEAKED_REPR = re.compile(r"<Figure size|<matplotlib\.|<Line2D|<Axes[:\s>]|<AxesSubplot")
SHOWS = re.compile(r"\bprint\(|\bdisplay\(|\bplt\.show\(|\bIPython\.display")
FIGURE = re.compile(r"\bplt\.(subplots|figure|plot|imshow|bar|barh|hist|scatter)\(")
WIDGET = "application/vnd.jupyter.widget-view+json"
MARKERS = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")
MARKER_TAGS = {"nbval-ignore-output", "nbval-skip"}


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _python_only(source: str) -> str:
    """Drop IPython magics and shell escapes so that the rest parses as Python."""
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())


def _ends_in_visible_expression(source: str) -> bool:
    try:
        tree = ast.parse(_python_only(source))
    except SyntaxError:
        return False
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return False
    last = tree.body[-1].value
    if isinstance(last, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)) or (
            isinstance(last, ast.Constant) and last.value is None):
        return False
    code_lines = [ln for ln in source.rstrip().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return not (code_lines and code_lines[-1].split("#", 1)[0].rstrip().endswith(";"))


def _text_outputs(output: dict):
    """(where, text) pairs of the textual parts of one output."""
    kind = output.get("output_type")
    if kind == "stream":
        yield f"stream {output.get('name')}", _text(output.get("text", ""))
    elif kind in ("display_data", "execute_result"):
        data = output.get("data", {})
        for mime in ("text/plain", "text/html", "text/markdown", "text/latex"):
            if mime in data:
                yield f"{kind} {mime}", _text(data[mime])


def notebook_problems(path: Path) -> list:
    problems = []
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"not valid JSON: {exc}"]
    try:
        import nbformat

        nbformat.validate(nbformat.from_dict(nb))
    except ImportError:  # pragma: no cover - nbformat comes with the book extra
        pass
    except Exception as exc:  # nbformat.ValidationError and friends
        problems.append(f"not a valid notebook: {str(exc).splitlines()[0]}")
    if nb.get("nbformat") != 4:
        problems.append(f"nbformat {nb.get('nbformat')}, expected 4")
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"
            and _text(c.get("source", "")).strip()]
    if code and all(c.get("execution_count") is None and not c.get("outputs") for c in code):
        return problems + [f"committed without being executed: none of its {len(code)} code cells "
                           "has an execution count or an output"]
    counts = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = _text(cell.get("source", ""))
        where = f"cell {index} ({source.strip().splitlines()[0][:50] if source.strip() else 'empty'!r})"
        outputs = cell.get("outputs", [])
        if not source.strip():
            continue
        count = cell.get("execution_count")
        if count is None:
            problems.append(f"{where}: never executed (execution_count is null)")
        else:
            counts.append(count)
        images = any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
                     for o in outputs)
        if SHOWS.search(source) and not outputs:
            problems.append(f"{where}: prints or displays, but no output is stored")
        widgets = any(WIDGET in o.get("data", {}) for o in outputs)
        if FIGURE.search(source) and not images and not widgets:  # a widget stores its figure
            problems.append(f"{where}: draws a figure, but no image is stored")  # in its state
        if _ends_in_visible_expression(source) and not outputs:
            problems.append(f"{where}: ends in an expression, but no output is stored")
        for output in outputs:
            if output.get("output_type") == "error":
                problems.append(f"{where}: error output {output.get('ename')}: {output.get('evalue')}")
            for part, text in _text_outputs(output):
                if "Traceback" in text and part.startswith("stream"):
                    problems.append(f"{where}: Traceback in {part}")
                if ADDRESS.search(text):
                    problems.append(f"{where}: memory address {ADDRESS.search(text).group()} in {part}")
                figure_fallback = (output.get("output_type") == "display_data" and images
                                   and part.endswith("text/plain"))
                if LEAKED_REPR.search(text) and not figure_fallback:
                    problems.append(f"{where}: leaked repr {LEAKED_REPR.search(text).group()!r} in {part}")
        lines = source.splitlines()
        tags = set(cell.get("metadata", {}).get("tags", []))
        for i, line in enumerate(lines):
            if any(m in line for m in MARKERS) and line.lstrip().startswith("#"):
                following = lines[i + 1].strip() if i + 1 < len(lines) else ""
                reason = following.lstrip("#").strip()
                if not following.startswith("#") or len(reason.split()) < 3 or \
                        any(m in reason for m in MARKERS):
                    problems.append(f"{where}: {line.strip()} without a comment line explaining why")
        if tags & MARKER_TAGS and not any(ln.strip().startswith("#") and
                                          not any(m in ln for m in MARKERS) for ln in lines[:3]):
            problems.append(f"{where}: tag {sorted(tags & MARKER_TAGS)} without a comment explaining why")
    if counts and counts != list(range(1, len(counts) + 1)):
        problems.append(f"execution counts {counts} are not 1, 2, 3, ...: not one top-to-bottom run "
                        "in a fresh kernel")
    return problems


@pytest.mark.skipif(not NOTEBOOKS, reason="book/ has no notebooks yet")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_executed_and_clean(path):
    problems = notebook_problems(path)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def test_the_checker_catches_what_it_should(tmp_path):
    """The rules above, on a small bad notebook and its good twin."""
    def cell(source, outputs=(), count=None, tags=()):
        return {"cell_type": "code", "execution_count": count, "id": f"c{len(source)}{count}",
                "metadata": {"tags": list(tags)}, "outputs": list(outputs), "source": source}

    def stream(text, name="stdout"):
        return {"output_type": "stream", "name": name, "text": text}

    png = {"output_type": "display_data", "metadata": {},
           "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480 with 1 Axes>"}}
    bad = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        cell("import math\nx = 1", count=1),
        cell("print(x)", count=3),  # out of order and no output
        cell("x + 1"),  # never executed, no output
        cell("fig, ax = plt.subplots()\nax.plot([1, 2])", [{"output_type": "execute_result",
             "execution_count": 4, "metadata": {}, "data": {"text/plain":
             "[<matplotlib.lines.Line2D at 0x7f00deadbeef>]"}}], count=4),
        cell("1 / 0", [{"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero",
                        "traceback": []}], count=5),
        cell("print(object())", [stream("<object object at 0x7f1234567890>\n")], count=6),
        cell("import warnings\nprint('x')", [stream("Traceback (most recent call last):\n", "stderr")], count=7),
        cell("# NBVAL_IGNORE_OUTPUT\nprint(time.time())", [stream("1.0\n")], count=8),
    ]}
    (tmp_path / "bad.ipynb").write_text(json.dumps(bad))
    found = "\n".join(notebook_problems(tmp_path / "bad.ipynb"))
    for expected in ("cell 1 ('print(x)'): prints or displays, but no output",
                     "cell 2 ('x + 1'): never executed", "cell 2 ('x + 1'): ends in an expression",
                     "leaked repr '<matplotlib.'", "memory address 0x7f00deadbeef",
                     "error output ZeroDivisionError", "memory address 0x7f1234567890",
                     "Traceback in stream stderr", "NBVAL_IGNORE_OUTPUT without a comment",
                     "execution counts [1, 3, 4, 5, 6, 7, 8]", "draws a figure, but no image"):
        assert expected in found, f"{expected!r} not reported:\n{found}"
    good = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        cell("import math\nx = 1", count=1),
        cell("print(x)", [stream("1\n")], count=2),
        cell("x + 1", [{"output_type": "execute_result", "execution_count": 3, "metadata": {},
                        "data": {"text/plain": "2"}}], count=3),
        cell("fig, ax = plt.subplots()\nax.plot([1, 2]);", [png], count=4),
        cell("model.eval()", count=5),  # a call may return None: no output required
        cell("# NBVAL_IGNORE_OUTPUT\n# wall-clock time differs between runs\nprint(time.time())",
             [stream("1.0\n")], count=6),
    ]}
    (tmp_path / "good.ipynb").write_text(json.dumps(good))
    assert notebook_problems(tmp_path / "good.ipynb") == []
    good["cells"] = [cell("print(1)"), cell("x = 2")]
    (tmp_path / "draft.ipynb").write_text(json.dumps(good))
    assert notebook_problems(tmp_path / "draft.ipynb") == [
        "committed without being executed: none of its 2 code cells has an execution count or an output"]
    (tmp_path / "broken.ipynb").write_text('{"cells": [')
    assert notebook_problems(tmp_path / "broken.ipynb")[0].startswith("not valid JSON")
